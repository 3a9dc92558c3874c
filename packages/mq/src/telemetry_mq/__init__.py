"""telemetry-mq."""
