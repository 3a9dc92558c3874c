"""telemetry-api."""
