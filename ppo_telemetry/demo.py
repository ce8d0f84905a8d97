"""`ppo-telemetry demo`: the pipeline end to end on what exists so far.

Until the training harness lands (issue 3), the demo writes a seeded, synthetic telemetry stream shaped
like a PPO run — a healthy baseline run, and a current run whose entropy collapses, whose KL spikes and
whose gradients explode — as rotated NDJSON segments, adds what a real stream suffers (a re-sent record,
a torn line, a record with a NaN), and runs every offline stage on it: validate, codec round trip,
drift against the baseline, and the alert rules.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from avro_schemas import epoch_summary_codec
from avro_schemas.ndjson import iter_segment_lines, segment_name
from consumers.drift import Baseline, DriftTracker
from consumers.telemetry_watch import RulesConfig, Watch
from consumers.validator import Validator

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


def run_demo(out: TextIO, workdir: Path | None = None) -> int:
    """Run the demo, printing what happened to `out`; returns the exit code."""
    with tempfile.TemporaryDirectory(prefix="ppo-telemetry-demo-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        baseline = synthetic_run("baseline-seed0", 40, seed=0, unstable=False)
        current = synthetic_run("candidate-seed1", 40, seed=1, unstable=True)

        lines = [(r["log_stream_offset"], json.dumps(r)) for r in current]
        lines.insert(12, lines[11])  # a producer retry re-sends offset 11
        broken = dict(current[30], value_loss=float("nan"))
        lines.insert(31, (30, json.dumps(broken)))  # NaN is not allowed anywhere
        lines.insert(5, (5, '{"telemetry_version": "1.1", "run_id": "candidate-seed1", "epoch": 5, "glo'))  # torn line
        stream_dir = root / "stream"
        segments = write_segments(stream_dir, lines, max_bytes=8192)
        out.write(f"wrote {len(lines)} lines of candidate-seed1 into {len(segments)} NDJSON segments in {stream_dir}\n")

        validator = Validator()
        valid_records, reasons = [], Counter()
        for line in iter_segment_lines(stream_dir):
            verdict = validator.validate_line(line)
            if verdict.status == "valid":
                valid_records.append(verdict.record)
            for error in verdict.errors:
                reasons[f"{error.field or 'record'}: {error.rule}"] += 1
        counts = validator.counts
        out.write(
            f"validate: {counts['valid']} valid, {counts['invalid']} invalid, {counts['duplicate']} duplicate dropped\n"
        )
        for reason, n in reasons.most_common():
            out.write(f"  invalid because {reason} (x{n})\n")

        codec = epoch_summary_codec()
        messages = [codec.encode(r) for r in valid_records]
        identical = sum(codec.decode(m) == r for m, r in zip(messages, valid_records))
        out.write(
            f"codec: {len(messages)} records as single-object Avro, {sum(map(len, messages))} bytes, "
            f"{identical} decode back identical\n"
        )

        from avro_schemas import EpochSummary

        tracker = DriftTracker(Baseline.from_records([EpochSummary.from_dict(r) for r in baseline]))
        for record in valid_records:
            tracker.observe(EpochSummary.from_dict(record))
        for summary in tracker.summaries():
            doc = summary.to_json_dict()
            out.write(f"drift vs {doc['baseline_run_id']}: {doc['epochs_compared']} epochs compared; largest drifts:\n")
            top = sorted(doc["fields"].items(), key=lambda kv: -kv[1]["max_abs_relative_drift"])[:4]
            for name, stats in top:
                out.write(
                    f"  {name:<22} mean {stats['mean_relative_drift']:+8.2%}   max |drift| "
                    f"{stats['max_abs_relative_drift']:8.2%}\n"
                )

        watch = Watch(RulesConfig.default())
        out.write("alerts:\n")
        for record in valid_records:
            for t in watch.observe(EpochSummary.from_dict(record)):
                out.write(
                    f"  epoch {t.epoch:>3} offset {t.log_stream_offset:>3}  {t.rule:<17} {t.state:<8} "
                    f"value {t.value:.4g} (threshold {t.threshold:.4g})\n"
                )
        out.write("demo finished (synthetic stream; training and Kafka stages are not part of this build yet)\n")
    return 0
