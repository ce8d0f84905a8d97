"""Exactly-once checks of the integration tests: the input as sent, what the pure cores say each group
must write for it, the output topics compared with that, and a group's committed progress.

The verifier reads every output topic read_committed from the beginning and compares it, run by run and
in order, with what the pure cores compute directly from the same input messages (`validate_record` +
`StreamTracker` for the dead letters and the dedupe, `DriftTracker.observe`, `Watch.observe`): an output
written twice or never fails the comparison. The drift group's idle summaries come when a run has been
quiet for a while, so their timing is not the records' to decide: each must equal the core's summary as
of the record it names, none may repeat an idle period (same record), and each run's last output is the
summary of its whole stream.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from avro_schemas.codec import alert_codec, drift_record_codec, epoch_summary_codec
from avro_schemas.errors import DecodeError
from avro_schemas.models import EpochSummary
from avro_schemas.topics import ALERTS_TOPIC, DLQ_TOPIC, DRIFT_TOPIC, EPOCHS_TOPIC, VERSION_HEADER
from consumers.drift import Baseline, DriftTracker
from consumers.telemetry_watch import Watch, load_rules
from consumers.validator import StreamTracker, validate_record
from kafka_io import quiet_logger
from kafka_testing import read_topic
from producer.kafka_sink import KafkaSink

__all__ = [
    "PARTITIONS", "WATCH_RULES", "Backlog", "Expected", "GroupOffsets", "backlog_on_topic", "drift_summaries_out",
    "expected_outputs", "interleaved", "murmur2_partition", "owned_partitions", "run_ids_on_partitions", "verify_outputs",
    "with_faults",
]

PARTITIONS = 3  # of the epochs topic, as the sink creates it
# fast alert rules: many transitions in short synthetic runs (the defaults wait for ~5 cycles of history)
WATCH_RULES = Path(__file__).with_name("watch_rules.toml")


def murmur2_partition(key: bytes, partitions: int = PARTITIONS) -> int:
    """The partition Kafka's default (murmur2) partitioner picks for `key`, as the sink's producer does."""
    m, h = 0x5BD1E995, 0x9747B28C ^ len(key)
    whole = len(key) & ~3
    for i in range(0, whole, 4):
        k = int.from_bytes(key[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        h = ((h * m) & 0xFFFFFFFF) ^ ((k * m) & 0xFFFFFFFF)
    tail = key[whole:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = ((h ^ tail[0]) * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions



@dataclass
class Backlog:
    """Input messages (key, value) in send order, and where each one landed once sent."""

    messages: list[tuple[bytes, bytes]] = field(default_factory=list)
    placed: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset) per message

    def send(self, config: dict[str, Any], messages: list[tuple[bytes, bytes]]) -> None:
        """Produce `messages` in order (one idempotent producer: each run's order is kept) and note where."""
        KafkaSink(config).close()  # the epochs and schema topics exist, as a real producer makes them
        producer = Producer({**config, "enable.idempotence": True, "partitioner": "murmur2_random", "linger.ms": 5})
        placed: list[tuple[int, int] | None] = [None] * len(messages)

        def delivered(index: int):
            def report(err, msg) -> None:
                assert err is None, f"message {index} not delivered: {err}"
                placed[index] = (msg.partition(), msg.offset())
            return report

        for index, (key, value) in enumerate(messages):
            while True:
                try:
                    producer.produce(EPOCHS_TOPIC, key=key, value=value, headers=[(VERSION_HEADER, b"1.1")],
                                     on_delivery=delivered(index))
                    break
                except BufferError:
                    producer.poll(0.1)
        assert producer.flush(60) == 0
        assert all(p is not None for p in placed)
        for (key, _), (partition, _) in zip(messages, placed):
            assert partition == murmur2_partition(key), "the test's murmur2 disagrees with the producer's"
        self.messages += messages
        self.placed += placed



@dataclass
class Expected:
    """What each group must have written for the test's runs, computed by the pure cores."""

    dead: dict[tuple[int, int], tuple[str, bytes]]  # (partition, offset) -> (error.stage, bytes) to dead-letter
    drift: dict[bytes, list[dict[str, Any]]]  # the verdict changes
    alerts: dict[bytes, list[dict[str, Any]]]
    # per run, the drift summary as of each of its records (by log_stream_offset), and its last offset
    drift_summaries: dict[bytes, dict[int, dict[str, Any]]] = field(default_factory=dict)


def expected_outputs(backlog: Backlog, baseline: Baseline | None, rules: Path = WATCH_RULES) -> Expected:
    """Decode, validate, dedupe and run the cores (the watch core with `rules`) over the messages in send
    order (per run: Kafka's)."""
    codec = epoch_summary_codec()
    tracker, watch = StreamTracker(), Watch(load_rules(rules))
    drift_tracker = DriftTracker(baseline) if baseline is not None else None
    summaries: dict[bytes, dict[int, dict[str, Any]]] = defaultdict(dict)
    dead: dict[tuple[int, int], tuple[str, bytes]] = {}
    drift: dict[bytes, list[dict[str, Any]]] = defaultdict(list)
    alerts: dict[bytes, list[dict[str, Any]]] = defaultdict(list)
    for (key, value), where in zip(backlog.messages, backlog.placed):
        try:
            decoded = codec.decode(value)
        except DecodeError:
            dead[where] = ("decode", value)
            continue
        verdict = tracker.check(validate_record(decoded))
        if verdict.status == "invalid":
            dead[where] = ("validate", value)
        if verdict.status != "valid":
            continue
        record = EpochSummary.from_dict(verdict.record)
        alerts[key] += [t.to_avro_dict() for t in watch.observe(record)]
        if drift_tracker is not None and record.run_id not in baseline.run_ids:
            change = drift_tracker.observe(verdict.record)
            if change is not None:
                drift[key].append(change.to_record_dict())
            offset = record.log_stream_offset
            summaries[key][offset] = drift_tracker.summary(record.run_id).to_record_dict("summary")
    return Expected(dead, dict(drift), dict(alerts), dict(summaries))


def verify_outputs(config: dict[str, Any], keys: set[bytes], expected: Expected, groups: tuple[str, ...]) -> None:
    """Every output topic read_committed from the beginning holds exactly the expected outputs, in order."""
    if "validate" in groups:
        dead = [(dict(m.headers()), m.value()) for m in read_topic(config, DLQ_TOPIC, keys)]
        sources = [(int(h["source.partition"]), int(h["source.offset"])) for h, _ in dead]
        assert len(sources) == len(set(sources)), f"dead letters written twice: {sorted(sources)}"
        got, wanted = set(sources), set(expected.dead)
        assert got == wanted, f"missing {sorted(wanted - got)}, unexpected {sorted(got - wanted)}"
        for source, (headers, value) in zip(sources, dead):
            assert (headers["error.stage"].decode(), value) == expected.dead[source], source
            assert headers["source.topic"] == EPOCHS_TOPIC.encode()
    for group, topic, codec, wanted in (
        ("drift", DRIFT_TOPIC, drift_record_codec(), expected.drift),
        ("watch", ALERTS_TOPIC, alert_codec(), expected.alerts),
    ):
        if group not in groups:
            continue
        got: dict[bytes, list[dict[str, Any]]] = defaultdict(list)
        for message in read_topic(config, topic, keys):
            got[message.key()].append(codec.decode(message.value()))
        if group == "drift":
            got = verify_drift_summaries(got, expected.drift_summaries)
        for key in keys:
            assert got.get(key, []) == wanted.get(key, []), (
                f"{topic} for run {key.decode()}: {len(got.get(key, []))} outputs, "
                f"expected {len(wanted.get(key, []))}"
            )


def verify_drift_summaries(
    got: dict[bytes, list[dict[str, Any]]], summaries: dict[bytes, dict[int, dict[str, Any]]]
) -> dict[bytes, list[dict[str, Any]]]:
    """Check each run's idle summaries (see the module docstring); the verdict changes, for comparison."""
    changes: dict[bytes, list[dict[str, Any]]] = defaultdict(list)
    for key, outputs in got.items():
        expected = summaries.get(key, {})
        offsets = [r["log_stream_offset"] for r in outputs if r["kind"] == "summary"]
        assert offsets == sorted(set(offsets)), f"drift summaries of {key.decode()} repeat an idle period: {offsets}"
        for record in outputs:
            if record["kind"] == "summary":
                assert record == expected[record["log_stream_offset"]], f"summary of {key.decode()}"
            else:
                changes[key].append(record)
        if expected:
            assert outputs[-1] == expected[max(expected)], f"{key.decode()} does not end with its whole summary"
    return changes



class GroupOffsets:
    """A consumer group's committed offsets on the epochs topic (read without joining the group)."""

    def __init__(self, config: dict[str, Any], group: str) -> None:
        # read_uncommitted: the offset fetch does not ask for stable offsets, so it answers at once with
        # the last committed ones instead of waiting out a killed instance's open transaction
        self._consumer = Consumer({
            **config, "group.id": group, "enable.auto.commit": False, "isolation.level": "read_uncommitted",
            "logger": quiet_logger(),  # a probe: the broker going away during outage tests is expected
        })
        self._partitions = [TopicPartition(EPOCHS_TOPIC, p) for p in range(PARTITIONS)]

    def _fetch_committed(self, timeout: float = 30.0) -> list[TopicPartition]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._consumer.committed(self._partitions, timeout=10)
            except KafkaException as exc:
                # on a fresh broker the group's coordinator is still being elected or loaded: ask again
                error = exc.args[0]
                if not (error.retriable() or error.code() in _COORDINATOR_SETTLING) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def committed(self) -> dict[int, int]:
        """Per partition, the next offset the group will process (the start of the log when none)."""
        return {
            tp.partition: tp.offset if tp.offset >= 0 else self._consumer.get_watermark_offsets(tp, timeout=30)[0]
            for tp in self._fetch_committed()
        }

    def ends(self) -> dict[int, int]:
        """Per partition, the end of the epochs topic."""
        return {
            tp.partition: self._consumer.get_watermark_offsets(tp, timeout=30)[1] for tp in self._partitions
        }

    def lag(self) -> int:
        """Messages of the epochs topic the group has not yet committed."""
        committed, ends = self.committed(), self.ends()
        return sum(ends[p] - committed[p] for p in ends)

    def close(self) -> None:
        self._consumer.close()


_COORDINATOR_SETTLING = {
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
}



def drift_summaries_out(config: dict[str, Any], expected: Expected) -> bool:
    """Whether every run's last drift output is a summary of its last record (the wait before comparing)."""
    codec = drift_record_codec()
    last: dict[bytes, dict[str, Any]] = {}
    for message in read_topic(config, DRIFT_TOPIC, set(expected.drift_summaries)):
        last[message.key()] = codec.decode(message.value())
    return all(
        last.get(key, {}).get("kind") == "summary" and last[key]["log_stream_offset"] == max(summaries)
        for key, summaries in expected.drift_summaries.items()
    )


def backlog_on_topic(config: dict[str, Any], keys: set[bytes]) -> Backlog:
    """The messages of `keys` on the epochs topic, as a `Backlog` in the order they are consumed (a run's
    messages in their partition's offset order): the input a producer of its own, such as `train`, sent."""
    backlog = Backlog()
    for message in read_topic(config, EPOCHS_TOPIC, keys):
        backlog.messages.append((message.key(), message.value()))
        backlog.placed.append((message.partition(), message.offset()))
    return backlog


def run_ids_on_partitions(unique_run_id, tag: str, partitions: list[int]) -> list[str]:
    """Fresh run ids whose records land on `partitions` (one id per entry, in that order)."""
    ids = []
    for partition in partitions:
        while murmur2_partition((run_id := unique_run_id(tag)).encode()) != partition:
            pass
        ids.append(run_id)
    return ids


def with_faults(records: list[dict[str, Any]], seed: int) -> list[bytes]:
    """A run's messages as a real topic suffers them: garbage, truncated and NaN messages, re-sends."""
    codec = epoch_summary_codec()
    rng = random.Random(seed)
    payloads = []
    for index, record in enumerate(records):
        payloads.append(codec.encode(record))
        if index % 37 == 11:
            kind = (index // 37) % 3
            if kind == 0:
                payloads.append(b"\x07garbage " + str(index).encode())  # wrong header: decode stage
            elif kind == 1:
                payloads.append(codec.encode(record)[:14])  # truncated body: decode stage
            else:
                payloads.append(codec.encode(dict(record, policy_loss=math.nan)))  # validate stage
        if index % 53 == 20:
            back = rng.randint(1, 6)  # re-sent records: duplicates by log_stream_offset, no output
            payloads += [codec.encode(r) for r in records[index - back:index + 1]]
    return payloads


def interleaved(runs: dict[str, list[bytes]]) -> list[tuple[bytes, bytes]]:
    """The runs' messages round-robin, as concurrent runs share a topic."""
    queues = {run_id.encode(): list(reversed(payloads)) for run_id, payloads in runs.items()}
    out = []
    while any(queues.values()):
        for key, queue in queues.items():
            if queue:
                out.append((key, queue.pop()))
    return out


def owned_partitions(log: str) -> set[int]:
    """The partitions a consumer holds now, replaying its 'assigned' and 'gave up' log lines."""
    owned: set[int] = set()
    for verb, numbers in re.findall(r"(assigned|gave up) partitions \[([\d, ]*)\]", log):
        changed = {int(n) for n in numbers.split(",") if n.strip()}
        owned = owned | changed if verb == "assigned" else owned - changed
    return owned
