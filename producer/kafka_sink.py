"""The Kafka sink: epoch summaries as Avro to `ppo.telemetry.epochs` (SPEC §4), single-object or Confluent-framed.

The only module of the producer side that imports `confluent_kafka`. The producer is idempotent with
`acks=all`, so librdkafka's retries (a broker restart, a leader change) neither lose nor duplicate a
record; a record not delivered within `message.timeout.ms` is a delivery failure. Delivery reports
arrive on `poll`/`flush`; the first failure is kept and raised on the next `publish` or `flush`, and
again on every later call (as confluent-kafka's examples and Quix Streams do). Key: `run_id` (one run's
records stay in one partition, in order); header `telemetry_version`. Before the first record of a
writer schema, the schema's JSON goes to the compacted `ppo.telemetry.schemas` topic (key: the
fingerprint as 16 hex characters) and is flushed, so a consumer that lacks it can fetch it first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from avro_schemas.codec import CONFLUENT, SINGLE_OBJECT, WIRE_FORMATS, SingleObjectCodec, epoch_summary_codec
from avro_schemas.errors import EncodeError, TelemetryError
from avro_schemas.registry import SchemaVersion
from avro_schemas.topics import DEFAULT_NAMESPACE, VERSION_HEADER, Namespace
from kafka_io import KafkaIOError, ensure_topics, quiet_logger, reason
from kafka_io.registry_client import RegistryClient, RegistryRejected, RegistryUnavailable, subject_of

__all__ = ["KafkaSink", "KafkaSinkError", "producer_config"]

DEFAULT_PARTITIONS = 3
REGISTRY_WAIT = 300.0  # seconds a registration is retried while the registry is away (as message.timeout.ms)


class KafkaSinkError(TelemetryError):
    """A record could not be delivered to Kafka (or the topics could not be set up)."""


def producer_config(config: dict[str, Any]) -> dict[str, Any]:
    """librdkafka settings for telemetry: the caller's (connection, security) plus what delivery needs."""
    return {
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": 300_000,
        **config,
        # not overridable: exactly one copy of each record, in order, on every in-sync replica
        "enable.idempotence": True,
        "acks": "all",
        # the Java client's partitioner: a run lands on the same partition whichever client wrote it
        "partitioner": "murmur2_random",
        "logger": quiet_logger(),
    }


class KafkaSink:
    """Publishes epoch summary dicts to Kafka (`TelemetrySink`).

    `config` holds the connection settings (librdkafka names: `bootstrap.servers`, security keys).
    Topics are created when missing: the epochs topic with `partitions` partitions, the schema topic
    compacted; both are `namespace`'s (`topic` overrides the epochs topic's name). A v1.1 record without
    `log_stream_offset` is numbered here, from `first_offset` on (when the NDJSON stream also runs, it
    numbers the record first and Kafka carries its offset). `wire_format` `confluent` needs
    `schema_registry`, the URL of a Confluent-compatible Schema Registry API. `setup_timeout`: how long
    the topics' check and creation may wait for the cluster.
    """

    def __init__(
        self,
        config: dict[str, Any],
        topic: str | None = None,
        partitions: int = DEFAULT_PARTITIONS,
        codec: SingleObjectCodec | None = None,
        first_offset: int = 0,
        namespace: Namespace = DEFAULT_NAMESPACE,
        wire_format: str = SINGLE_OBJECT,
        schema_registry: str | None = None,
        registry_wait: float = REGISTRY_WAIT,
        setup_timeout: float = 30.0,
    ) -> None:
        if wire_format not in WIRE_FORMATS:
            raise KafkaSinkError(f"unknown wire format {wire_format!r}: one of {', '.join(WIRE_FORMATS)}")
        if wire_format == CONFLUENT and not schema_registry:
            raise KafkaSinkError("the confluent wire format needs a Schema Registry URL")
        self.schema_registry = RegistryClient(schema_registry) if wire_format == CONFLUENT else None
        self.registry_wait = registry_wait
        self._schema_ids: dict[bytes, int] = {}  # writer fingerprint -> the registry's id (confluent)
        self.topic = topic if topic is not None else namespace.epochs_topic
        self.schemas_topic = namespace.schemas_topic
        self.codec = codec if codec is not None else epoch_summary_codec()
        self.next_offset = first_offset
        self.delivered = 0
        self._error: KafkaSinkError | None = None
        self._schemas_sent: set[bytes] = set()
        self.on_wait: Callable[[int, float], None] | None = None
        """Called about once a second while `flush` waits: (records still queued, seconds waited)."""
        try:
            ensure_topics(
                config,
                {self.topic: (partitions, {}), self.schemas_topic: (1, {"cleanup.policy": "compact"})},
                timeout=setup_timeout,
            )
        except KafkaIOError as exc:
            raise KafkaSinkError(str(exc)) from None
        self._producer = Producer(producer_config(config))
        self._closed = False

    # ------------------------------------------------------------------------------- delivery

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            self.delivered += 1
        elif self._error is None:
            self._error = KafkaSinkError(f"a record to {msg.topic()} was not delivered: {err.str()}")

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _produce(self, topic: str, **kwargs: Any) -> None:
        while True:
            try:
                self._producer.produce(topic, on_delivery=self._on_delivery, **kwargs)
                return
            except BufferError:
                # the local queue is full (a broker is away, or we outrun it): serve reports and retry
                self._producer.poll(0.1)
                self._raise_failure()
            except KafkaException as exc:
                raise KafkaSinkError(f"cannot produce to {topic}: {reason(exc)}") from None

    def _publish_schema(self, writer: SchemaVersion) -> None:
        """The writer schema to the schema topic, delivered before any record written with it."""
        self._produce(
            self.schemas_topic,
            key=writer.fingerprint_hex.encode("ascii"),
            value=json.dumps(writer.schema, separators=(",", ":")).encode("utf-8"),
        )
        self.flush()
        self._schemas_sent.add(writer.fingerprint)

    def _register_schema(self, writer: SchemaVersion) -> int:
        """The registry's id of the writer schema, registered (at FULL_TRANSITIVE) on first use."""
        schema_id = self._schema_ids.get(writer.fingerprint)
        if schema_id is not None:
            return schema_id
        subject = subject_of(self.topic)
        schema = json.dumps(writer.schema, separators=(",", ":"))
        started = time.monotonic()
        while True:
            try:
                if not self._schema_ids:
                    self.schema_registry.set_compatibility(subject, "FULL_TRANSITIVE")
                schema_id = self.schema_registry.register(subject, schema)
                break
            except RegistryRejected as exc:
                raise KafkaSinkError(f"the registry refused telemetry v{writer.version} under {subject}: {exc}") from None
            except RegistryUnavailable as exc:
                if time.monotonic() - started > self.registry_wait:
                    raise KafkaSinkError(f"cannot register telemetry v{writer.version}: {exc}") from None
                time.sleep(1.0)
        self._schema_ids[writer.fingerprint] = schema_id
        self.codec.registry.add_id(schema_id, schema)
        return schema_id

    # ------------------------------------------------------------------------------- TelemetrySink

    def publish(self, record: dict[str, Any]) -> None:
        """Queue one record (delivery is reported later); raises the first earlier delivery failure."""
        self._raise_failure()
        if self._closed:
            raise KafkaSinkError("the Kafka sink is closed")
        if record.get("telemetry_version") == "1.1":
            if record.get("log_stream_offset") is None:
                record["log_stream_offset"] = self.next_offset
            self.next_offset = record["log_stream_offset"] + 1
        try:
            writer = self.codec.writer_for(record)
            schema_id = None if self.schema_registry is None else self._register_schema(writer)
            data = self.codec.encode(record, writer, schema_id)
        except EncodeError as exc:
            raise KafkaSinkError(f"cannot encode the record of epoch {record.get('epoch')}: {exc}") from None
        if schema_id is None and writer.fingerprint not in self._schemas_sent:
            self._publish_schema(writer)
        run_id = record.get("run_id")
        self._produce(
            self.topic,
            key=run_id.encode("utf-8") if isinstance(run_id, str) else None,
            value=data,
            headers=[(VERSION_HEADER, str(record.get("telemetry_version")).encode("utf-8"))],
        )
        self._producer.poll(0)

    def poll(self) -> None:
        """Serve delivery reports without waiting; raises the first failure."""
        self._producer.poll(0)
        self._raise_failure()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued record is delivered (or has failed); raises the first failure.

        Without `timeout` this waits as long as librdkafka keeps retrying (`message.timeout.ms`)."""
        started = time.monotonic()
        while True:
            remaining = self._producer.flush(1.0)
            self._raise_failure()
            if remaining == 0:
                return
            waited = time.monotonic() - started
            if timeout is not None and waited > timeout:
                raise KafkaSinkError(f"{remaining} records not delivered within {timeout:.0f} s")
            if self.on_wait is not None:
                self.on_wait(remaining, waited)

    def close(self) -> None:
        """Flush and stop; closing twice is harmless (after a failure, raises it)."""
        if self._closed:
            self._raise_failure()
            return
        try:
            self.flush()
        finally:
            self._closed = True
