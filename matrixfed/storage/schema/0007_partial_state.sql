-- Partial-state joins (matrixfed/joins): the servers_in_room list of the
-- send_join answer, kept while the room's state lacks most members so that our
-- new events also go to the servers whose members were omitted. Written in
-- the join's persist transaction, deleted in the resync's (rooms.partial_state
-- is set and cleared in those same transactions); only read while the room is
-- flagged partial.
CREATE TABLE partial_state_servers (
    room_id TEXT NOT NULL,
    server_name TEXT NOT NULL,
    PRIMARY KEY (room_id, server_name)
);
