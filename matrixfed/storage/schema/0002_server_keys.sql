-- 0002 server keys: other servers' verify keys and the signed responses they
-- came in, so keys survive restarts and the notary can serve cached responses.
-- Portable SQL (SQLite >= 3.24 and PostgreSQL); timestamps in ms since the epoch.

CREATE TABLE server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    -- unpadded base64 of the public key
    verify_key TEXT NOT NULL,
    -- until when the key may be used: the response's valid_until_ts capped at
    -- 7 days after fetching, or expired_ts for a key from old_verify_keys
    valid_until_ts BIGINT NOT NULL,
    -- 1 when the key came from old_verify_keys
    expired INTEGER NOT NULL,
    -- valid_until_ts of the response the row came from: only a response at
    -- least as new replaces the row (a stale notary copy never downgrades it)
    response_valid_until_ts BIGINT NOT NULL,
    -- the server that answered: the key's owner, or a notary
    fetched_from TEXT NOT NULL,
    ts_fetched BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- The newest signed /_matrix/key/v2/server response seen for each server.
CREATE TABLE server_key_responses (
    server_name TEXT NOT NULL PRIMARY KEY,
    fetched_from TEXT NOT NULL,
    ts_fetched BIGINT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    response_json TEXT NOT NULL
);
