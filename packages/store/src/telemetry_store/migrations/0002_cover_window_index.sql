-- The telemetry window reads every column but gpu_id's neighbours from the heap. Carrying the
-- optional dimensions in the index too makes it an index-only scan; they are NULL in most rows
-- and cost next to nothing in the index.
DROP INDEX telemetry_gpu_time;
CREATE INDEX telemetry_gpu_time ON telemetry (gpu_id, ts, stream_id, seq)
    INCLUDE (metric_id, value, container, pod, namespace);
