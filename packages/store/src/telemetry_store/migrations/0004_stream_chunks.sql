-- A claimed chunk of a stream's sequence numbers is a lease. Its owner renews lease_until while
-- it publishes the chunk and deletes the row once the broker has acknowledged every batch of it
-- (so the table holds only the chunks in flight: a few rows per streamer). A chunk whose lease
-- ran out (its owner died) is taken over by the next claim of any streamer and published again
-- from its start; the collector's idempotent insert on (stream_id, seq) absorbs the records the
-- dead owner had published. base_ts and tick_ns fix every datapoint's time when the chunk is
-- first claimed, ts(seq) = base_ts + (seq - start) * tick_ns, so whoever publishes the chunk
-- sends the same bytes for each seq.
CREATE TABLE stream_chunks (
    stream_id   smallint NOT NULL REFERENCES streams (id),
    start       bigint NOT NULL CHECK (start >= 0),
    count       integer NOT NULL CHECK (count > 0),
    owner       text NOT NULL,
    lease_until timestamptz NOT NULL,
    base_ts     timestamptz NOT NULL,
    tick_ns     bigint NOT NULL CHECK (tick_ns >= 0),
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    takeovers   integer NOT NULL DEFAULT 0,
    PRIMARY KEY (stream_id, start)
);
