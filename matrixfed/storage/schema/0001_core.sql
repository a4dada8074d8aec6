-- 0001 core: id counters, rooms, aliases, events and their DAG, state groups,
-- current state, forward and backward extremities.
-- Portable SQL: runs unchanged on SQLite (>= 3.24) and PostgreSQL.
-- Booleans are INTEGER 0/1; JSON is TEXT; ids are assigned by the
-- application (Transaction.allocate_ids), never by the database.

-- Named monotonic counters (event stream orderings, state group ids, ...).
CREATE TABLE id_counters (
    name TEXT NOT NULL PRIMARY KEY,
    value BIGINT NOT NULL
);

CREATE TABLE rooms (
    room_id TEXT NOT NULL PRIMARY KEY,
    room_version TEXT NOT NULL,
    -- sender of the m.room.create event, when we have it
    creator TEXT,
    -- published in the room directory
    is_public INTEGER NOT NULL DEFAULT 0,
    -- joined with partial state (faster joins): state before some events is incomplete
    partial_state INTEGER NOT NULL DEFAULT 0,
    -- the state group holding the room's current state (NULL: none yet)
    current_state_group BIGINT,
    created_ts BIGINT NOT NULL
);

CREATE INDEX rooms_public ON rooms (is_public);

CREATE TABLE room_aliases (
    room_alias TEXT NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT,
    -- JSON list of server names that can help join via this alias
    servers TEXT NOT NULL
);

CREATE INDEX room_aliases_room ON room_aliases (room_id);

CREATE TABLE events (
    event_id TEXT NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL,
    -- per-server order of persistence; negative for backfilled events
    stream_ordering BIGINT NOT NULL,
    type TEXT NOT NULL,
    -- NULL when the event is not a state event
    state_key TEXT,
    sender TEXT NOT NULL,
    -- content.membership of m.room.member events
    membership TEXT,
    depth BIGINT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    received_ts BIGINT NOT NULL,
    -- the PDU as JSON
    json TEXT NOT NULL,
    -- NULL when accepted; otherwise why the auth rules rejected it
    rejected_reason TEXT,
    soft_failed INTEGER NOT NULL DEFAULT 0,
    -- known without the state at it (auth chain / state of a join, fetched events)
    outlier INTEGER NOT NULL DEFAULT 0
);

CREATE UNIQUE INDEX events_stream ON events (stream_ordering);
CREATE INDEX events_room_stream ON events (room_id, stream_ordering);
CREATE INDEX events_room_topo ON events (room_id, depth, stream_ordering);

-- prev_events edges of the room DAG
CREATE TABLE event_edges (
    event_id TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);

CREATE INDEX event_edges_prev ON event_edges (prev_event_id);

-- auth_events edges
CREATE TABLE event_auth (
    event_id TEXT NOT NULL,
    auth_id TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_id)
);

-- events with no (non-outlier) children: the prev_events of the next event we send
CREATE TABLE event_forward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- prev_events of non-outlier events that we do not have (where backfill starts)
CREATE TABLE event_backward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- redaction event -> the event it redacts
CREATE TABLE redactions (
    event_id TEXT NOT NULL PRIMARY KEY,
    redacts TEXT NOT NULL
);

CREATE INDEX redactions_redacts ON redactions (redacts);

-- A state group is one room state. It is stored as a delta against
-- prev_group (NULL: a full snapshot). parent_group is the group it was derived
-- from (the state before the event that produced it); level/anchors choose
-- prev_group so that delta chains stay short and total rows stay linear
-- (see matrixfed/storage/state.py).
CREATE TABLE state_groups (
    id BIGINT NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL,
    prev_group BIGINT,
    parent_group BIGINT,
    -- distance from the nearest snapshot along parent_group links
    seq BIGINT NOT NULL,
    -- nearest ancestor-or-self at level >= 1, 2, 3 (for choosing prev_group)
    anchor1 BIGINT NOT NULL,
    anchor2 BIGINT NOT NULL,
    anchor3 BIGINT NOT NULL
);

CREATE INDEX state_groups_room ON state_groups (room_id);

-- The delta of a group: entries added or replaced relative to prev_group;
-- event_id NULL means the key is absent from this group.
CREATE TABLE state_groups_state (
    state_group BIGINT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT,
    PRIMARY KEY (state_group, type, state_key)
);

-- The state before and after each non-outlier event. For a rejected event or
-- a non-state event both are the same group.
CREATE TABLE event_to_state_groups (
    event_id TEXT NOT NULL PRIMARY KEY,
    state_group_before BIGINT NOT NULL,
    state_group_after BIGINT NOT NULL
);

CREATE INDEX event_to_state_groups_after ON event_to_state_groups (state_group_after);

-- The room's current state, materialised (membership copied for member queries).
CREATE TABLE current_state_events (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    membership TEXT,
    PRIMARY KEY (room_id, type, state_key)
);

CREATE INDEX current_state_members ON current_state_events (state_key, type, membership);
