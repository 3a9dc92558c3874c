-- A MIG instance is a device of its own (uuid '<GPU uuid>:mig<GPU_I_ID>', see
-- telemetry_model.Gpu): these say which GPU it partitions and how. NULL for a physical GPU.
-- (Adding nullable columns rewrites nothing.)
ALTER TABLE gpus
    ADD COLUMN parent_uuid text,
    ADD COLUMN mig_profile text,
    ADD COLUMN mig_instance smallint;
CREATE INDEX gpus_parent ON gpus (parent_uuid) WHERE parent_uuid IS NOT NULL;
