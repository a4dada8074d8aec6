-- Outbound federation: per-destination transaction queues (matrixfed/federation/sender.py,
-- matrixfed/storage/sender_store.py).

-- PDUs waiting for delivery: one row per (destination, event); deleted once the
-- transaction carrying it was answered (or refused for good).
CREATE TABLE federation_outbox (
    destination TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (destination, stream_ordering)
);

-- Events whose outbox rows were written (even with no destination): start-up
-- recovery skips them. Trimmed at start-up below federation_sender_position.
CREATE TABLE federation_queued_events (
    stream_ordering BIGINT NOT NULL PRIMARY KEY,
    event_id TEXT NOT NULL
);

-- Every local event at or below this stream ordering has been queued.
CREATE TABLE federation_sender_position (
    name TEXT NOT NULL PRIMARY KEY,
    stream_ordering BIGINT NOT NULL
);

-- Per destination: the transaction ID counter and the transaction in flight.
CREATE TABLE federation_destinations (
    destination TEXT NOT NULL PRIMARY KEY,
    -- time (ms) the row was created: prefixes transaction IDs, so a server whose
    -- database was reset does not reuse IDs the destination has already seen
    txn_epoch BIGINT NOT NULL,
    last_txn_seq BIGINT NOT NULL,
    -- the transaction being delivered (NULL: none); resent with the same ID and
    -- PDUs after a restart, so the destination can deduplicate it
    inflight_txn_id TEXT,
    -- JSON list of [stream_ordering, event_id] of its PDUs
    inflight_pdus TEXT
);
