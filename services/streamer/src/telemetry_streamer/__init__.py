"""telemetry-streamer."""
