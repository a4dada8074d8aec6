-- 0010 partial-state joins, completed: changes of a room's current state that
-- no timeline event carries. The resync of a partial-state join adds the
-- omitted members (outliers, in no timeline) in one transaction; that
-- transaction takes a position in the events stream and records here which
-- current state group the room went from and to, so /sync can tell a client
-- that synced during the partial phase what changed. State groups are
-- immutable, so the two ids are the whole record.
-- Portable SQL (SQLite and PostgreSQL).

CREATE TABLE state_delta_stream (
    -- from the events stream counter (events_stream): orders with events
    stream_ordering BIGINT NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL,
    -- the room's current state group before the change (NULL: none)
    from_group BIGINT,
    to_group BIGINT NOT NULL
);

CREATE INDEX state_delta_stream_room ON state_delta_stream (room_id, stream_ordering);
