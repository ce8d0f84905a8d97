"""Throughput of the validator consumer group on a backlog, beside a plain consumer + fastavro ceiling.

A backlog of `--records` (1,000,000) EpochSummary v1.1 messages on a topic of its own: `--runs` (1,000)
runs written epoch by epoch, interleaved as concurrent training runs write them, each run's
`log_stream_offset` contiguous from 0, key `run_id`, header `telemetry_version`. The records are
`ppo_telemetry.demo.synthetic_run`s encoded once with the project's codec (4 template runs x epochs,
with a placeholder run id the same length as the real ones, swapped in per run), produced by a plain
confluent_kafka Producer (lz4, large batches). Then, in the same run:

- ceiling: a plain confluent_kafka Consumer (assigned, `consume(1000)`, read_committed) reading the
  whole backlog and decoding each value with `fastavro.schemaless_reader` after the 10-byte header;
  measured before and after the group, the faster of the two is the ceiling;
- the group: `TransactionalRunner(config, ValidatorGroup(), input_topic=..., batch_size=...)` in this
  process, from its first record to the commit of the transaction holding its last one: decode,
  validate, dedupe, one transaction per batch with the touched runs' state and the input offsets.

Targets (issue 4): the group at >= 50,000 records/s and >= 40 % of the ceiling. The broker is a fresh
local KRaft broker on port 29192 (removed afterwards) unless `KAFKA_BOOTSTRAP_SERVERS` is set.

    .venv/bin/python bench/kafka_validator.py [--records 1000000] [--runs 1000] [--batch-size N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import threading
import time
import uuid
from io import BytesIO
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from fastavro import schemaless_reader

sys.path.insert(0, str(Path(__file__).resolve().parent))

from avro_schemas import HEADER_SIZE, epoch_summary_codec  # noqa: E402
from avro_schemas.topics import VALIDATOR_GROUP, VERSION_HEADER  # noqa: E402
from bench_broker import DEFAULT_PORT, bench_bootstrap  # noqa: E402
from consumers.groups import ValidatorGroup  # noqa: E402
from consumers.runner import TransactionalRunner  # noqa: E402
from kafka_io import ensure_topics, partition_count  # noqa: E402
from consumers.validator import Validator  # noqa: E402
from ppo_telemetry.demo import synthetic_run  # noqa: E402

TEMPLATE_RUNS = 4
TARGET_RATE = 50_000
TARGET_RATIO = 0.40


def backlog_values(records: int, runs: int, tag: str) -> tuple[list[bytes], list[bytes]]:
    """(keys, values) of the backlog, epoch-major: epoch 0 of every run, then epoch 1, ... `records` in all."""
    epochs = -(-records // runs)
    codec = epoch_summary_codec()
    run_ids = [f"bench-{tag}-{r:05d}" for r in range(runs)]
    placeholder = f"bench-{'X' * len(tag)}-XXXXX"
    assert all(len(r) == len(placeholder) for r in run_ids)
    templates = []
    for t in range(TEMPLATE_RUNS):
        encoded = []
        validator = Validator()
        for record in synthetic_run(placeholder, epochs, seed=t, unstable=False):
            assert validator.validate(dict(record)).status == "valid"
            data = codec.encode(record)
            assert data.count(placeholder.encode()) == 1  # the run id is swapped in by bytes.replace
            encoded.append(data)
        templates.append(encoded)
    old = placeholder.encode()
    keys, values = [], []
    for epoch in range(epochs):
        for r, run_id in enumerate(run_ids):
            if len(values) == records:
                break
            key = run_id.encode()
            keys.append(key)
            values.append(templates[r % TEMPLATE_RUNS][epoch].replace(old, key))
    return keys, values


def produce_backlog(config: dict, topic: str, keys: list[bytes], values: list[bytes]) -> float:
    """Produce the backlog as fast as a plain producer can; returns the seconds it took."""
    producer = Producer({
        **config,
        "linger.ms": 100,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 2_000_000,
        "queue.buffering.max.kbytes": 2_097_151,
        "partitioner": "murmur2_random",
        "acks": "all",
    })
    headers = [(VERSION_HEADER, b"1.1")]
    produce = producer.produce
    started = time.perf_counter()
    for key, value in zip(keys, values):
        while True:
            try:
                produce(topic, value, key, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(120)
    if remaining:
        raise SystemExit(f"{remaining} backlog messages not delivered")
    return time.perf_counter() - started


def backlog_size(config: dict, topic: str, partitions: int) -> int:
    consumer = Consumer({**config, "group.id": "bench-watermarks"})
    try:
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(partitions))
    finally:
        consumer.close()


def read_ceiling(config: dict, topic: str, partitions: int, records: int) -> float:
    """records/s of a plain consumer reading the whole backlog and decoding every value with fastavro."""
    parsed = epoch_summary_codec().versions["1.1"].parsed
    consumer = Consumer({
        **config,
        "group.id": f"bench-ceiling-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    consumer.assign([TopicPartition(topic, p, -2) for p in range(partitions)])  # -2: from the beginning
    seen = 0
    first = None
    deadline = time.monotonic() + 600
    try:
        while seen < records:
            if time.monotonic() > deadline:
                raise SystemExit(f"ceiling read stalled at {seen} of {records}")
            messages = consumer.consume(1000, 1.0)
            if first is None and messages:
                first = time.perf_counter()
            for message in messages:
                if message.error() is not None:
                    continue
                buf = BytesIO(message.value())
                buf.seek(HEADER_SIZE)
                schemaless_reader(buf, parsed, None)
                seen += 1
        return seen / (time.perf_counter() - first)
    finally:
        consumer.close()


class TimedRunner(TransactionalRunner):
    """The runner, timed from its first batch to the commit that holds its `target`-th record, then stopped."""

    target: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.first_batch_at: float | None = None
        self.last_commit_at: float | None = None

    def process_batch(self, messages: list) -> None:
        if self.first_batch_at is None:
            self.first_batch_at = time.perf_counter()
        super().process_batch(messages)
        self.last_commit_at = time.perf_counter()
        if self.counts.consumed >= self.target:
            self.stop_requested = True


def run_group(config: dict, topic: str, records: int, batch_size: int, group: str, profile: bool) -> TimedRunner:
    core = ValidatorGroup()
    core.group = group  # the validator core under the bench's group name on a shared broker
    runner = TimedRunner(config, core, instance_id="bench", input_topic=topic, batch_size=batch_size, err=io.StringIO())
    runner.target = records
    watchdog = threading.Timer(900, lambda: setattr(runner, "stop_requested", True))
    watchdog.daemon = True
    watchdog.start()
    profiler = cProfile.Profile() if profile else None
    try:
        if profiler is not None:
            profiler.enable()
        runner.run(install_signals=False)
    finally:
        if profiler is not None:
            profiler.disable()
        watchdog.cancel()
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())
    return runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="backlog size (default 1,000,000)")
    parser.add_argument("--runs", type=int, default=1000, help="runs the backlog is spread over (default 1,000)")
    parser.add_argument("--batch-size", type=int, default=TransactionalRunner.batch_size,
                        help=f"the group's consume batch (default: the runner's, {TransactionalRunner.batch_size})")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the backlog topic (default 3)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of the fresh local broker")
    parser.add_argument("--profile", action="store_true", help="cProfile the group and print the top functions")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    topic = f"bench.epochs.{tag}"
    with bench_bootstrap(args.port) as (bootstrap, fresh):
        config = {"bootstrap.servers": bootstrap}
        group = VALIDATOR_GROUP if fresh else f"{VALIDATOR_GROUP}-bench-{tag}"
        ensure_topics(config, {topic: (args.partitions, {})})

        started = time.perf_counter()
        keys, values = backlog_values(args.records, args.runs, tag)
        encoded_in = time.perf_counter() - started
        produced_in = produce_backlog(config, topic, keys, values)
        size = backlog_size(config, topic, partition_count(config, topic))
        print(f"backlog: {size:,} records on {topic} ({args.partitions} partitions), {args.runs:,} runs; "
              f"built in {encoded_in:.1f} s, produced in {produced_in:.1f} s ({size / produced_in:,.0f} records/s)")
        if size != args.records:
            raise SystemExit(f"the backlog holds {size} records, not {args.records}")
        del keys, values

        ceiling_before = read_ceiling(config, topic, args.partitions, args.records)
        print(f"ceiling, before the group: {ceiling_before:>10,.0f} records/s", flush=True)
        runner = run_group(config, topic, args.records, args.batch_size, group, args.profile)
        ceiling_after = read_ceiling(config, topic, args.partitions, args.records)
        print(f"ceiling, after the group : {ceiling_after:>10,.0f} records/s", flush=True)

    counts = runner.counts
    if counts.consumed != args.records or counts.processed != args.records or counts.rejected or counts.duplicates:
        raise SystemExit(f"the group did not process the backlog exactly: {counts}")
    seconds = runner.last_commit_at - runner.first_batch_at
    ours = args.records / seconds
    ceiling = max(ceiling_before, ceiling_after)
    print(f"records: {args.records:,}, runs: {args.runs:,}, group batch size: {args.batch_size:,}, "
          f"transactions: {counts.batches:,}, aborted: {counts.aborted}")
    print(f"plain Consumer + fastavro (ceiling)  : {ceiling:>10,.0f} records/s")
    print(f"validator group (TransactionalRunner): {ours:>10,.0f} records/s ({seconds:.1f} s first record to last commit)")
    print(f"ratio group / ceiling                : {ours / ceiling:>10.1%}")
    print(f"targets: >= {TARGET_RATE:,} records/s [{'met' if ours >= TARGET_RATE else 'NOT met'}], "
          f">= {TARGET_RATIO:.0%} of the ceiling [{'met' if ours / ceiling >= TARGET_RATIO else 'NOT met'}]")


if __name__ == "__main__":
    main()
