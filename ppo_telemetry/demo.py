"""`ppo-telemetry demo`: the whole pipeline end to end on a real Kafka broker.

It uses the broker the settings name when one is configured (`KAFKA_BOOTSTRAP_SERVERS` or
`PPO_TELEMETRY_KAFKA_BOOTSTRAP_SERVERS`), else starts the local KRaft broker (and stops it at the end
if it started it). Then it trains two PPO runs on Conflict-v0 with `ppo-telemetry train --kafka` — a
baseline, and a candidate with a 3x learning rate — injects what a real topic suffers (garbage bytes,
a truncated message, an unknown writer schema, a NaN, a re-sent record), runs the three consumer
groups (validator, drift against the baseline run on the topic, watch) until they have consumed
everything, and prints what happened: records published, validated, dead-lettered with reasons,
drift highlights and alerts.

`synthetic_run` and `write_segments` make hand-shaped streams (healthy or failing on purpose, with
arbitrary lines) for tests and dashboards.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from avro_schemas.errors import TelemetryError
from avro_schemas.ndjson import segment_name

__all__ = ["synthetic_run", "write_segments", "run_demo"]


def synthetic_run(run_id: str, epochs: int, seed: int, unstable: bool, start_offset: int = 0) -> list[dict[str, Any]]:
    """A run's v1.1 records: `unstable` adds an entropy collapse, KL spikes and a gradient explosion."""
    rng = random.Random(seed)
    records = []
    entropy = 0.69
    for epoch in range(epochs):
        cycle = epoch // 4 + 1
        progress = epoch / max(epochs - 1, 1)
        if unstable and progress > 0.6:
            entropy *= 0.55  # the policy turns deterministic
        else:
            entropy = max(0.05, entropy - 0.004 + rng.gauss(0, 0.003))
        kl = abs(rng.gauss(0.008, 0.002))
        kl_max = kl + abs(rng.gauss(0.01, 0.004))
        if unstable and epoch in (9, 10, 23):
            kl_max += 0.08
        grad = abs(rng.gauss(1.5, 0.3)) + (25.0 if unstable and epoch == 17 else 0.0)
        corr = rng.uniform(0.2, 0.6) if not (unstable and progress > 0.8) else rng.uniform(-0.4, -0.1)
        ret = 20 + 400 * (1 - math.exp(-4 * progress)) + rng.gauss(0, 5)
        records.append({
            "telemetry_version": "1.1",
            "run_id": run_id,
            "epoch": epoch,
            "global_step": cycle * 2048,
            "timestamp_ms": 1_764_115_200_000 + epoch * 850,
            "policy_loss": rng.gauss(-0.01, 0.005),
            "value_loss": abs(rng.gauss(30 * (1 - progress) + 2, 1)),
            "kl_divergence": kl,
            "clip_fraction": min(1.0, abs(rng.gauss(0.12, 0.03))),
            "explained_variance": min(1.0, 0.2 + 0.7 * progress + rng.gauss(0, 0.02)),
            "learning_rate": 3e-4 * (1 - 0.9 * progress),
            "mean_episode_return": ret,
            "num_samples": 2048,
            "num_minibatches": 32,
            "epoch_duration_sec": abs(rng.gauss(0.21, 0.01)),
            "data_mode": "mixed",
            "cycle_id": cycle,
            "batch_entropy_mean": entropy,
            "batch_entropy_std": abs(rng.gauss(0.01, 0.003)),
            "grad_norm_max": grad,
            "kl_divergence_max": kl_max,
            "reward_advantage_corr": corr,
            "rollout_ticks": 2048,
            "log_stream_offset": start_offset + epoch,
        })
    return records


def write_segments(directory: Path, lines: list[tuple[int, str]], max_bytes: int) -> list[Path]:
    """Write (offset, line) pairs as NDJSON segments named by first offset, rotated at `max_bytes`."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    handle = None
    size = 0
    for offset, line in lines:
        data = (line + "\n").encode("utf-8")
        if handle is None or size + len(data) > max_bytes:
            if handle is not None:
                handle.close()
            path = directory / segment_name(offset)
            handle = open(path, "wb")
            written.append(path)
            size = 0
        handle.write(data)
        size += len(data)
    if handle is not None:
        handle.close()
    return written


class DemoError(TelemetryError):
    """A stage of the demo failed (the message says which)."""


def _configured_bootstrap() -> str | None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or os.environ.get("PPO_TELEMETRY_KAFKA_BOOTSTRAP_SERVERS"):
        from ppo_telemetry.kafka_settings import KafkaSettings

        return KafkaSettings().bootstrap_servers
    return None


def _train(bootstrap: str, run_id: str, seed: int, learning_rate: float, steps: int, out: TextIO) -> None:
    """One Conflict-v0 run published to Kafka by the real command line."""
    proc = subprocess.run(
        [sys.executable, "-m", "ppo_telemetry", "train", "--kafka", bootstrap, "--env", "Conflict-v0",
         "--seed", str(seed), "--learning-rate", str(learning_rate), "--total-steps", str(steps), "--run-id", run_id],
        capture_output=True, text=True,
    )
    summary = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
    if proc.returncode != 0:
        raise DemoError(f"training {run_id} failed: {summary}")
    out.write(f"  {summary.removeprefix('train: ')}\n")


def _inject(config: dict[str, Any], run_id: str) -> int:
    """What a real topic suffers, keyed by the candidate run; returns how many messages."""
    from confluent_kafka import Producer

    from avro_schemas import epoch_summary_codec
    from avro_schemas.topics import EPOCHS_TOPIC
    from consumers.runner import baseline_records

    codec = epoch_summary_codec()
    last = baseline_records(config, run_id)[-1].to_dict()
    good = codec.encode(last)
    bad = [
        b"not avro at all",
        good[:25],  # truncated in the body
        b"\xc3\x01" + b"\x07" * 8 + good[10:],  # a writer schema nobody published
        codec.encode(dict(last, value_loss=math.nan, log_stream_offset=last["log_stream_offset"] + 1)),
        good,  # a producer retry re-sends the last record: a duplicate by log_stream_offset
    ]
    producer = Producer({**config, "partitioner": "murmur2_random"})
    for value in bad:
        producer.produce(EPOCHS_TOPIC, key=run_id.encode(), value=value)
    producer.flush(30)
    return len(bad)


def _end_offsets(config: dict[str, Any]) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    from avro_schemas.topics import EPOCHS_TOPIC
    from kafka_io import partition_count

    consumer = Consumer({**config, "group.id": "ppo-telemetry-demo-probe"})
    try:
        count = partition_count(config, EPOCHS_TOPIC) or 0
        return {p: consumer.get_watermark_offsets(TopicPartition(EPOCHS_TOPIC, p), timeout=30)[1] for p in range(count)}
    finally:
        consumer.close()


def _run_groups(config: dict[str, Any], cores: list[Any], ends: dict[int, int], log: TextIO) -> list[Any]:
    """Run each group in a thread until its committed position reaches `ends`; returns the runners.

    A group that fails stops the others and its error is raised here."""
    from consumers.runner import TransactionalRunner

    runners = [TransactionalRunner(config, core, instance_id="demo", err=log) for core in cores]
    failures: list[BaseException] = []

    def run(runner: TransactionalRunner) -> None:
        try:
            runner.run(install_signals=False, idle_callback=lambda: runner.stop_when_caught_up(ends))
        except BaseException as exc:  # handed to the main thread
            failures.append(exc)
            for other in runners:
                other.stop_requested = True

    threads = [threading.Thread(target=run, args=(runner,)) for runner in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return runners


def _read(config: dict[str, Any], topic: str, keys: set[bytes]) -> list[Any]:
    from confluent_kafka import TopicPartition

    from kafka_io import partition_count, read_to_end

    count = partition_count(config, topic) or 0
    return [m for m in read_to_end(config, [TopicPartition(topic, p) for p in range(count)]) if m.key() in keys]


def run_demo(out: TextIO, bootstrap: str | None = None, steps: int = 20_000) -> int:
    """Run the demo, printing what happened to `out`; returns the exit code."""
    from avro_schemas.codec import alert_codec, drift_record_codec
    from avro_schemas.topics import ALERTS_TOPIC, DLQ_TOPIC, DRIFT_TOPIC
    from consumers.drift import Baseline
    from consumers.groups import DriftGroup, ValidatorGroup, WatchGroup
    from consumers.runner import baseline_records
    from ppo_telemetry.broker import LocalBroker

    started = time.monotonic()
    broker = None
    bootstrap = bootstrap or _configured_bootstrap()
    if bootstrap is None:
        broker = LocalBroker()
        if broker.pid() is not None:
            broker = None  # running already: use it, leave it running
            bootstrap = LocalBroker().start()
            out.write(f"using the local Kafka broker at {bootstrap}\n")
        else:
            out.write("starting the local Kafka broker (first time: Maven fetches the jars) ...\n")
            bootstrap = broker.start()
            out.write(f"  running at {bootstrap}\n")
    else:
        out.write(f"using the Kafka broker at {bootstrap}\n")
    from ppo_telemetry.kafka_settings import KafkaSettings

    # the same settings `train` reads (security included), so the demo's own clients match its producers
    config = KafkaSettings(bootstrap_servers=bootstrap).librdkafka_config()
    try:
        tag = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        baseline_id, candidate_id = f"demo-{tag}-baseline-lr1e-3", f"demo-{tag}-candidate-lr3e-3"
        out.write(f"training two PPO runs on Conflict-v0, {steps:,} ticks each, publishing to Kafka:\n")
        _train(bootstrap, baseline_id, 0, 1e-3, steps, out)
        _train(bootstrap, candidate_id, 1, 3e-3, steps, out)
        injected = _inject(config, candidate_id)
        out.write(f"injected {injected} bad messages into ppo.telemetry.epochs: garbage, a truncated body, "
                  f"an unknown writer schema, a NaN, a re-sent record\n")

        ends = _end_offsets(config)
        baseline = Baseline.from_records(baseline_records(config, baseline_id), baseline_id)
        watch = WatchGroup()
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"ppo-telemetry-demo-{tag}.log"
        with open(log_path, "w") as log:
            runners = _run_groups(config, [ValidatorGroup(), DriftGroup(baseline), watch], ends, log)
        out.write(f"ran the three consumer groups until they had committed everything (their log: {log_path}):\n")
        for runner in runners:
            c = runner.counts
            out.write(f"  {runner.core.group:<26} {c.consumed:>6} consumed, {c.processed:>6} valid, {c.rejected} rejected, "
                      f"{c.duplicates} duplicate dropped; {c.outputs} outputs in {c.batches} transactions\n")

        keys = {baseline_id.encode(), candidate_id.encode()}
        dead = _read(config, DLQ_TOPIC, keys)
        out.write(f"dead-lettered to {DLQ_TOPIC}: {len(dead)}\n")
        for message in dead:
            headers = {k: v.decode("utf-8", "replace") for k, v in message.headers() or []}
            out.write(f"  offset {headers['source.offset']:>6}  {headers['error.stage']}/{headers['error.rule']}: "
                      f"{headers['error.message'][:90]}\n")

        drifts = [drift_record_codec().decode(m.value()) for m in _read(config, DRIFT_TOPIC, {candidate_id.encode()})]
        out.write(f"drift of {candidate_id} vs {baseline_id}: {len(drifts)} DriftRecords; largest mean drifts:\n")
        sums: dict[str, list[float]] = {}
        for record in drifts:
            for name, value in record["drifts"].items():
                sums.setdefault(name, []).append(value)
        top = sorted(sums.items(), key=lambda kv: -abs(sum(kv[1]) / len(kv[1])))[:5]
        for name, values in top:
            out.write(f"  {name:<22} mean {sum(values) / len(values):+9.1%}   max |drift| {max(map(abs, values)):9.1%}\n")

        alerts = [alert_codec().decode(m.value()) for m in _read(config, ALERTS_TOPIC, keys)]
        label = {baseline_id: "baseline", candidate_id: "candidate"}
        out.write(f"alerts on {ALERTS_TOPIC}: {len(alerts)} transitions\n")
        for a in alerts[:12]:
            out.write(f"  {label[a['run_id']]:<9} epoch {a['epoch']:>5}  {a['rule']:<17} {a['state']:<8} "
                      f"value {a['value']:.4g} (threshold {a['threshold']:.4g})\n")
        if len(alerts) > 12:
            out.write(f"  ... and {len(alerts) - 12} more\n")
        out.write(f"demo finished in {time.monotonic() - started:.0f} s\n")
        return 0
    finally:
        if broker is not None:
            broker.stop()
            out.write("stopped the local Kafka broker\n")
