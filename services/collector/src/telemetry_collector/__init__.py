"""telemetry-collector."""
