-- 0011 (SQLite): event_edges back to a rowid table, as 0001 made it. 0009
-- made it WITHOUT ROWID, measured then with one INSERT per row; with the
-- multi-row INSERTs copy_rows now uses, it is the slower layout (10,000 edges:
-- 22 -> 23 ms on an empty table, 77 -> 89 ms on one holding 30,000): its
-- index on prev_event_id carries the whole primary key instead of a rowid.
-- event_auth and state_groups_state, which have no secondary index, stay
-- WITHOUT ROWID (still faster). The PostgreSQL twin changes nothing.

CREATE TABLE event_edges_new (
    event_id TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);
INSERT INTO event_edges_new (event_id, prev_event_id)
    SELECT event_id, prev_event_id FROM event_edges;
DROP TABLE event_edges;
ALTER TABLE event_edges_new RENAME TO event_edges;
CREATE INDEX event_edges_prev ON event_edges (prev_event_id);
