-- A metric filter reads one range of this index per metric, in window order and index-only:
-- a metric the GPU never reported costs one probe, a rare one only its own rows. It replaces
-- (gpu_id, metric_id, ts), which the planner passed over for the covering time index with
-- the metric as a filter, a walk of every datapoint of the GPU in the window.
-- (Built in the migration's transaction: writes to telemetry wait until it is done; the
-- collectors treat that like any slow database and store the records afterwards.)
DROP INDEX telemetry_gpu_metric_time;
CREATE INDEX telemetry_gpu_metric_time ON telemetry (gpu_id, metric_id, ts, stream_id, seq)
    INCLUDE (value, container, pod, namespace);
