-- The scrape source's work index: dcgm-exporter endpoints shared by the streamer replicas.
--
-- A streamer is a member while it renews its row; each derives from the live members which
-- targets are its own (rendezvous hashing), and holds a target by a lease on its row. Every
-- scrape of a target is one slot (the interval it belongs to, by its start time): a slot is
-- claimed once, by the target's owner, with the scrape's datapoints in the claim row, before
-- anything is published; so a slot is stored once whoever scrapes or re-publishes it.

CREATE TABLE scrape_members (
    owner       text PRIMARY KEY,
    lease_until timestamptz NOT NULL,
    joined_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per exporter endpoint any streamer's discovery listed (static list, file, DNS).
-- last_slot is the watermark: a slot is claimed only past it, so no slot is claimed twice,
-- even after a takeover. missed counts the slots skipped between two claims.
CREATE TABLE scrape_targets (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    address     text NOT NULL UNIQUE,
    owner       text,
    lease_until timestamptz NOT NULL DEFAULT '-infinity',
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL,
    last_slot   timestamptz,
    slots       bigint NOT NULL DEFAULT 0 CHECK (slots >= 0),
    missed      bigint NOT NULL DEFAULT 0 CHECK (missed >= 0),
    takeovers   integer NOT NULL DEFAULT 0
);

-- One row per claimed slot. While payload holds the scrape (its records' static parts and
-- partition keys, zlib-compressed) the slot is not yet acknowledged by the broker: whoever
-- owns the target publishes it, the same bytes with seq start + i and time scraped_at. Once
-- published the payload is cleared and the row stays as the target's history for a while.
CREATE TABLE scrape_slots (
    target_id    integer NOT NULL REFERENCES scrape_targets (id) ON DELETE CASCADE,
    slot         timestamptz NOT NULL,
    owner        text NOT NULL,
    stream_id    smallint NOT NULL REFERENCES streams (id),
    start        bigint NOT NULL CHECK (start >= 0),
    count        integer NOT NULL CHECK (count >= 0),
    scraped_at   timestamptz NOT NULL,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    payload      bytea,
    PRIMARY KEY (target_id, slot)
);
CREATE INDEX scrape_slots_pending ON scrape_slots (target_id, slot) WHERE payload IS NOT NULL;
CREATE INDEX scrape_slots_published ON scrape_slots (published_at) WHERE payload IS NULL;
