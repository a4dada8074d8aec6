-- 0008 client API: local users, their devices and access tokens, and the
-- client transaction ids that make PUT /send idempotent.
-- Portable SQL (SQLite >= 3.24 and PostgreSQL); timestamps in ms since the epoch.

CREATE TABLE users (
    user_id TEXT NOT NULL PRIMARY KEY,
    -- "scrypt$N$r$p$salt$hash" (unpadded base64), or NULL: no password login
    password_hash TEXT,
    -- 1 for server administrators (shared-secret registration with admin=true)
    admin INTEGER NOT NULL,
    created_ts BIGINT NOT NULL
);

CREATE TABLE devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Tokens are never stored: only the hex SHA-256 of each one.
CREATE TABLE access_tokens (
    token_hash TEXT NOT NULL PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX access_tokens_user_device ON access_tokens (user_id, device_id);

-- A client transaction: (token, request key) -> the event it created.
CREATE TABLE client_txns (
    token_hash TEXT NOT NULL,
    txn_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (token_hash, txn_key)
);
