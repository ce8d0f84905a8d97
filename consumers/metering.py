"""What a `TransactionalRunner` does, told to its `consumers.metrics.ConsumerMetrics`.

The runner holds a `RunnerMeter` only when it has metrics (none: no call, no cost). The meter wraps the
runner's core in a `MeteredCore`, which forwards every call and notes, for the open transaction, what
the core saw and gave: the valid records' `timestamp_ms`, the dead letters by rule (outputs to the DLQ
topic, with the rejection's rule), the alert records (outputs to the alerts topic, read back for their
rule, severity, run and state). The runner calls `begin` before a transaction, `committed` after its
commit, and `tick` once per loop; what an aborted transaction noted is dropped by the next `begin`, as
its batch is consumed again. Outcome counts are the differences of the runner's own counters
(`RunnerCounts`) across the transaction.

Lag, at most once a second (`LAG_INTERVAL`), per assigned partition:
- records: the partition's high watermark as last fetched (`get_watermark_offsets(cached=True)`, no
  request) minus the consumer's position; before the consumer has returned any message of the partition
  its position is unknown, and its committed offset (asked once per assignment) stands in;
- seconds: 0 when the records lag is 0; else now minus the Kafka timestamp of the last record consumed
  from the partition (the group is at least that far behind its writers); unknown (no series) until a
  record of the partition has been consumed.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from avro_schemas.codec import alert_codec
from avro_schemas.errors import TelemetryError
from avro_schemas.topics import ALERTS_TOPIC, DLQ_TOPIC

from .metrics import ConsumerMetrics

__all__ = ["LAG_INTERVAL", "MeteredCore", "RunnerMeter"]

LAG_INTERVAL = 1.0
"""Seconds between lag updates (Prometheus scrapes every few seconds at most)."""
COMMITTED_TIMEOUT = 10.0

Deadline = Callable[[str, float], AbstractContextManager[None]]
"""The runner's `_deadline(what, timeout)`: the call inside must return in time (its watchdog)."""


class MeteredCore:
    """A `ConsumerCore` that notes, for the meter, what it saw and gave in the open transaction."""

    def __init__(self, core: Any, metrics: ConsumerMetrics) -> None:
        self.inner = core
        self.needs_model = core.needs_model  # read per record: a plain attribute, not through __getattr__
        self._metrics = metrics
        self.reset()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)  # not set yet (copy, pickle)
        return getattr(self.inner, name)  # group, output_topics, needs_model, on_idle, topic_configs, ...

    def reset(self) -> None:
        """Forget what the transaction noted so far (a new one begins)."""
        self.newest_ms = -1
        self.dead_letters: Tally[str] = Tally()
        self.alert_values: list[bytes] = []

    def on_record(self, record: Any, verdict: Any) -> list[Any]:
        timestamp_ms = verdict.record["timestamp_ms"]
        if timestamp_ms > self.newest_ms:
            self.newest_ms = timestamp_ms
        outputs = self.inner.on_record(record, verdict)
        if outputs:
            self.alert_values += [output.value for output in outputs if output.topic == ALERTS_TOPIC]
        return outputs

    def on_rejected(self, message: Any, rejection: Any) -> list[Any]:
        outputs = self.inner.on_rejected(message, rejection)
        if outputs:
            letters = sum(1 for output in outputs if output.topic == DLQ_TOPIC)
            if letters:
                self.dead_letters[rejection.rule] += letters
        return outputs

    def restore_run(self, run_id: str, state: Any) -> None:
        self.inner.restore_run(run_id, state)
        self._metrics.forget_run(run_id)
        for rule, severity in firing_rules(self.inner, run_id):
            self._metrics.alert_firing(run_id, rule, severity)

    def forget_run(self, run_id: str) -> None:
        self.inner.forget_run(run_id)
        self._metrics.forget_run(run_id)


def firing_rules(core: Any, run_id: str) -> list[tuple[str, str]]:
    """(rule, severity) of each rule firing now for `run_id` in a core that keeps alert rules (the watch
    group's `watch`, a `consumers.telemetry_watch.Watch`); none for the others."""
    watch = getattr(core, "watch", None)
    if watch is None:
        return []
    state = watch.run_state(run_id)
    if state is None:
        return []
    rules = watch.config
    return [(name, getattr(rules, name).severity) for name, entry in state["rules"].items() if entry.get("firing")]


class RunnerMeter:
    """The runner's side of its metrics: transactions, their outcomes, lag (see the module docstring)."""

    def __init__(
        self, metrics: ConsumerMetrics, core: Any, counts: Any, clock: Callable[[], float] = time.time,
        lag_interval: float = LAG_INTERVAL,
    ) -> None:
        self.metrics = metrics
        self.lag_interval = lag_interval
        self.core = MeteredCore(core, metrics)
        self._counts = counts
        self._clock = clock
        self._alert_codec = alert_codec() if any(topic == ALERTS_TOPIC for topic in core.output_topics) else None
        self._began_at = 0.0
        self._counted = (0, 0, 0)
        self._last_timestamp_ms: dict[tuple[str, int], int] = {}  # last record consumed, Kafka timestamp
        self._committed: dict[tuple[str, int], int] = {}  # committed offsets, for partitions not consumed yet
        self._lag_at = -1e9

    # ------------------------------------------------------------------------------------ transactions

    def begin(self) -> None:
        """A transaction begins: what the previous one noted, if it did not commit, is dropped."""
        self.core.reset()
        counts = self._counts
        self._counted = (counts.processed, counts.rejected, counts.duplicates)
        self._began_at = time.perf_counter()

    def committed(self, messages: list[Any] | None = None, partitions: int = 0) -> None:
        """The transaction committed, holding `messages` (from `partitions` input partitions)."""
        metrics = self.metrics
        metrics.observe_transaction(time.perf_counter() - self._began_at)
        counts = self._counts
        valid, invalid, duplicate = self._counted
        metrics.count_records(counts.processed - valid, counts.rejected - invalid, counts.duplicates - duplicate)
        core = self.core
        for rule, letters in core.dead_letters.items():
            metrics.count_dead_letters(rule, letters)
        if core.newest_ms >= 0:
            metrics.saw_record_timestamp(core.newest_ms)
        for value in core.alert_values:
            self._alert(value)
        if messages:
            self._note_last_timestamps(messages, partitions)
        core.reset()

    def _alert(self, value: bytes) -> None:
        try:
            alert = self._alert_codec.decode(value)
        except (TelemetryError, AttributeError):
            return  # not an Alert record: nothing to count
        self.metrics.alert_transition(alert["run_id"], alert["rule"], alert["severity"], alert["state"])

    def _note_last_timestamps(self, messages: list[Any], partitions: int) -> None:
        """The Kafka timestamp of the last message of each of the batch's `partitions` (read from its end)."""
        found: set[tuple[str, int]] = set()
        for message in reversed(messages):
            key = (message.topic(), message.partition())
            if key in found or message.error() is not None:
                continue
            found.add(key)
            timestamp_ms = message.timestamp()[1]
            if timestamp_ms >= 0:  # -1: the message has none
                self._last_timestamp_ms[key] = timestamp_ms
            if len(found) == partitions:
                break

    # ------------------------------------------------------------------------------------ lag

    def tick(self, consumer: Consumer | None, deadline: Deadline) -> None:
        """Update the lag gauges if `lag_interval` seconds have passed since the last update."""
        now = time.monotonic()
        if consumer is None or now - self._lag_at < self.lag_interval:
            return
        self._lag_at = now
        try:
            self._update_lag(consumer, deadline)
        except KafkaException:
            pass  # the client is in trouble: the runner says so; the lag waits for the next tick

    def _update_lag(self, consumer: Consumer, deadline: Deadline) -> None:
        assignment = consumer.assignment()
        assigned = {(tp.topic, tp.partition) for tp in assignment}
        for topic, partition in self.metrics.lag_partitions - assigned:
            self.metrics.drop_lag(topic, partition)
        for kept in (self._committed, self._last_timestamp_ms):
            for key in [k for k in kept if k not in assigned]:
                del kept[key]
        if not assignment:
            return
        positions = {(tp.topic, tp.partition): tp.offset for tp in consumer.position(assignment)}
        unknown = [
            TopicPartition(*key) for key, offset in positions.items() if offset < 0 and key not in self._committed
        ]
        if unknown:
            self._read_committed(consumer, unknown, deadline)
        wall = self._clock()
        for tp in assignment:
            key = (tp.topic, tp.partition)
            position = positions.get(key, -1)
            if position < 0:
                position = self._committed.get(key, -1)
            low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:
                continue  # nothing fetched yet
            if position < 0:
                position = low  # no committed offset: the group starts from the earliest
            records = max(0, high - position)
            seconds = 0.0 if records == 0 else self._age(key, wall)
            self.metrics.set_lag(tp.topic, tp.partition, records, seconds)

    def _age(self, key: tuple[str, int], wall: float) -> float | None:
        timestamp_ms = self._last_timestamp_ms.get(key)
        return None if timestamp_ms is None else max(0.0, wall - timestamp_ms / 1000.0)

    def _read_committed(self, consumer: Consumer, partitions: list[TopicPartition], deadline: Deadline) -> None:
        try:
            with deadline("committed offsets for the lag", COMMITTED_TIMEOUT):
                committed = consumer.committed(partitions, timeout=COMMITTED_TIMEOUT)
        except KafkaException:
            return  # asked again at the next tick
        for tp in committed:
            self._committed[(tp.topic, tp.partition)] = tp.offset
