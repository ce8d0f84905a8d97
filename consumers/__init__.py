"""The reading side: pure cores (validator, drift, telemetry_watch); Kafka runners wrap them."""
