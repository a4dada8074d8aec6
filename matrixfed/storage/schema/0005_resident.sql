-- 0005 resident endpoints: local users' profiles and the invites they
-- received over federation for rooms this server is not in.
-- Portable SQL (SQLite and PostgreSQL); JSON as TEXT.

-- A local user's public profile (served by /query/profile). A row also
-- means "this user exists" until the client API keeps its own users table.
CREATE TABLE profiles (
    user_id TEXT NOT NULL PRIMARY KEY,
    displayname TEXT,
    avatar_url TEXT
);

-- Invites for local users received through /invite (v1 or v2): the invite
-- event as we countersigned it and the stripped state that came with it.
-- One row per (room, user): a newer invite replaces the older one.
CREATE TABLE received_invites (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    room_version TEXT NOT NULL,
    sender TEXT NOT NULL,
    -- the signed invite PDU as JSON
    event_json TEXT NOT NULL,
    -- JSON list of stripped state events {type, state_key, content, sender}
    stripped_state TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

CREATE INDEX received_invites_user ON received_invites (user_id);
