"""Poison of any size never stops the validator group (issue 9): oversized, compressed, forged, fuzzed.

The fuzz test sends random values of random sizes up to the broker's limit (and compressible ones beyond
it, which the broker takes compressed), with four compression types, interleaved with valid runs, to a
validator running on a topic and group of its own; then checks every bad message is in the DLQ once
(whole, or cut with its length and sha256), every good one processed once, and the consumer never
stopped. `make test` runs a short version; `make soak` a long one (docs/performance.md).
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, ResourceType

from avro_schemas.codec import MAGIC, epoch_summary_codec
from avro_schemas.topics import DLQ_TOPIC, EPOCHS_TOPIC, SCHEMAS_TOPIC, VERSION_HEADER
from consumers.dead_letter import (
    DLQ_MAX_MESSAGE_BYTES, RECORD_BATCH_OVERHEAD, Rejection, SourceMessage, dead_letter, record_limit, record_size,
)
from consumers.groups import ValidatorGroup
from consumers.runner import TransactionalRunner
from kafka_io import ensure_topics, max_message_bytes, partition_count
from kafka_testing import read_topic, wait_for
from raw_headers import produce_with_raw_header
from ppo_telemetry.demo import synthetic_run

pytestmark = pytest.mark.integration

COMPRESSIONS = ("none", "lz4", "zstd", "gzip")
FORGED = [("error.rule", b"forged"), ("error.stage", b"none"), ("source.offset", b"-1"), ("original.error.rule", b"x")]
WRONG_HEADER = "wrong header: expected C3 01, got 00 00"  # the codec's reason for a value starting 00 00


@dataclass
class Sent:
    """One message of the fuzz stream, and where it landed."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    producer: str
    good: bool
    where: tuple[int, int] | None = None


@dataclass
class Fuzz:
    """The stream to send: runs of valid records and bad messages, interleaved."""

    topic: str
    sent: list[Sent] = field(default_factory=list)
    last_offsets: dict[str, int] = field(default_factory=dict)  # per run, the last log_stream_offset sent


def producers(config: dict[str, Any], input_limit: int) -> dict[str, Producer]:
    """One producer per compression type, taking single records as large as the topic does (librdkafka's
    default `message.max.bytes` is 1,000,000), and one whose records exceed that, compressed by zstd."""
    made = {
        name: Producer({**config, "compression.type": name, "message.max.bytes": input_limit - RECORD_BATCH_OVERHEAD,
                        "enable.idempotence": True, "partitioner": "murmur2_random"})
        for name in COMPRESSIONS
    }
    made["zstd-beyond"] = Producer({**config, "compression.type": "zstd", "message.max.bytes": 4 * input_limit,
                                    "enable.idempotence": True, "partitioner": "murmur2_random"})
    return made


def bad_message(rng: random.Random, keys: list[bytes], room: int, dlq_room: int) -> tuple[bytes | None, bytes | None, list, str]:
    """A random bad message: (key, value, headers, producer). `room`: the largest value the input topic
    takes uncompressed with this key and headers; `dlq_room`: the largest that goes to the DLQ whole."""
    key = rng.choice(keys + [None, rng.randbytes(rng.randint(1, 64))])
    headers = list(FORGED) if rng.random() < 0.3 else []
    room -= len(key or b"") + sum(len(n) + len(v) + 4 for n, v in headers)
    producer = rng.choice(COMPRESSIONS)
    kind = rng.choice(["random", "random", "random", "zeros", "boundary", "largest", "avro", "empty", "beyond"])
    if kind == "random":  # log-uniform sizes, from a few bytes to the largest
        value = rng.randbytes(int(room ** rng.random()))
    elif kind == "zeros":  # compressible: small on the wire, large in the DLQ
        value = bytes(int(room ** rng.random()))
    elif kind == "boundary":  # around the largest dead letter that still goes whole
        key, headers = keys[0], []
        value = b"\x00\x00" + rng.randbytes(dlq_room - 2 + rng.randint(-4, 4))
    elif kind == "largest":
        value = rng.randbytes(room)
    elif kind == "avro":  # a single-object header with a body that is not one
        value = MAGIC + epoch_summary_codec().latest.fingerprint + rng.randbytes(rng.randint(0, 4000))
    elif kind == "empty":
        value = rng.choice([b"", None])
    else:  # larger than the topic takes, accepted because it compresses below it
        value, producer = bytes(rng.randint(room + 1, 3 * room)), "zstd-beyond"
    return key, value, headers, producer


def fuzz_stream(seed: int, topic: str, runs: int, records: int, bad: int, input_limit: int) -> Fuzz:
    """`runs` runs of `records` valid records (each run through one producer, so in order) and `bad` bad
    messages, interleaved at random."""
    rng = random.Random(seed)
    codec = epoch_summary_codec()
    fuzz = Fuzz(topic)
    run_ids = [f"fuzz-{seed}-{uuid.uuid4().hex[:6]}-{n}" for n in range(runs)]
    keys = [run_id.encode() for run_id in run_ids]
    queues = {}
    for n, run_id in enumerate(run_ids):
        run = synthetic_run(run_id, records, seed=seed + n, unstable=False)
        fuzz.last_offsets[run_id] = run[-1]["log_stream_offset"]
        producer = COMPRESSIONS[n % len(COMPRESSIONS)]
        queues[run_id] = [Sent(run_id.encode(), codec.encode(r), [(VERSION_HEADER, b"1.1")], producer, True) for r in run]
    invalid = synthetic_run(f"fuzz-{seed}-invalid", bad, seed=seed, unstable=False)
    room = input_limit - RECORD_BATCH_OVERHEAD - record_size(b"", b"", [])
    dlq_room = dlq_value_room(keys[0], topic)
    slots = [run_id for run_id in run_ids for _ in range(records)] + [None] * bad
    rng.shuffle(slots)
    for run_id in slots:
        if run_id is not None:
            fuzz.sent.append(queues[run_id].pop(0))
        elif rng.random() < 0.1:  # decodes, but breaks a SPEC §2 rule
            record = dict(invalid.pop(), policy_loss=math.nan)
            fuzz.sent.append(Sent(record["run_id"].encode(), codec.encode(record), [], rng.choice(COMPRESSIONS), False))
        else:
            key, value, headers, producer = bad_message(rng, keys, room, dlq_room)
            fuzz.sent.append(Sent(key, value, headers, producer, False))
    return fuzz


def dlq_value_room(key: bytes, topic: str) -> int:
    """The largest value starting 00 00 that goes to the DLQ whole with `key`, no sender headers, from a
    3-digit offset of partition 0-2 (the size of `source.offset` varies with its digits: the boundary
    messages straddle it by a few bytes either way)."""
    letter = dead_letter(SourceMessage(topic, 0, 100, key, b"", ()), Rejection("decode", "wrong_header", WRONG_HEADER), 10**9)
    return record_limit(DLQ_MAX_MESSAGE_BYTES) - letter.size


def send(config: dict[str, Any], fuzz: Fuzz, input_limit: int) -> None:
    """Produce the stream in order, each message through its producer; note where each one landed."""
    made = producers(config, input_limit)
    failures = []

    def delivered(sent: Sent):
        def report(error, message):
            if error is not None:
                failures.append(error.str())
            else:
                sent.where = (message.partition(), message.offset())
        return report

    for sent in fuzz.sent:
        made[sent.producer].produce(fuzz.topic, key=sent.key, value=sent.value, headers=sent.headers, on_delivery=delivered(sent))
        made[sent.producer].poll(0)
    for producer in made.values():
        assert producer.flush(60) == 0
    assert not failures, failures[:3]


def start_validator(config: dict[str, Any], topic: str, group: str) -> tuple[TransactionalRunner, threading.Thread, dict, io.StringIO]:
    """The validator group's runner on `topic` as group `group`, in a thread (the same runner as
    `consume validate`, with a topic and group of its own so its counts are this test's alone)."""
    core = ValidatorGroup()
    core.group = group
    log = io.StringIO()
    runner = TransactionalRunner(config, core, instance_id="fuzz", input_topic=topic, err=log)
    ends: dict[int, int] = {}
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["code"] = runner.run(install_signals=False, idle_callback=lambda: ends and runner.stop_when_caught_up(ends))
        except Exception as exc:  # the test reports it: the consumer must never stop on its own
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return runner, thread, {"ends": ends, "outcome": outcome}, log


def end_offsets(config: dict[str, Any], topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**config, "group.id": "ppo-telemetry-test-probe"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                for p in range(partition_count(config, topic) or 0)}
    finally:
        consumer.close()


def check_dead_letters(config: dict[str, Any], fuzz: Fuzz) -> None:
    """Every bad message in the DLQ once, whole or cut (prefix, length, sha256); no good one; each fits."""
    limit = record_limit(max_message_bytes(config, [DLQ_TOPIC])[DLQ_TOPIC])
    letters = [m for m in read_topic(config, DLQ_TOPIC) if dict(m.headers()).get("source.topic") == fuzz.topic.encode()]
    sources = Counter((int(dict(m.headers())["source.partition"]), int(dict(m.headers())["source.offset"])) for m in letters)
    bad = {sent.where: sent for sent in fuzz.sent if not sent.good}
    assert [where for where, count in sources.items() if count > 1] == [], "dead-lettered twice"
    assert set(sources) == set(bad), f"missing {sorted(set(bad) - set(sources))[:5]}, unexpected {sorted(set(sources) - set(bad))[:5]}"
    for letter in letters:
        headers = letter.headers()
        sent = bad[(int(dict(headers)["source.partition"]), int(dict(headers)["source.offset"]))]
        check_letter(letter, headers, sent, limit)


def check_letter(letter: Any, headers: list, sent: Sent, limit: int) -> None:
    """One dead letter against what was sent."""
    named = dict(headers)
    assert [name for name, _ in headers].count("error.rule") == 1
    assert named["error.stage"] in (b"decode", b"validate")
    assert record_size(letter.key(), letter.value(), headers) <= limit
    for name, value in sent.headers:
        assert named["original." + name if name.startswith(("error.", "source.", "original.")) else name] == value
    whole = dead_letter(
        SourceMessage(named["source.topic"].decode(), *sent.where, sent.key, sent.value, sent.headers),
        Rejection(named["error.stage"].decode(), named["error.rule"].decode(), named["error.message"].decode()),
        10**9,
    )
    cut = named.get("source.value.truncated") == b"true"
    assert cut == (whole.size > limit)  # cut exactly when the whole would not have fitted
    if cut:
        assert sent.value.startswith(letter.value()) and len(letter.value()) < len(sent.value)
        assert named["source.value.length"] == str(len(sent.value)).encode()
        assert named["source.value.sha256"] == hashlib.sha256(sent.value).hexdigest().encode()
    else:
        assert letter.value() == sent.value
    assert letter.key() == sent.key


def check_processed(config: dict[str, Any], group: str, fuzz: Fuzz) -> None:
    """The group's committed state holds each run's last record: every valid record was processed."""
    import json

    state = {m.key().decode(): json.loads(m.value()) for m in read_topic(config, f"{group}.state") if m.value()}
    for run_id, last in fuzz.last_offsets.items():
        assert state[run_id]["last_log_stream_offset"] == last, run_id


def run_fuzz(config: dict[str, Any], seed: int, runs: int, records: int, bad: int) -> TransactionalRunner:
    """Start a validator on a fresh topic, send the fuzz stream to it while it runs, wait until it has
    consumed everything, and check its outputs; returns the runner (its counts)."""
    topic = f"ppo.telemetry.test.fuzz-{uuid.uuid4().hex[:8]}"
    group = f"ppo-telemetry-test-fuzz-{uuid.uuid4().hex[:8]}"
    ensure_topics(config, {topic: (3, {})})
    input_limit = max_message_bytes(config, [topic])[topic]
    fuzz = fuzz_stream(seed, topic, runs, records, bad, input_limit)
    runner, thread, control, log = start_validator(config, topic, group)
    wait_for(lambda: "assigned partitions" in log.getvalue() or not thread.is_alive(), 60, "the validator to join")
    send(config, fuzz, input_limit)
    assert thread.is_alive(), f"the validator stopped: {control['outcome']}\n{log.getvalue()}"
    control["ends"].update(end_offsets(config, topic))
    thread.join(300)
    assert not thread.is_alive(), "the validator did not catch up within 300 s"
    assert control["outcome"] == {"code": 0}, f"{control['outcome']}\n{log.getvalue()}"
    good = sum(sent.good for sent in fuzz.sent)
    counts = runner.counts
    assert (counts.processed, counts.rejected, counts.duplicates) == (good, len(fuzz.sent) - good, 0), log.getvalue()
    check_dead_letters(config, fuzz)
    check_processed(config, group, fuzz)
    return runner


def dlq_limit_setting(config: dict[str, Any]) -> Any:
    """The DLQ's `max.message.bytes` config entry (value and where it is set)."""
    resource = ConfigResource(ResourceType.TOPIC, DLQ_TOPIC)
    admin = AdminClient(config)  # kept alive until the answer is in
    return admin.describe_configs([resource])[resource].result()["max.message.bytes"]


def test_fuzzed_poison_of_any_size_is_dead_lettered_once_and_the_validator_never_stops(kafka_config):
    run_fuzz(kafka_config, seed=9, runs=4, records=50, bad=150)
    setting = dlq_limit_setting(kafka_config)  # the runner created the DLQ (or found it) with its limit set
    assert (setting.value, setting.source) == (str(DLQ_MAX_MESSAGE_BYTES), ConfigSource.DYNAMIC_TOPIC_CONFIG.value)


@pytest.mark.soak
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_soak_fuzzed_poison(kafka_config, seed):
    runner = run_fuzz(kafka_config, seed=seed, runs=8, records=250, bad=1000)
    print(f"seed {seed}: {runner.counts}")


def test_a_1_040_000_byte_value_the_largest_the_topic_takes_and_an_unreadable_header_leave_consume_validate_running(
    kafka_bootstrap, kafka_config, consumers, unique_run_id
):
    """The issue's repro through `ppo-telemetry consume validate`: it dead-letters both (the second cut to
    fit) with a forged header kept apart, a message whose header name is not UTF-8 (which the client
    cannot read) and one whose unknown writer schema sends it to a schema topic holding JSON nested past
    the parser's recursion limit; goes on to a valid record, and exits 0 on SIGTERM."""
    ensure_topics(kafka_config, {EPOCHS_TOPIC: (3, {})})
    limit = max_message_bytes(kafka_config, [EPOCHS_TOPIC])[EPOCHS_TOPIC]
    run_id = unique_run_id()
    key = run_id.encode()
    largest = limit - RECORD_BATCH_OVERHEAD - record_size(key, b"", FORGED)
    values = [random.randbytes(1_040_000), b"\x00" + random.randbytes(largest - 1)]
    producer = producers(kafka_config, limit)["none"]
    for value in values:
        producer.produce(EPOCHS_TOPIC, key=key, value=value, headers=FORGED)
    producer.produce(EPOCHS_TOPIC, key=key, value=epoch_summary_codec().encode(synthetic_run(run_id, 1, 3, False)[0]))
    assert producer.flush(60) == 0
    raw_key = key + b"-raw"
    produce_with_raw_header(kafka_bootstrap, EPOCHS_TOPIC, raw_key, b"\x00garbage", b"name\xff\xfe", b"v")
    schema_key = key + b"-schema"
    producer.produce(SCHEMAS_TOPIC, key=schema_key, value=b"[" * 100_000 + b"]" * 100_000)
    producer.produce(EPOCHS_TOPIC, key=schema_key, value=MAGIC + b"\x07" * 8 + b"\x00")
    assert producer.flush(60) == 0
    validator = consumers("validate")
    letters = wait_for(lambda: (found := read_topic(kafka_config, DLQ_TOPIC, {key})) and len(found) >= 2 and found,
                       120, "two dead letters")
    assert validator.process.poll() is None, validator.log()
    assert [m.value() for m in letters][0] == values[0]
    cut = dict(letters[1].headers())
    assert values[1].startswith(letters[1].value()) and cut["source.value.truncated"] == b"true"
    assert cut["source.value.sha256"] == hashlib.sha256(values[1]).hexdigest().encode()
    for letter in letters:
        headers = dict(letter.headers())
        assert headers["error.rule"] == b"wrong_header" and headers["original.error.rule"] == b"forged"
        assert headers["source.offset"] != b"-1" and headers["original.source.offset"] == b"-1"
    unreadable = wait_for(lambda: read_topic(kafka_config, DLQ_TOPIC, {raw_key}), 60, "the unreadable header's dead letter")
    assert unreadable[0].value() == b"\x00garbage"
    assert dict(unreadable[0].headers())["source.headers.unreadable"] == b"true"
    unknown = wait_for(lambda: read_topic(kafka_config, DLQ_TOPIC, {schema_key}), 60, "the unknown schema's dead letter")
    assert dict(unknown[0].headers())["error.rule"] == b"unknown_schema"
    assert validator.process.poll() is None, validator.log()
    assert validator.terminate() == 0, validator.log()
    assert "fatal" not in validator.log() and "stopped after" in validator.log()
