"""The training side: PPO harness, statistics and telemetry sinks (NDJSON, Kafka)."""
