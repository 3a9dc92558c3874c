"""telemetry-broker."""
