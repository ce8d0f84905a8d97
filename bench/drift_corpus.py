"""Drift on a corpus of runs already trained: seed-vs-seed false flags and fault runs flagged (issue 8).

The tuning companion of `bench/signal_quality.py` (which trains its own runs and is the official
evaluation): it reads runs from a corpus laid out as

    ROOT/healthy/<env>/seed<N>/telemetry-*.ndjson
    ROOT/fault/<env>/<fault>/seed<N>/telemetry-*.ndjson  with faults.json beside

and prints, with `consumers.drift` at its defaults (or `--threshold`, `--consecutive`, ... to try
others): per environment, the seed-vs-seed comparisons (a baseline of two healthy seeds, a third
compared) that flag any field, and the fault runs (baseline: healthy seeds 0 and 1) flagged from the
window of the fault's onset on. Seeds 0-2 (fault seed 2) are the tuning set; anything with seed 3 or 4
is reported apart as held out.

    .venv/bin/python bench/drift_corpus.py [--root /work/corpus] [--threshold 3] ...
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter, defaultdict
from dataclasses import fields
from pathlib import Path
from typing import Any

from avro_schemas.ndjson import iter_segment_lines
from consumers.drift import Baseline, DriftSettings, DriftTracker
from consumers.validator import Validator

TUNING_SEEDS = {0, 1, 2}
FAULT_BASELINE_SEEDS = (0, 1)


def load(directory: Path) -> list[dict[str, Any]]:
    """The valid records of a run directory, as dicts, in stream order."""
    validator = Validator()
    records = []
    for line in iter_segment_lines(directory):
        if line.strip():
            verdict = validator.validate_line(line)
            if verdict.status == "valid":
                records.append(verdict.record)
    return records


def differing(baseline: Baseline, records: list[dict[str, Any]], from_step: int = 0) -> list[str]:
    """The fields that differ from `from_step` on, for one current run."""
    tracker = DriftTracker(baseline)
    for record in records:
        tracker.observe(record)
    (summary,) = tracker.summaries()
    return [
        name for name, verdict in summary.fields.items()
        if verdict.verdict == "differs" and verdict.first_step is not None and verdict.first_step >= from_step
    ]


def seed_flags(healthy: dict[int, list[dict[str, Any]]], settings: DriftSettings) -> list[tuple[bool, list[str]]]:
    """(held out, flagged fields) of every two-seed baseline and third seed of one environment."""
    out = []
    for pair in itertools.combinations(sorted(healthy), 2):
        baseline = Baseline.from_records([r for seed in pair for r in healthy[seed]], settings=settings)
        for seed in sorted(set(healthy) - set(pair)):
            out.append((not {*pair, seed} <= TUNING_SEEDS, differing(baseline, healthy[seed])))
    return out


def settings_from(args: argparse.Namespace) -> DriftSettings:
    """Default settings with the options given on the command line."""
    given = {f.name: getattr(args, f.name) for f in fields(DriftSettings) if getattr(args, f.name) is not None}
    return DriftSettings(**given)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/work/corpus"))
    for setting in fields(DriftSettings):
        kind = int if setting.name in ("windows", "window_steps", "consecutive", "pool_windows") else float
        parser.add_argument(f"--{setting.name.replace('_', '-')}", dest=setting.name, type=kind)
    args = parser.parse_args(argv)
    settings = settings_from(args)
    print(f"settings: {settings}")
    totals: dict[bool, list[int]] = defaultdict(lambda: [0, 0])
    fault_totals: dict[bool, list[int]] = defaultdict(lambda: [0, 0])
    by_fault: dict[str, list[Any]] = defaultdict(lambda: [0, 0, Counter()])
    for env_dir in sorted(d for d in (args.root / "healthy").iterdir() if d.is_dir()):
        healthy = {int(d.name.removeprefix("seed")): load(d) for d in sorted(env_dir.glob("seed*"))}
        flags = seed_flags(healthy, settings)
        for held_out, flagged in flags:
            totals[held_out][0] += bool(flagged)
            totals[held_out][1] += 1
        named = [f for _, f in flags if f]
        print(f"{env_dir.name}: seed-vs-seed flagging {sum(map(bool, named))}/{len(flags)} {named}")
        if not all(seed in healthy for seed in FAULT_BASELINE_SEEDS):
            continue
        baseline = Baseline.from_records(
            [r for seed in FAULT_BASELINE_SEEDS for r in healthy[seed]], settings=settings
        )
        for run_dir in sorted((args.root / "fault" / env_dir.name).glob("*/seed*")):
            onset = json.loads((run_dir / "faults.json").read_text())[0]["step"]
            flagged = differing(baseline, load(run_dir), onset - onset % baseline.window_steps)
            held_out = int(run_dir.name.removeprefix("seed")) not in TUNING_SEEDS
            fault_totals[held_out][0] += bool(flagged)
            fault_totals[held_out][1] += 1
            entry = by_fault[run_dir.parent.name]
            entry[0] += bool(flagged)
            entry[1] += 1
            entry[2].update(flagged)
    for fault, (caught, count, names) in sorted(by_fault.items()):
        print(f"{fault}: flagged {caught}/{count}; fields {dict(names.most_common(4))}")
    for held_out in (False, True):
        label = "held out (seeds 3-4)" if held_out else "tuning (seeds 0-2)"
        seeds, faults = totals[held_out], fault_totals[held_out]
        print(f"{label}: seed-vs-seed flagging {seeds[0]}/{seeds[1]}, fault runs flagged {faults[0]}/{faults[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
