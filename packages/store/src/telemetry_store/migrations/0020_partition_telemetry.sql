-- telemetry becomes a table partitioned by time (declarative RANGE partitions on ts), so that
-- retention drops whole partitions instead of deleting rows, and gets 1-minute and 1-hour
-- rollups with their own, longer retention. Partitions are created by telemetry_store.partitions
-- (ahead of time by the maintenance job, on demand by the collector), never here except for the
-- existing data.
--
-- The idempotency key: the primary key of a partitioned table must hold the partition key, so
-- (stream_id, seq) becomes (stream_id, seq, ts). A datapoint's ts is fixed before it can be
-- sent twice (the streamer fixes each seq's time when its chunk is first claimed, and a chunk
-- taken over is published again with the same times; the broker redelivers the same bytes), so
-- two copies of one (stream_id, seq) always carry the same ts, land in the same partition and
-- meet the same key there: stored once, as before.
--
-- Upgrade: the existing table is renamed and attached whole as one partition covering the days
-- of its data (no row is copied); ATTACH builds the new primary key on it, the two covering
-- indexes match the parent's and are reused as they are. The migration runs in
-- one transaction holding ACCESS EXCLUSIVE on telemetry from the rename on: writers and readers
-- wait until it commits (see docs/deployment.md for the measured duration).
ALTER TABLE telemetry RENAME TO telemetry_legacy;
-- Unique on (stream_id, seq) implies unique on (stream_id, seq, ts): the new key builds.
ALTER TABLE telemetry_legacy DROP CONSTRAINT telemetry_pkey;
ALTER INDEX telemetry_gpu_time RENAME TO telemetry_legacy_gpu_time;
ALTER INDEX telemetry_gpu_metric_time RENAME TO telemetry_legacy_gpu_metric_time;

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
    PRIMARY KEY (stream_id, seq, ts)
) PARTITION BY RANGE (ts);
-- The same two covering indexes as before (migrations 0002 and 0010), now per partition.
CREATE INDEX telemetry_gpu_time ON telemetry (gpu_id, ts, stream_id, seq)
    INCLUDE (metric_id, value, container, pod, namespace);
CREATE INDEX telemetry_gpu_metric_time ON telemetry (gpu_id, metric_id, ts, stream_id, seq)
    INCLUDE (value, container, pod, namespace);
-- No index leads with ts: the rollups read a time range GPU by GPU through telemetry_gpu_time
-- (a BRIN index on ts would have served them too, for 8 % more time per inserted row).

-- The partitions of a table and their bounds, read from the catalog (UTC whatever the session's
-- time zone; MINVALUE and MAXVALUE as -infinity and infinity). detaching: a DETACH ...
-- CONCURRENTLY that did not finish.
CREATE FUNCTION telemetry_partitions(parent regclass)
RETURNS TABLE (name text, lo timestamptz, hi timestamptz, detaching boolean)
LANGUAGE sql STABLE SET timezone = 'UTC' AS $$
    SELECT c.relname::text, coalesce(b[1]::timestamptz, '-infinity'),
           coalesce(b[2]::timestamptz, 'infinity'), i.inhdetachpending
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
        $re$FROM \((?:'([^']*)'|MINVALUE)\) TO \((?:'([^']*)'|MAXVALUE)\)$re$) AS b
    WHERE i.inhparent = parent AND c.relkind IN ('r', 'p')
    ORDER BY 2
$$;

-- Create the partition ``name`` of ``parent`` for [lo, hi) (-infinity, infinity: MINVALUE,
-- MAXVALUE) as a plain table with the parent's indexes, named <name>_<suffix> after the
-- parent's (<parent>_<suffix>), then attach it: ATTACH PARTITION takes SHARE UPDATE EXCLUSIVE
-- on the parent, so inserts and reads go on (CREATE TABLE ... PARTITION OF would take ACCESS
-- EXCLUSIVE and queue every writer behind the longest running query). The primary key is
-- left to ATTACH (named <name>_pkey). A table already named ``name`` outside the parent is what
-- an interrupted retention left behind (detached, not dropped): its rows were expired.
CREATE FUNCTION telemetry_create_partition(parent regclass, name text, lo timestamptz,
                                           hi timestamptz)
RETURNS void LANGUAGE plpgsql SET timezone = 'UTC' AS $$
DECLARE
    idx record;
    prefix text := (SELECT relname FROM pg_class WHERE oid = parent);
BEGIN
    EXECUTE format('DROP TABLE IF EXISTS %I', name);
    EXECUTE format('CREATE TABLE %I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
                   ' INCLUDING STORAGE INCLUDING COMPRESSION)', name, parent);
    FOR idx IN
        SELECT i.relname AS iname, pg_get_indexdef(i.oid) AS def
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        WHERE x.indrelid = parent AND NOT x.indisprimary
    LOOP
        EXECUTE regexp_replace(idx.def, '^(CREATE (UNIQUE )?INDEX) \S+ ON ONLY \S+ ',
            format('\1 %I ON %I ', name || substr(idx.iname, length(prefix) + 1), name));
    END LOOP;
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
        parent, name,
        CASE WHEN lo = '-infinity' THEN 'MINVALUE' ELSE quote_literal(lo) END,
        CASE WHEN hi = 'infinity' THEN 'MAXVALUE' ELSE quote_literal(hi) END);
END
$$;

-- Times outside the data's domain (before 1970, from year 10000 on: the decoder refuses them,
-- only a hand-written INSERT stores one) have a partition each side, so that any time
-- PostgreSQL holds still stores and renders. Both stay empty in normal operation.
SELECT telemetry_create_partition('telemetry', 'telemetry_early', '-infinity',
                                  '1970-01-01 00:00:00+00');
SELECT telemetry_create_partition('telemetry', 'telemetry_far', '10000-01-01 00:00:00+00',
                                  'infinity');

-- What every insert transaction reads (under a shared advisory lock, see writes.py), and the
-- rollups' progress. One row.
--   accept_from     rows older than this are refused at insert (raw retention's horizon)
--   sealed_to       a row inserted older than this marks its minute in telemetry_late
--   partition_width the width of a raw partition created on demand
--   rollup_1m_to, rollup_1h_to  every interval before these is in the rollup (NULL: none yet)
CREATE TABLE telemetry_bounds (
    one             boolean PRIMARY KEY DEFAULT true CHECK (one),
    accept_from     timestamptz NOT NULL DEFAULT '-infinity',
    sealed_to       timestamptz NOT NULL DEFAULT '-infinity',
    partition_width interval NOT NULL DEFAULT '1 day' CHECK (partition_width >= '1 hour'),
    rollup_1m_to    timestamptz,
    rollup_1h_to    timestamptz
);

-- Minutes that received datapoints after they were sealed (a redelivery after an outage, a
-- chunk taken over): maintenance aggregates them again and deletes exactly the rows it read.
-- Append-only with its own id, so concurrent collectors never wait on each other here.
CREATE TABLE telemetry_late (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    minute    timestamptz NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX telemetry_late_minute ON telemetry_late (minute);

-- Rollups per GPU, metric and interval: count, min, max, sum and the last value (of the
-- datapoint last in (ts, stream_id, seq) order). avg = sum / count. The key covers what a
-- bucketed read needs, so those reads are index-only.
CREATE TABLE telemetry_1m (
    gpu_id    integer NOT NULL,
    bucket    timestamptz NOT NULL,
    metric_id smallint NOT NULL,
    count     integer NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    sum       double precision NOT NULL,
    last      double precision NOT NULL,
    PRIMARY KEY (gpu_id, bucket, metric_id) INCLUDE (count, min, max, sum)
) PARTITION BY RANGE (bucket);

CREATE TABLE telemetry_1h (
    gpu_id    integer NOT NULL,
    bucket    timestamptz NOT NULL,
    metric_id smallint NOT NULL,
    count     integer NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    sum       double precision NOT NULL,
    last      double precision NOT NULL,
    PRIMARY KEY (gpu_id, bucket, metric_id) INCLUDE (count, min, max, sum)
) PARTITION BY RANGE (bucket);

-- The maintenance job's last run, which the API exports as metrics at scrape time (a CronJob
-- has no scrape endpoint). Counters are cumulative.
CREATE TABLE maintenance_status (
    one                 boolean PRIMARY KEY DEFAULT true CHECK (one),
    last_success        timestamptz,
    last_duration_s     double precision,
    last_error          text,
    last_error_at       timestamptz,
    runs                bigint NOT NULL DEFAULT 0,
    failures            bigint NOT NULL DEFAULT 0,
    rows_1m             bigint NOT NULL DEFAULT 0,
    rows_1h             bigint NOT NULL DEFAULT 0,
    late_minutes        bigint NOT NULL DEFAULT 0,
    partitions_created  bigint NOT NULL DEFAULT 0,
    partitions_dropped  bigint NOT NULL DEFAULT 0
);
INSERT INTO maintenance_status DEFAULT VALUES;

-- The existing rows: attached whole as one partition over the days they span.
DO $$
DECLARE
    lo timestamptz;
    hi timestamptz;
    odd bigint;
BEGIN
    SELECT min(ts) FILTER (WHERE NOT odd_ts), max(ts) FILTER (WHERE NOT odd_ts),
           count(*) FILTER (WHERE odd_ts)
    INTO lo, hi, odd
    FROM (SELECT ts, ts < '1970-01-01 00:00:00+00' OR ts >= '10000-01-01 00:00:00+00' AS odd_ts
          FROM telemetry_legacy) t;
    IF odd > 0 THEN
        INSERT INTO telemetry SELECT * FROM telemetry_legacy
        WHERE ts < '1970-01-01 00:00:00+00' OR ts >= '10000-01-01 00:00:00+00';
        DELETE FROM telemetry_legacy
        WHERE ts < '1970-01-01 00:00:00+00' OR ts >= '10000-01-01 00:00:00+00';
    END IF;
    IF lo IS NULL THEN
        DROP TABLE telemetry_legacy;
        INSERT INTO telemetry_bounds DEFAULT VALUES;
        RETURN;
    END IF;
    lo := date_bin('1 day', lo, timestamptz '1970-01-01 00:00:00+00');
    hi := date_bin('1 day', hi, timestamptz '1970-01-01 00:00:00+00') + interval '1 day';
    -- A constraint that implies the partition's bounds spares ATTACH its own validation scan.
    EXECUTE format('ALTER TABLE telemetry_legacy ADD CONSTRAINT telemetry_legacy_bounds'
                   ' CHECK (ts >= %L AND ts < %L)', lo, hi);
    EXECUTE format('ALTER TABLE telemetry ATTACH PARTITION telemetry_legacy'
                   ' FOR VALUES FROM (%L) TO (%L)', lo, hi);
    ALTER TABLE telemetry_legacy DROP CONSTRAINT telemetry_legacy_bounds;
    INSERT INTO telemetry_bounds DEFAULT VALUES;
END
$$;
