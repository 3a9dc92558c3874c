-- Until now every stream claim and every GPU refresh was an INSERT ... ON CONFLICT DO UPDATE,
-- which draws an identity value even when it updates: the sequences ran far ahead of the rows
-- (streams.id is a smallint, so its sequence ran out after 32,767 claims). The upserts now
-- update first and draw values only for new rows; restart each sequence just past the highest
-- id in use, so the values spent without a row are available again. Nothing references an id
-- above the highest one, and the rows and their ids stay as they are (telemetry.stream_id and
-- gpu_id keep pointing at the same rows; no column changes type, no table is rewritten).
-- The lock keeps writers of an older version out until the migration commits: an insert that
-- drew a value before the restart and committed after it would otherwise meet that value again.
LOCK TABLE streams, gpus IN SHARE ROW EXCLUSIVE MODE;
SELECT setval(pg_get_serial_sequence('streams', 'id'), coalesce(max(id), 0) + 1, false)
FROM streams;
SELECT setval(pg_get_serial_sequence('gpus', 'id'), coalesce(max(id), 0) + 1, false)
FROM gpus;
