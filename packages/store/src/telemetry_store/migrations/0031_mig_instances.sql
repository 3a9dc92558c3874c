-- A MIG instance is a device of its own (uuid '<GPU uuid>:mig<GPU_I_ID>', see
-- telemetry_model.Gpu): these say which GPU it partitions and how. NULL for a physical GPU.
-- metric_ids: the ids of the metrics the GPU has reported, so its latest state reads those,
-- not every metric of the grown catalog (each one a GPU never reported costs a probe of every
-- partition). NULL: not known, and the latest state reads every metric.
-- (Adding nullable columns rewrites nothing.)
ALTER TABLE gpus
    ADD COLUMN parent_uuid text,
    ADD COLUMN mig_profile text,
    ADD COLUMN mig_instance smallint,
    ADD COLUMN metric_ids smallint[];
-- A GPU stored before this can only have reported the catalog of the time (the CSV's ten): the
-- metrics table holds that catalog until this migration run ends (migrate syncs it last).
UPDATE gpus SET metric_ids = (SELECT array_agg(id ORDER BY id) FROM metrics);
CREATE INDEX gpus_parent ON gpus (parent_uuid) WHERE parent_uuid IS NOT NULL;
