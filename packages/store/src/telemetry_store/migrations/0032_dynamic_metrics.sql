-- DCGM fields outside the catalog that a streamer's allow-list keeps are registered on first
-- sight (telemetry_store.ensure_metrics) with ids from this sequence: from 10000 up, so they
-- never meet a catalog id (the catalog's are small and fixed in telemetry_model.METRICS).
CREATE SEQUENCE metric_dynamic_ids AS smallint START 10000 MINVALUE 10000;
