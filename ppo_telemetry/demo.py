"""`ppo-telemetry demo`: the whole pipeline end to end on a real Kafka broker, telling a true story.

It uses the broker the settings name when one is configured (`KAFKA_BOOTSTRAP_SERVERS` or
`PPO_TELEMETRY_KAFKA_BOOTSTRAP_SERVERS`), else starts the local KRaft broker (and stops it at the end
if it started it). Everything it does happens in a fresh namespace of its own, `demo-<UTC time>-<random>`
(inside the configured namespace, if any), printed first: its topics, consumer groups and transactional
ids are its alone, so it never reads or commits for the default groups, and two demos on one broker never
meet. At the end it deletes that namespace's topics and groups (`--keep-topics` keeps them; a failed demo
keeps them for a look). Then it trains four PPO runs on Conflict-v0 with `ppo-telemetry train --kafka`:

- a healthy **baseline** of two seeds (0 and 1, the defaults);
- a **candidate** with one real change a user would make, an entropy bonus (`--ent-coef 0.2`, the
  default is 0), on seed 2: its policy stays more random, which drift should flag in
  `batch_entropy_mean` without mistaking seed 2 for a change anywhere else;
- a **fault run** on seed 3 with an injected reward-scale bug (`--fault reward_scale@STEP`, rewards
  x1000 from 40 % of the run on), which the alert rules should catch.

It injects what a real topic suffers (garbage bytes, a truncated message, an unknown writer schema, a
NaN, a re-sent record), runs the three consumer groups (validator; drift against a baseline of both
seeds read from the topic; watch) until they have consumed everything, and prints what happened:
records published, validated, dead-lettered with reasons, the drift verdicts of the candidate and the
fault run, and every alert per run, saying whether the healthy baseline runs raised any.

`synthetic_run` and `write_segments` make hand-shaped streams (healthy or failing on purpose, with
arbitrary lines) for tests and dashboards.
"""

from __future__ import annotations

import math
import os
import random
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from avro_schemas.errors import TelemetryError
from avro_schemas.ndjson import segment_name
from avro_schemas.topics import DEFAULT_NAMESPACE, Namespace

__all__ = [
    "synthetic_run", "write_segments", "DemoError", "DemoRun", "CANDIDATE_CHANGE", "FAULT", "FAULT_AT",
    "CATCH_UP_SECONDS", "demo_runs", "demo_namespace", "delete_namespace", "format_verdicts", "format_alert",
    "run_demo",
]


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


@dataclass(frozen=True, slots=True)
class DemoRun:
    """One training run of the demo: its role in the story and what `train` is given."""

    role: str
    """baseline, candidate or fault: how the output names it."""
    run_id: str
    seed: int
    change: tuple[str, ...] = ()
    """`train` arguments beyond the defaults (none for a healthy baseline run)."""

    @property
    def label(self) -> str:
        """The run as the output names it, e.g. `candidate (seed 2, --ent-coef 0.2)`."""
        return f"{self.role} (seed {self.seed}{', ' + ' '.join(self.change) if self.change else ''})"


CANDIDATE_CHANGE = ("--ent-coef", "0.2")
"""The candidate's real change: an entropy bonus (Conflict-v0 trains without one)."""
FAULT = "reward_scale"
"""The fault run's injected fault: rewards x1000 (a unit or normalisation bug), from `FAULT_AT` of the run on."""
FAULT_AT = 0.4
"""Where the fault starts, as a fraction of the run (as in `bench/signal_quality.py`)."""


def demo_runs(tag: str, steps: int) -> list[DemoRun]:
    """The demo's four runs: baseline seeds 0 and 1, the candidate on seed 2, the fault run on seed 3."""
    fault_step = int(steps * FAULT_AT)
    return [
        DemoRun("baseline", f"demo-{tag}-baseline-s0", 0),
        DemoRun("baseline", f"demo-{tag}-baseline-s1", 1),
        DemoRun("candidate", f"demo-{tag}-candidate-ent{CANDIDATE_CHANGE[1]}-s2", 2, CANDIDATE_CHANGE),
        DemoRun("fault", f"demo-{tag}-fault-{FAULT}-s3", 3, ("--fault", f"{FAULT}@{fault_step}")),
    ]


def demo_namespace(parent: Namespace, tag: str) -> Namespace:
    """A namespace no other demo uses: `demo-<tag>-<6 random hex digits>` inside `parent` (the random part
    keeps two demos started in the same second apart)."""
    return parent.child(f"demo-{tag}-{secrets.token_hex(3)}")


def delete_namespace(config: dict[str, Any], namespace: Namespace, timeout: float = 30.0) -> list[str]:
    """Delete the consumer groups and topics of `namespace` (what is not there is skipped); returns one
    line per thing that could not be deleted, empty when all went. Never the default namespace."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    from kafka_io import kafka_error, quiet_logger, reason

    if namespace.is_default:
        raise DemoError("the default namespace's topics are never deleted by the demo")
    admin = AdminClient({**config, "logger": quiet_logger()})
    problems = []
    absent = (KafkaError.GROUP_ID_NOT_FOUND, KafkaError.UNKNOWN_TOPIC_OR_PART)
    # the groups too: their committed offsets would otherwise outlive the topics on the broker for days
    # (offsets.retention.minutes)
    groups = admin.delete_consumer_groups(list(namespace.groups), request_timeout=timeout)
    existing = set(admin.list_topics(timeout=timeout).topics)
    topics = [topic for topic in namespace.topics if topic in existing]
    deleted = admin.delete_topics(topics, operation_timeout=timeout, request_timeout=timeout) if topics else {}
    for name, future in [*groups.items(), *deleted.items()]:
        try:
            future.result()
        except KafkaException as exc:
            error = kafka_error(exc)
            if error is None or error.code() not in absent:
                problems.append(f"{name}: {reason(exc)}")
    return problems


def _configured_bootstrap() -> str | None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or os.environ.get("PPO_TELEMETRY_KAFKA_BOOTSTRAP_SERVERS"):
        from ppo_telemetry.kafka_settings import KafkaSettings

        return KafkaSettings().bootstrap_servers
    return None


def _train_all(
    bootstrap: str, namespace: Namespace, runs: list[DemoRun], steps: int, out: TextIO, settings_file: str | None = None,
) -> None:
    """Train every run on Conflict-v0 with the real command line, two at a time (the runs are independent
    and deterministic, so running them side by side changes nothing but the wall time)."""
    width = max(len(run.label) for run in runs) + 1
    settings = ["--kafka-config", settings_file] if settings_file is not None else []
    for first in range(0, len(runs), 2):
        pair = runs[first:first + 2]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "ppo_telemetry", "train", "--kafka", bootstrap, "--env", "Conflict-v0",
                 "--seed", str(run.seed), "--total-steps", str(steps), "--run-id", run.run_id,
                 "--namespace", namespace.name, *settings, *run.change],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            for run in pair
        ]
        for run, proc in zip(pair, procs):
            _, stderr = proc.communicate()
            lines = stderr.strip().splitlines()
            # the line that says what was published; the last line when training failed
            summary = next((line for line in reversed(lines) if " records, " in line), lines[-1] if lines else "")
            if proc.returncode != 0:
                raise DemoError(f"training {run.run_id} failed: {summary or f'exit code {proc.returncode}'}")
            out.write(f"  {run.label + ':':<{width}} {summary.removeprefix('train: ')}\n")


def _inject(config: dict[str, Any], namespace: Namespace, run_id: str) -> int:
    """What a real topic suffers, keyed by the candidate run; returns how many messages."""
    from confluent_kafka import Producer

    from avro_schemas import epoch_summary_codec
    from consumers.runner import baseline_records

    codec = epoch_summary_codec()
    last = baseline_records(config, run_id, topic=namespace.epochs_topic)[-1].to_dict()
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
        producer.produce(namespace.epochs_topic, key=run_id.encode(), value=value)
    producer.flush(30)
    return len(bad)


def _end_offsets(config: dict[str, Any], namespace: Namespace) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    from kafka_io import partition_count

    topic = namespace.epochs_topic
    # a group id is required to make a Consumer; this one never joins or commits
    consumer = Consumer({**config, "group.id": namespace.qualify("ppo-telemetry-demo-probe")})
    try:
        count = partition_count(config, topic) or 0
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(count)}
    finally:
        consumer.close()


def _summaries_out(core: Any) -> bool:
    """True unless `core` is the drift group and some run it compares still waits for its idle summary."""
    from consumers.groups import DriftGroup

    if not isinstance(core, DriftGroup):
        return True
    return all((core.run_state(run_id) or {}).get("summarised") for run_id in core.tracker.runs)


CATCH_UP_SECONDS = 180.0
"""How long the groups may take to consume the demo's messages (about 5 s on a quiet machine) before the
demo gives up with an error instead of waiting for ever."""


def _run_groups(
    config: dict[str, Any], namespace: Namespace, cores: list[Any], ends: dict[int, int], log: TextIO
) -> list[Any]:
    """Run each group in a thread until its committed position reaches `ends` (the drift group also until
    its runs' idle summaries are out); returns the runners. A group that fails stops the others and its
    error is raised here; groups not done after `CATCH_UP_SECONDS` are a `DemoError`."""
    from consumers.runner import TransactionalRunner

    runners = [TransactionalRunner(config, core, instance_id="demo", namespace=namespace, err=log) for core in cores]
    failures: list[BaseException] = []

    def stop_when_done(runner: TransactionalRunner) -> None:
        # the runner asks the drift group for summaries right after this callback, so the check that
        # sees them out comes one idle poll later: nothing is cut short
        if _summaries_out(runner.core):
            runner.stop_when_caught_up(ends)

    def run(runner: TransactionalRunner) -> None:
        try:
            runner.run(install_signals=False, idle_callback=lambda: stop_when_done(runner))
        except BaseException as exc:  # handed to the main thread
            failures.append(exc)
            for other in runners:
                other.stop_requested = True

    # daemon threads: a group that does not stop when asked must not keep the demo from ending
    threads = [threading.Thread(target=run, args=(runner,), daemon=True) for runner in runners]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + CATCH_UP_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [runner.group_id for runner, thread in zip(runners, threads) if thread.is_alive()]
    if stuck:
        for runner in runners:
            runner.stop_requested = True
        for thread in threads:
            thread.join(10)
        raise DemoError(f"{', '.join(stuck)} had not caught up with the epochs topic after {CATCH_UP_SECONDS:.0f} s "
                        f"(another consumer in the same group? the groups' log: {log.name})")
    if failures:
        raise failures[0]
    return runners


def _read(config: dict[str, Any], topic: str, keys: set[bytes]) -> list[Any]:
    from confluent_kafka import TopicPartition

    from kafka_io import partition_count, read_to_end

    count = partition_count(config, topic) or 0
    return [m for m in read_to_end(config, [TopicPartition(topic, p) for p in range(count)]) if m.key() in keys]


def format_verdicts(record: dict[str, Any]) -> list[str]:
    """The lines of one DriftRecord (v1.1): each field that differs, or that no field differs."""
    lines = []
    for name, verdict in record.get("fields", {}).items():
        if verdict["verdict"] != "differs":
            continue
        line = (f"{name:<22} differs: {verdict['direction']} from step {verdict['first_step']:,}, "
                f"effect {verdict['effect']:+.1f}")
        if verdict["relative_change"] is not None:
            line += f", relative change {verdict['relative_change']:+.1%}"
        lines.append(line)
    if not lines:
        same = sum(1 for v in record.get("fields", {}).values() if v["verdict"] == "same")
        lines.append(f"no field differs ({same} compared fields the same)")
    return lines


def format_alert(alert: dict[str, Any]) -> str:
    """One alert transition as a line; a v1.0 alert (no severity, no summary) shows value and threshold."""
    summary = alert.get("summary") or f"value {alert['value']:.4g} (threshold {alert['threshold']:.4g})"
    step = f" step {alert['global_step']:>7,}" if alert.get("global_step") is not None else ""
    return (f"epoch {alert['epoch']:>5}{step}  {alert['rule']:<17} {alert['state']:<8} "
            f"{alert.get('severity') or '-':<8}  {summary}")


def _print_drift(
    config: dict[str, Any], namespace: Namespace, runs: list[DemoRun], window_steps: int, out: TextIO
) -> None:
    """Each compared run's verdicts, from its last DriftRecord on the drift topic (its idle summary)."""
    from avro_schemas.codec import drift_record_codec

    drift_topic = namespace.drift_topic

    codec = drift_record_codec()
    compared = [run for run in runs if run.role != "baseline"]
    seeds = " and ".join(str(run.seed) for run in runs if run.role == "baseline")
    keys = {run.run_id.encode() for run in compared}
    records = [codec.decode(message.value()) for message in _read(config, drift_topic, keys)]
    changes = sum(1 for record in records if record.get("kind") == "verdict_change")
    summaries = sum(1 for record in records if record.get("kind") == "summary")
    out.write(f"drift on {drift_topic} against the baseline of seeds {seeds} (windows of {window_steps:,} steps): "
              f"{len(records)} DriftRecords, {changes} verdict changes and "
              f"{summaries} idle summaries; a verdict's first step is "
              f"where its first differing window begins\n")
    for run in compared:
        own = [record for record in records if record["run_id"] == run.run_id]
        if not own:
            out.write(f"  {run.label}: no DriftRecord\n")
            continue
        last = own[-1]
        out.write(f"  {run.label} {run.run_id}: {last.get('windows_compared')} windows compared\n")
        for line in format_verdicts(last):
            out.write(f"    {line}\n")


def _print_alerts(config: dict[str, Any], namespace: Namespace, runs: list[DemoRun], out: TextIO, limit: int = 12) -> None:
    """Every run's alert transitions (at most `limit` per run, saying how many more), baseline runs first."""
    from avro_schemas.codec import alert_codec

    codec = alert_codec()
    keys = {run.run_id.encode() for run in runs}
    alerts = [codec.decode(message.value()) for message in _read(config, namespace.alerts_topic, keys)]
    out.write(f"alerts on {namespace.alerts_topic}: {len(alerts)} transitions\n")
    for run in runs:
        own = [alert for alert in alerts if alert["run_id"] == run.run_id]
        out.write(f"  {run.label} {run.run_id}: {len(own) or 'no'} alert transition{'' if len(own) == 1 else 's'}\n")
        for alert in own[:limit]:
            out.write(f"    {format_alert(alert)}\n")
        if len(own) > limit:
            out.write(f"    ... and {len(own) - limit} more\n")
    healthy = [alert for alert in alerts if alert["run_id"] in {run.run_id for run in runs if run.role == "baseline"}]
    if healthy:
        out.write(f"the healthy baseline runs raised {len(healthy)} alert transitions (listed above)\n")
    else:
        out.write("the healthy baseline runs raised no alert\n")


def _start_broker(bootstrap: str | None, out: TextIO) -> tuple[str, Any]:
    """The broker to use and the `LocalBroker` this demo started (None when it started none)."""
    from ppo_telemetry.broker import LocalBroker

    bootstrap = bootstrap or _configured_bootstrap()
    if bootstrap is not None:
        out.write(f"using the Kafka broker at {bootstrap}\n")
        return bootstrap, None
    broker = LocalBroker()
    if broker.pid() is not None:  # running already: use it, leave it running
        bootstrap = broker.start()
        out.write(f"using the local Kafka broker at {bootstrap}\n")
        return bootstrap, None
    out.write("starting the local Kafka broker (first time: Maven fetches the jars) ...\n")
    bootstrap = broker.start()
    out.write(f"  running at {bootstrap}\n")
    return bootstrap, broker


def run_demo(
    out: TextIO, bootstrap: str | None = None, steps: int = 30_000, parent: Namespace = DEFAULT_NAMESPACE,
    keep_topics: bool = False, settings: Any = None, settings_file: str | None = None,
) -> int:
    """Run the demo in a fresh namespace inside `parent`, printing what happened to `out`; returns the exit
    code. Its topics and groups are deleted at the end unless `keep_topics` (or the demo failed).
    `settings` (`KafkaSettings`) read from `settings_file` (`--kafka-config`): the broker and security to
    use, for the demo's own clients and, through the file, for its `train` runs; on a secured broker,
    the admin's (the demo creates and deletes a namespace of its own)."""
    from consumers.drift import Baseline
    from consumers.groups import DriftGroup, ValidatorGroup, WatchGroup
    from consumers.runner import baseline_records
    from ppo_telemetry.kafka_settings import KafkaSettings

    started = time.monotonic()
    if settings is not None:
        bootstrap = bootstrap or settings.bootstrap_servers
    bootstrap, broker = _start_broker(bootstrap, out)
    # the same settings `train` reads (security included), so the demo's own clients match its producers
    if settings is not None:
        config = {**settings.librdkafka_config(), "bootstrap.servers": bootstrap}
    else:
        config = KafkaSettings(bootstrap_servers=bootstrap).librdkafka_config()
    tag = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    namespace = demo_namespace(parent, tag)
    out.write(f"in namespace {namespace.name}: every topic and group is {namespace.name}.<its SPEC name>, "
              f"so the default groups are not touched\n")
    finished = False
    try:
        runs = demo_runs(tag, steps)
        baseline_runs = [run for run in runs if run.role == "baseline"]
        candidate = next(run for run in runs if run.role == "candidate")
        out.write(f"training four PPO runs on Conflict-v0, {steps:,} ticks each, publishing to Kafka: a healthy "
                  f"baseline of two seeds, a candidate with an entropy bonus ({' '.join(CANDIDATE_CHANGE)}; the "
                  f"default is 0), and a run with an injected fault ({FAULT}: rewards x1000 from step "
                  f"{int(steps * FAULT_AT):,} on)\n")
        _train_all(bootstrap, namespace, runs, steps, out, settings_file)
        injected = _inject(config, namespace, candidate.run_id)
        out.write(f"injected {injected} bad messages into {namespace.epochs_topic}: garbage, a truncated body, "
                  f"an unknown writer schema, a NaN, a re-sent record\n")

        ends = _end_offsets(config, namespace)
        records = [record.to_dict() for run in baseline_runs
                   for record in baseline_records(config, run.run_id, topic=namespace.epochs_topic)]
        baseline = Baseline.from_records(records, [run.run_id for run in baseline_runs])
        # a run's summary goes out once its records stop for a second: here, once the backlog is consumed
        drift = DriftGroup(baseline, idle_seconds=1.0)
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"ppo-telemetry-demo-{tag}.log"
        with open(log_path, "w") as log:
            runners = _run_groups(config, namespace, [ValidatorGroup(), drift, WatchGroup()], ends, log)
        out.write(f"ran the three consumer groups until they had committed everything (their log: {log_path}):\n")
        width = max(len(runner.group_id) for runner in runners) + 1
        for runner in runners:
            counts = runner.counts
            out.write(f"  {runner.group_id:<{width}} {counts.consumed:>6} consumed, {counts.processed:>6} valid, "
                      f"{counts.rejected} rejected, {counts.duplicates} duplicate dropped; {counts.outputs} outputs "
                      f"in {counts.batches} transactions\n")

        dead = _read(config, namespace.dlq_topic, {run.run_id.encode() for run in runs})
        out.write(f"dead-lettered to {namespace.dlq_topic}: {len(dead)}\n")
        for message in dead:
            headers = {k: v.decode("utf-8", "replace") for k, v in message.headers() or [] if v is not None}
            out.write(f"  offset {headers['source.offset']:>6}  {headers['error.stage']}/{headers['error.rule']}: "
                      f"{headers['error.message'][:90]}\n")

        _print_drift(config, namespace, runs, baseline.window_steps, out)
        _print_alerts(config, namespace, runs, out)
        finished = True
        out.write(f"demo finished in {time.monotonic() - started:.0f} s\n")
        return 0
    finally:
        _leave_namespace(config, namespace, keep=keep_topics or not finished, out=out)
        if broker is not None:
            broker.stop()
            out.write("stopped the local Kafka broker\n")


def _leave_namespace(config: dict[str, Any], namespace: Namespace, keep: bool, out: TextIO) -> None:
    """Delete the demo's topics and groups, or say where they are kept."""
    if keep:
        out.write(f"kept the topics and groups of namespace {namespace.name} (see them with "
                  f"`consume ... --namespace {namespace.name}` or any Kafka tool)\n")
        return
    try:
        problems = delete_namespace(config, namespace)
    except Exception as exc:  # confluent_kafka's KafkaException or a timeout: the demo itself went well
        problems = [f"{type(exc).__name__}: {exc}"]
    if problems:
        out.write(f"could not delete all of namespace {namespace.name}: {'; '.join(problems)}\n")
    else:
        out.write(f"deleted the topics and groups of namespace {namespace.name}\n")
