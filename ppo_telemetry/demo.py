"""`ppo-telemetry demo`: the pipeline end to end on what exists so far.

It trains two PPO runs on Conflict-v0 — a baseline, and a candidate with a 3x learning rate — each
publishing v1.1 records to a rotating NDJSON stream, then runs every offline stage on them: validate
(also on a damaged copy: a re-sent record, a torn line, a NaN), the single-object Avro codec, drift of
the candidate against the baseline, and the alert rules.

`synthetic_run` and `write_segments` make hand-shaped streams (healthy or failing on purpose, with
arbitrary lines) for tests and dashboards.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from avro_schemas import EpochSummary, epoch_summary_codec
from avro_schemas.ndjson import iter_segment_lines, list_segments, segment_name
from consumers.drift import Baseline, DriftTracker
from consumers.telemetry_watch import RulesConfig, Watch
from consumers.validator import Validator
from producer.harness import TrainingHarness, preset_for
from producer.ndjson_sink import NdjsonSink

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


def _train(run_id: str, seed: int, learning_rate: float, stream: Path, steps: int) -> tuple[int, float]:
    """Train one Conflict-v0 run into an NDJSON stream; returns (records, seconds)."""
    config = replace(preset_for("Conflict-v0"), seed=seed, total_steps=steps, learning_rate=learning_rate, run_id=run_id)
    sink = NdjsonSink(stream, max_segment_bytes=256 * 1024, buffered=True)
    harness = TrainingHarness(config, publish=sink.publish, flush=sink.flush)
    started = time.monotonic()
    try:
        harness.run_ppo()
    finally:
        harness.close()
        sink.close()
    return sink.writer.next_offset, time.monotonic() - started


def _read(stream: Path, out: TextIO, label: str) -> list[dict[str, Any]]:
    """Validate a stream; print the counts and return its valid records."""
    validator = Validator()
    records, reasons = [], Counter()
    for line in iter_segment_lines(stream):
        verdict = validator.validate_line(line)
        if verdict.status == "valid":
            records.append(verdict.record)
        for error in verdict.errors:
            reasons[f"{error.field or 'record'}: {error.rule}"] += 1
    counts = validator.counts
    out.write(
        f"validate {label}: {counts['valid']} valid, {counts['invalid']} invalid, "
        f"{counts['duplicate']} duplicate dropped\n"
    )
    for reason, n in reasons.most_common():
        out.write(f"  invalid because {reason} (x{n})\n")
    return records


def run_demo(out: TextIO, workdir: Path | None = None, steps: int = 30_000) -> int:
    """Run the demo, printing what happened to `out`; returns the exit code."""
    with tempfile.TemporaryDirectory(prefix="ppo-telemetry-demo-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        out.write(f"training two PPO runs on Conflict-v0, {steps:,} ticks each (streams in {root})\n")
        for run_id, seed, lr in (("baseline-lr1e-3", 0, 1e-3), ("candidate-lr3e-3", 1, 3e-3)):
            records, seconds = _train(run_id, seed, lr, root / run_id, steps)
            segments = len(list_segments(root / run_id))
            out.write(f"  {run_id}: {records} epoch records in {segments} NDJSON segments, {seconds:.1f} s\n")

        baseline = _read(root / "baseline-lr1e-3", out, "baseline")
        current = _read(root / "candidate-lr3e-3", out, "candidate")

        # What a real stream suffers: a producer retry re-sends a record, a crash tears a line, a bug writes NaN.
        inbox = root / "inbox"
        lines = [(r["log_stream_offset"], json.dumps(r)) for r in current[:30]]
        lines.insert(12, lines[11])
        lines.insert(20, (19, json.dumps(dict(current[19], value_loss=float("nan")))))
        lines.insert(5, (5, '{"telemetry_version": "1.1", "run_id": "candidate-lr3e-3", "epoch": 5, "glo'))
        write_segments(inbox, lines, max_bytes=8192)
        _read(inbox, out, "a damaged copy of 30 candidate records")

        codec = epoch_summary_codec()
        messages = [codec.encode(r) for r in current]
        identical = sum(codec.decode(m) == r for m, r in zip(messages, current))
        out.write(
            f"codec: {len(messages)} records as single-object Avro, {sum(map(len, messages)) / len(messages):.0f} "
            f"bytes each, {identical} decode back identical\n"
        )

        tracker = DriftTracker(Baseline.from_records([EpochSummary.from_dict(r) for r in baseline]))
        for record in current:
            tracker.observe(EpochSummary.from_dict(record))
        for summary in tracker.summaries():
            doc = summary.to_json_dict()
            out.write(f"drift vs {doc['baseline_run_id']}: {doc['epochs_compared']} epochs compared; largest drifts:\n")
            top = sorted(doc["fields"].items(), key=lambda kv: -abs(kv[1]["mean_relative_drift"]))[:5]
            for name, stats in top:
                out.write(
                    f"  {name:<22} mean {stats['mean_relative_drift']:+9.1%}   max |drift| "
                    f"{stats['max_abs_relative_drift']:9.1%}\n"
                )
            for name, reason in doc["skipped_fields"].items():
                out.write(f"  {name:<22} skipped: {reason}\n")

        watch = Watch(RulesConfig.default())
        transitions = [t for record in current for t in watch.observe(EpochSummary.from_dict(record))]
        out.write(f"alerts on candidate-lr3e-3: {len(transitions)} transitions\n")
        for t in transitions[:12]:
            out.write(
                f"  epoch {t.epoch:>5} offset {t.log_stream_offset:>5}  {t.rule:<17} {t.state:<8} "
                f"value {t.value:.4g} (threshold {t.threshold:.4g})\n"
            )
        if len(transitions) > 12:
            out.write(f"  ... and {len(transitions) - 12} more\n")
        out.write("demo finished (Kafka stages are not part of this build yet)\n")
    return 0
