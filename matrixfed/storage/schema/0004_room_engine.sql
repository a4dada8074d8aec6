-- 0004 room engine: answers to inbound /send transactions, so a transaction
-- the origin retries (after a timeout, or after our restart) is answered
-- with the same result instead of being processed twice.
-- Portable SQL (SQLite and PostgreSQL); JSON as TEXT.

CREATE TABLE received_transactions (
    origin TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    -- the JSON body we answered with
    response_json TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, transaction_id)
);

CREATE INDEX received_transactions_ts ON received_transactions (received_ts);

-- The rejected events of a room (few), for state resolution: found without
-- looking at every event of the room's auth chains.
CREATE INDEX events_rejected ON events (room_id) WHERE rejected_reason IS NOT NULL;
