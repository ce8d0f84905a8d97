"""The `ppo-telemetry` command line: wires the contract (`avro_schemas`), the producer and the consumers."""
