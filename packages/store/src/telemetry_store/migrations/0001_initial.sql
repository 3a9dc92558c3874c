-- The metric catalog; rows are kept in step with telemetry_model.METRICS by migrate().
CREATE TABLE metrics (
    id          smallint PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    unit        text NOT NULL,
    description text NOT NULL
);

-- One row per GPU; the uuid is its identity (gpu_index is only unique per host).
CREATE TABLE gpus (
    id             integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid           text NOT NULL UNIQUE,
    hostname       text NOT NULL,
    gpu_index      smallint NOT NULL,
    device         text NOT NULL,
    model          text NOT NULL,
    driver_version text,
    first_seen     timestamptz NOT NULL,
    last_seen      timestamptz NOT NULL
);
CREATE INDEX gpus_hostname ON gpus (hostname, gpu_index);

-- The streamers' work index: sequence s of a stream is CSV row s mod rows, loop s div rows.
CREATE TABLE streams (
    id         smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    next_seq   bigint NOT NULL DEFAULT 0 CHECK (next_seq >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The narrow fact table. (stream_id, seq) is each datapoint's idempotency key.
-- No foreign keys on this hot table: the insert joins gpus/metrics/streams, so ids are valid
-- by construction, and per-row FK checks would cost a third of the insert rate.
CREATE TABLE telemetry (
    gpu_id    integer NOT NULL,
    ts        timestamptz NOT NULL,
    metric_id smallint NOT NULL,
    value     double precision NOT NULL,
    stream_id smallint NOT NULL,
    seq       bigint NOT NULL,
    container text,
    pod       text,
    namespace text,
    PRIMARY KEY (stream_id, seq)
);
-- One GPU, a time range, ordered by time (keyset-paginated by ts, stream_id, seq).
CREATE INDEX telemetry_gpu_time ON telemetry (gpu_id, ts, stream_id, seq) INCLUDE (metric_id, value);
-- The latest value of each metric of one GPU, and single-metric windows.
CREATE INDEX telemetry_gpu_metric_time ON telemetry (gpu_id, metric_id, ts);
