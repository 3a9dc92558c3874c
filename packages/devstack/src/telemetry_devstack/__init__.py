"""telemetry-devstack."""
