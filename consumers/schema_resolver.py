"""Decoding epoch summaries of either wire format, finding the writer schemas a reader lacks (SPEC §3, §4, §11).

A consumer knows the local schema versions. Any other writer schema it meets is found where the producer
put it:
- a **single-object** message with an unknown fingerprint: on the schema topic (`ppo.telemetry.schemas`),
  read again at most every `min_interval` seconds;
- a **Confluent-framed** message with an unknown schema id: in the Schema Registry, by id. That lookup is
  I/O that may wait (the registry may be away), so a reader does it in `prepare`, before it begins the
  transaction its batch goes into; `decode` then only decodes.

A writer schema that is not a local version is read resolved into the newest local one, the reader schema
of every consumer. Without a registry, a Confluent-framed message is an `UnknownSchemaIdError` (the
validator dead-letters it, rule `unknown_schema`, as it does an unknown fingerprint). A registry that is
not reachable is never the message's fault: `prepare` waits for it (saying so once) until it answers or
`stopping()` is true, or, for a one-shot reader given no `stopping`, raises `RegistryUnavailable`.

The resolver sees values (bytes) and callables, never Kafka types: `schema_topic_values(config, topic)`
is the Kafka reader of the schema topic that consumers give it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from avro_schemas.codec import (
    CONFLUENT_HEADER_SIZE,
    HEADER_SIZE,
    SingleObjectCodec,
    confluent_schema_id,
    epoch_summary_codec,
)
from avro_schemas.errors import EmptyMessageError, TelemetryError, UnknownSchemaError, UnknownSchemaIdError
from kafka_io.registry_client import RegistryClient, RegistryUnavailable

__all__ = ["SchemaResolver", "schema_topic_values"]

BACKOFF_FIRST = 0.5  # seconds between attempts while the registry is away, doubling up to BACKOFF_MAX
BACKOFF_MAX = 10.0


class SchemaResolver:
    """Decodes values of either wire format with `codec` (default: the epoch summary's), learning writer
    schemas from `schema_topic` (a callable giving the schema topic's (offset, value) pairs) and `registry`."""

    def __init__(
        self,
        codec: SingleObjectCodec | None = None,
        schema_topic: Callable[[], Iterable[tuple[int, bytes | None]]] | None = None,
        registry: RegistryClient | None = None,
        say: Callable[[str], None] = lambda text: None,
        min_interval: float = 5.0,
    ) -> None:
        self.codec = codec if codec is not None else epoch_summary_codec()
        self.schema_topic = schema_topic
        self.registry = registry
        self.say = say
        self.min_interval = min_interval
        self._local = {version.fingerprint for version in self.codec.versions.values()}
        # Confluent headers (00 + id) naming a local version; a registry never gives an id to another schema
        self._local_ids: set[bytes] = set()
        self._topic_read_at = -1e9
        self._missing_ids: dict[int, float] = {}  # ids the registry does not have -> when it said so

    # ------------------------------------------------------------------------------------ schema ids

    def prepare(self, values: Iterable[bytes | None], stopping: Callable[[], bool] | None = None) -> bool:
        """Fetch the schema of every Confluent-framed value whose id is not known yet; False when `stopping()`
        became true while the registry was away (nothing is decoded then)."""
        if self.registry is None:
            return True
        # this runs on every batch: one slice per value, the ids read once per distinct header
        heads = {value[:CONFLUENT_HEADER_SIZE] for value in values if type(value) is bytes}
        wanted = {schema_id for schema_id in map(confluent_schema_id, heads) if schema_id is not None}
        for schema_id in sorted(wanted):
            if not self._fetch(schema_id, stopping):
                return False
        return True

    def _fetch(self, schema_id: int, stopping: Callable[[], bool] | None) -> bool:
        if self.codec.registry.by_id(schema_id) is not None:
            return True
        missing_since = self._missing_ids.get(schema_id)
        if missing_since is not None and time.monotonic() - missing_since < self.min_interval:
            return True
        backoff, said = BACKOFF_FIRST, False
        while True:
            try:
                schema = self.registry.schema(schema_id)
                break
            except RegistryUnavailable as exc:
                if stopping is None:
                    raise
                if not said:
                    self.say(f"{exc}; waiting for it (the batch is held, nothing is lost)")
                    said = True
                if _sleep_unless(stopping, backoff):
                    return False
                backoff = min(backoff * 2, BACKOFF_MAX)
        if said:
            self.say(f"Schema Registry {self.registry.url} answers again")
        if schema is None:
            self._missing_ids[schema_id] = time.monotonic()
            return True
        try:
            self.codec.registry.add_id(schema_id, schema, family="registry")
        except TelemetryError as exc:  # not an Avro schema: the records that name it stay undecodable
            self.say(f"schema id {schema_id} of {self.registry.url} is not an Avro schema: {exc}")
            self._missing_ids[schema_id] = time.monotonic()
        return True

    # ------------------------------------------------------------------------------------ decoding

    def decode(self, value: bytes | None) -> dict[str, Any]:
        """The record in `value`, read as a local version (resolved into the newest when its writer is not one);
        `DecodeError` for anything else."""
        if value is None:
            raise EmptyMessageError("empty message (null value)")
        codec = self.codec
        if type(value) is bytes:  # the common cases, a local writer in either format: decode checks the header
            if value[2:HEADER_SIZE] in self._local and value[0] != 0:
                return codec.decode(value)
            if value[:CONFLUENT_HEADER_SIZE] in self._local_ids:
                return codec.decode(value)
        try:
            writer = codec.writer_of(value)
        except UnknownSchemaIdError as exc:
            if self.registry is None:
                raise UnknownSchemaIdError(
                    f"{exc.reason}: a Confluent-framed record, and no Schema Registry was given (--schema-registry)",
                    exc.schema_id,
                ) from None
            raise
        except UnknownSchemaError:
            if not self._read_schema_topic():
                raise
            writer = codec.writer_of(value)
        if writer.fingerprint in self._local:
            if confluent_schema_id(value) is not None:
                self._local_ids.add(value[:CONFLUENT_HEADER_SIZE])
            return codec.decode(value)
        return codec.decode(value, reader=codec.latest)

    def _read_schema_topic(self) -> bool:
        """Register the schema topic's schemas (at most every `min_interval` s); False when not read now."""
        now = time.monotonic()
        if self.schema_topic is None or now - self._topic_read_at < self.min_interval:
            return False
        self._topic_read_at = now
        for offset, value in self.schema_topic():
            if value is None:
                continue
            try:
                self.codec.registry.register(value, family="fetched")
            except TelemetryError as exc:
                self.say(f"schema topic offset {offset}: not a schema ({exc})")
        return True


def schema_topic_values(config: dict[str, Any], topic: str) -> Callable[[], list[tuple[int, bytes | None]]]:
    """A reader of the schema topic's (offset, value) pairs, every partition to its end (none when the topic
    is missing)."""

    def read() -> list[tuple[int, bytes | None]]:
        from confluent_kafka import TopicPartition

        from kafka_io import partition_count, read_to_end

        count = partition_count(config, topic)
        if not count:
            return []
        partitions = [TopicPartition(topic, p) for p in range(count)]
        return [(message.offset(), message.value()) for message in read_to_end(config, partitions)]

    return read


def _sleep_unless(stopping: Callable[[], bool], seconds: float) -> bool:
    """Sleep `seconds` in small steps; True as soon as `stopping()` is."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if stopping():
            return True
        time.sleep(min(0.1, seconds))
    return stopping()
