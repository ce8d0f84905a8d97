"""Thin wrappers over confluent-kafka shared by the producer and the consumers.

Topic set-up (`ensure_topics`, `partition_count`, `max_message_bytes`), reading partitions to their end
(`read_to_end`, stepping over record batches the client cannot read: `unreadable_batch_end`), the
librdkafka log routing (`quiet_logger`) and one-line error text (`reason`). Layers as Quix Streams has them: these wrappers at the bottom, serialisation in `avro_schemas`, the sink and the runner above.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from avro_schemas.errors import TelemetryError

__all__ = [
    "KafkaIOError", "UNREADABLE", "ensure_topics", "kafka_error", "max_message_bytes", "partition_count", "quiet_logger",
    "read_to_end", "reason", "replication_for", "unreadable_batch_end",
]

# Consume errors about a record batch the client cannot read: one it cannot decompress (corrupt, or larger
# than `receive.message.max.bytes` once decompressed) or a corrupt one. librdkafka reports such a batch at
# its base offset at every fetch from inside it, so a reader that does not seek past it stands still.
UNREADABLE = (KafkaError._BAD_COMPRESSION, KafkaError._BAD_MSG)


class KafkaIOError(TelemetryError):
    """Kafka cannot be reached, a topic cannot be set up, or a partition cannot be read to its end."""


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The `KafkaError` a confluent-kafka exception carries (None when it carries none)."""
    return exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None


def reason(exc: BaseException) -> str:
    """The one-line text of a confluent-kafka exception."""
    error = kafka_error(exc)
    return error.str() if error is not None else str(exc)


def quiet_logger() -> logging.Logger:
    """librdkafka's log lines (transient retries, mostly): dropped unless the application configures
    this logger. Errors that matter surface as delivery errors or through `error_cb`."""
    logger = logging.getLogger("ppo_telemetry.librdkafka")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
    return logger


def group_consumer_config(config: dict[str, Any], group_id: str, session_timeout_ms: int) -> dict[str, Any]:
    """A consumer group member's settings as every group here runs them: offsets committed by hand (in a
    transaction or after the work is done), from the earliest on a new group, only committed records
    read, and a session whose heartbeat is a fifth of it (at least 100 ms)."""
    return {
        **config,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(100, session_timeout_ms // 5),
        "logger": quiet_logger(),
    }


def replication_for(brokers: int) -> tuple[int, dict[str, str]]:
    """The replication factor and topic config of a new topic on a cluster of `brokers` live brokers:
    three replicas and `min.insync.replicas=2` from three brokers on (with `acks=all` a write is on two
    brokers before it is acknowledged, and one broker may be down); fewer brokers, one replica each."""
    if brokers >= 3:
        return 3, {"min.insync.replicas": "2"}
    return max(brokers, 1), {}


def ensure_topics(config: dict[str, Any], topics: dict[str, tuple[int, dict[str, str]]], timeout: float = 30.0) -> None:
    """Create missing topics: name -> (partitions, topic config); existing ones are left as they are.

    Their replication follows the live broker count (`replication_for`); the topic config given wins."""
    admin = AdminClient({**config, "logger": quiet_logger()})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaIOError(f"cannot reach Kafka at {config.get('bootstrap.servers')}: {reason(exc)}") from None
    existing = set(metadata.topics)
    replicas, replication_config = replication_for(len(metadata.brokers))
    missing = [
        NewTopic(name, num_partitions=partitions, replication_factor=replicas,
                 config={**replication_config, **topic_config})
        for name, (partitions, topic_config) in topics.items()
        if name not in existing
    ]
    if not missing:
        return
    for name, future in admin.create_topics(missing, operation_timeout=timeout, request_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args and isinstance(exc.args[0], KafkaError) and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise KafkaIOError(f"cannot create topic {name}: {reason(exc)}") from None
    # a new topic reaches every broker's metadata a moment after its creation returns
    deadline = time.monotonic() + timeout
    wanted = {topic.topic for topic in missing}
    while True:
        listed = admin.list_topics(timeout=timeout).topics
        if all(name in listed and listed[name].partitions and listed[name].error is None for name in wanted):
            return
        if time.monotonic() > deadline:
            raise KafkaIOError(f"topics {sorted(wanted)} were created but did not appear within {timeout:.0f} s")
        time.sleep(0.1)


def partition_count(config: dict[str, Any], topic: str, timeout: float = 30.0) -> int | None:
    """How many partitions `topic` has (None when it does not exist)."""
    admin = AdminClient({**config, "logger": quiet_logger()})
    try:
        metadata = admin.list_topics(topic=topic, timeout=timeout)
    except KafkaException as exc:
        raise KafkaIOError(f"cannot reach Kafka at {config.get('bootstrap.servers')}: {reason(exc)}") from None
    info = metadata.topics.get(topic)
    if info is None or info.error is not None:
        return None
    return len(info.partitions)


def max_message_bytes(config: dict[str, Any], topics: Iterable[str], timeout: float = 30.0) -> dict[str, int]:
    """Each topic's `max.message.bytes` as the broker applies it (its own setting or the broker default):
    the largest record batch, after compression, the topic accepts."""
    admin = AdminClient({**config, "logger": quiet_logger()})
    pending = [ConfigResource(ResourceType.TOPIC, topic) for topic in topics]
    limits = {}
    deadline = time.monotonic() + timeout
    while pending:
        unknown = []
        for resource, future in admin.describe_configs(pending, request_timeout=timeout).items():
            try:
                limits[resource.name] = int(future.result()["max.message.bytes"].value)
            except KafkaException as exc:
                # on a cluster, a topic just created reaches each broker's metadata a moment apart: the
                # broker asked may not know it yet
                error = kafka_error(exc)
                if error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART and time.monotonic() < deadline:
                    unknown.append(ConfigResource(ResourceType.TOPIC, resource.name))
                    continue
                raise KafkaIOError(f"cannot read the configuration of topic {resource.name}: {reason(exc)}") from None
        pending = unknown
        if pending:
            time.sleep(0.1)
    return limits


def _watermarks(consumer: Consumer, partition: TopicPartition, deadline: float) -> tuple[int, int]:
    """A partition's (low, high) watermarks, asked again while the broker says to retry (a leader moving
    or not yet elected: NOT_LEADER_FOR_PARTITION under load, or just after a broker restart)."""
    while True:
        try:
            return consumer.get_watermark_offsets(partition, timeout=max(1.0, deadline - time.monotonic()))
        except KafkaException as exc:
            error = kafka_error(exc)
            settling = error is not None and (error.retriable() or error.code() in _LEADER_SETTLING)
            if not settling or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


# Errors of a partition whose leader is moving or being elected: the client's metadata catches up.
_LEADER_SETTLING = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError._TRANSPORT,
})


def _reader(config: dict[str, Any]) -> Consumer:
    """A group-less `read_committed` consumer that reports each partition's end."""
    return Consumer({
        **config,
        "group.id": "ppo-telemetry-reader",  # required by the client; no offsets are committed
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": "read_committed",
        "logger": quiet_logger(),
    })


def read_to_end(config: dict[str, Any], partitions: Iterable[TopicPartition], timeout: float = 60.0) -> Iterator[Any]:
    """Every committed message of the given partitions, from their beginnings to their current ends.

    A group-less consumer, `read_committed`: the end of a partition is its last stable offset, so an
    open transaction (a zombie's) neither blocks nor leaks into what is read."""
    consumer = _reader(config)
    try:
        assignment = [TopicPartition(tp.topic, tp.partition, -2) for tp in partitions]  # -2: beginning
        pending = {(tp.topic, tp.partition) for tp in assignment}
        started = time.monotonic()
        for tp in assignment:
            low, high = _watermarks(consumer, tp, started + timeout)
            if high <= low:
                pending.discard((tp.topic, tp.partition))
        if not pending:
            return
        consumer.assign(assignment)
        deadline = time.monotonic() + timeout
        skipped: dict[tuple[str, int], int] = {}
        while pending:
            if time.monotonic() > deadline:
                raise KafkaIOError(f"reading {sorted(pending)} to its end took over {timeout:.0f} s")
            for message in consumer.consume(500, 0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard((message.topic(), message.partition()))
                        continue
                    if _skipped_unreadable(config, consumer, message, skipped):
                        continue
                    raise KafkaIOError(f"reading {message.topic()}: {error.str()}")
                yield message
    finally:
        consumer.close()


def _skipped_unreadable(config: dict[str, Any], consumer: Consumer, message: Any, skipped: dict[tuple[str, int], int]) -> bool:
    """Whether `message` reports a batch the client cannot read, now seeked past (`skipped`: per partition,
    the offset after the last one; reports fetched before that seek took effect are dropped)."""
    if message.error().code() not in UNREADABLE or message.offset() is None:
        return False
    where = (message.topic(), message.partition())
    if message.offset() >= skipped.get(where, 0):
        skipped[where] = unreadable_batch_end(config, *where, message.offset())
        consumer.seek(TopicPartition(*where, skipped[where]))
    return True


def _first_fetched(config: dict[str, Any], start: TopicPartition, timeout: float) -> tuple[int | None, int | None]:
    """(error code or None, offset) of the first thing a fresh reader gets from `start` (its offset set):
    a fresh one, so nothing fetched before can be mistaken for the answer."""
    consumer = _reader(config)
    try:
        consumer.assign([start])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in consumer.consume(1, 0.5):
                error = message.error()
                return (None if error is None else error.code()), message.offset()
        raise KafkaIOError(f"reading {start.topic} [{start.partition}] at offset {start.offset}: nothing in {timeout:.0f} s")
    finally:
        consumer.close()


def unreadable_batch_end(config: dict[str, Any], topic: str, partition: int, base: int, timeout: float = 30.0) -> int:
    """The offset after the record batch at `base` that the client cannot read (a fetch from any offset
    inside it reports `base`): found by fetching from offsets after `base`, the step doubled while still
    inside, then halved (2 log2(n) fetches for n records). `config` must be the reader's own: whether a
    batch can be read depends on its `receive.message.max.bytes`."""

    def inside(offset: int) -> bool:
        code, reported = _first_fetched(config, TopicPartition(topic, partition, offset), timeout)
        return code in UNREADABLE and reported == base

    inner, step = base, 1
    while inside(base + step):
        inner, step = base + step, step * 2
    outer = base + step
    while outer - inner > 1:
        middle = (inner + outer) // 2
        inner, outer = (middle, outer) if inside(middle) else (inner, middle)
    return outer
