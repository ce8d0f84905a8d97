"""`EpochRecorder` for any PPO trainer (SPEC §9): one v1.1 `EpochSummary` per epoch, to the NDJSON
stream, to Kafka, or both, written by a publisher process off the training loop, as `train` does.

    from ppo_telemetry.recorder import EpochRecorder

    with EpochRecorder("my-run", ndjson_dir="telemetry", kafka="127.0.0.1:9092") as recorder:
        for update in range(num_updates):
            ...collect a rollout, compute advantages and returns...
            recorder.begin_cycle(rewards, advantages, returns, values, global_step=step, learning_rate=lr)
            for epoch in range(update_epochs):
                for minibatch in ...:
                    ...loss, backward, grad_norm = clip_grad_norm_(...), optimizer step...
                    recorder.minibatch(pg_loss, v_loss, entropy, approx_kl, grad_norm, clip_fraction, size)
                recorder.end_epoch()

The calls and what each value means are those of `producer.recorder.EpochRecorder` (this class adds the
sinks); docs/integrations.md shows them in a PyTorch loop and in stable-baselines3.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avro_schemas.errors import TelemetryError
from producer.ndjson_sink import DEFAULT_MAX_SEGMENT_BYTES
from producer.publisher import KafkaTarget, PublisherProcess
from producer.recorder import EpochRecorder as _Recorder
from producer.recorder import RecorderError, check_recording

__all__ = ["EpochRecorder", "RecorderError", "TelemetryError", "kafka_client_config", "kafka_target"]


class EpochRecorder(_Recorder):
    """Records a PPO run's epochs and publishes them through a publisher process.

    `ndjson_dir`: a directory of NDJSON segments (resumed if it holds a stream). `kafka`: bootstrap
    servers (`host:port,...`); `kafka_config`: further client settings, either a mapping of librdkafka
    properties (`{"security.protocol": "SASL_SSL", ...}`) or the path of a TOML settings file (the
    `--kafka-config` file of the command line). `namespace`: the topics' prefix (SPEC §4). `wire_format`:
    `single-object` (default) or `confluent`, which needs `schema_registry`, the URL of a Confluent-compatible
    Schema Registry API (SPEC §11). At least one
    of `ndjson_dir` and `kafka` (or a `kafka_config` naming the servers). Errors are one-line
    `TelemetryError`s: a broker whose listener does not fit the security settings is reported here,
    in seconds, before training starts. The publisher's sinks are open when the constructor returns;
    with `wait_for_start=False` it returns at once and the publisher starts beside the training (about
    0.1 s): a sink that cannot open is then reported by the next `poll` after the publisher has
    answered, or by the first call that hands it records.
    """

    def __init__(
        self,
        run_id: str,
        *,
        ndjson_dir: str | os.PathLike[str] | None = None,
        kafka: str | None = None,
        kafka_config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        namespace: str | None = None,
        ndjson_max_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
        kafka_partitions: int = 3,
        telemetry_version: str = "1.1",
        data_mode: str = "mixed",
        wait_for_start: bool = True,
        wire_format: str = "single-object",
        schema_registry: str | None = None,
    ) -> None:
        if ndjson_dir is None and kafka is None and kafka_config is None:
            raise RecorderError("an EpochRecorder needs somewhere to publish: ndjson_dir, kafka or both")
        target = None if kafka is None and kafka_config is None else kafka_target(
            kafka, kafka_config, namespace, kafka_partitions, wire_format, schema_registry
        )
        # checked before the publisher starts: a bad run_id or version is the caller's one-line error
        check_recording(run_id, telemetry_version, data_mode)
        self.publisher = PublisherProcess(
            None if ndjson_dir is None else Path(ndjson_dir), ndjson_max_bytes, run_id, telemetry_version == "1.1",
            kafka=target, wait_for_start=wait_for_start,
        )
        """The child process that builds, numbers and writes the records (`producer.publisher`)."""
        super().__init__(
            run_id, publish_rows=self.publisher.publish_rows, telemetry_version=telemetry_version, data_mode=data_mode
        )

    def poll(self) -> None:
        """Raise a publisher failure known by now (without waiting), then hand finished epochs over if due."""
        self.publisher.check()
        super().poll()

    @property
    def next_offset(self) -> int | None:
        """The `log_stream_offset` the next record written will get (as of the last flush)."""
        return self.publisher.next_offset

    def flush(self) -> None:
        """Publish every finished epoch and wait until the publisher has written (and delivered) them."""
        super().flush()
        self.publisher.flush()

    def close(self) -> None:
        """Publish what is left, then wait for the publisher to write it all and exit. Idempotent."""
        try:
            super().close()
        finally:
            self.publisher.close()


def kafka_target(
    bootstrap: str | None,
    settings: Mapping[str, Any] | str | os.PathLike[str] | None,
    namespace: str | None,
    partitions: int = 3,
    wire_format: str = "single-object",
    schema_registry: str | None = None,
) -> KafkaTarget:
    """Where the publisher's Kafka sink writes: `kafka_client_config`'s settings and topic prefix, and the
    wire format (`confluent` needs `schema_registry`; its URL is checked for form here)."""
    from avro_schemas.codec import CONFLUENT, WIRE_FORMATS
    from kafka_io.registry_client import RegistryClient

    if wire_format not in WIRE_FORMATS:
        raise RecorderError(f"wire_format is one of {', '.join(WIRE_FORMATS)}, got {wire_format!r}")
    if wire_format == CONFLUENT and not schema_registry:
        raise RecorderError("the confluent wire format needs a Schema Registry: schema_registry (--schema-registry URL)")
    if schema_registry:
        RegistryClient(schema_registry)  # a malformed URL: one line now, not in the publisher
    client, topic_prefix = kafka_client_config(bootstrap, settings, namespace)
    return KafkaTarget(client, partitions, topic_prefix, wire_format, schema_registry)


def kafka_client_config(
    bootstrap: str | None,
    settings: Mapping[str, Any] | str | os.PathLike[str] | None,
    namespace: str | None,
) -> tuple[dict[str, str], str]:
    """(librdkafka config, topic prefix) from a bootstrap string and a mapping or a TOML settings file,
    over the `PPO_TELEMETRY_KAFKA_*` environment (`ppo_telemetry.kafka_settings`); the listener is
    checked against the security settings before anything is published."""
    from ppo_telemetry.kafka_probe import check_listener
    from ppo_telemetry.kafka_settings import KafkaSettings, namespace_of

    resolved = KafkaSettings.resolve(bootstrap, settings)
    client = resolved.librdkafka_config()
    check_listener(client)
    return client, namespace_of(namespace, resolved).name
