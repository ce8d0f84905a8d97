"""Endurance: hundreds of capture <-> train cycles on Conflict-v0, publishing to a rotating NDJSON stream.

Targets (issue 3, item 11):
- resident memory grows < 10 % after warm-up: `(RSS at the end - RSS at the end of warm-up) / RSS at the
  end of warm-up`, where warm-up is the first 10 % of the cycles (at least 20). RSS is the current
  resident set (`VmRSS` of /proc/self/status), sampled after every cycle, not the peak;
- the stream read back across every segment validates line by line (`consumers.validator.Validator`):
  every line `valid`, no duplicates, no gap warnings;
- `log_stream_offset` runs 0..N-1 and equals each line's position in the stream; `cycle_id` runs
  1..cycles with `update_epochs` records each; `epoch` runs 0..N-1;
- the stream rotated (more than one segment), no segment over `--max-segment-bytes`.

The run uses the Conflict-v0 preset in data_mode `mixed` with `total_steps = cycles x num_envs x num_steps`,
through `TrainingHarness.run_ppo` itself; a subclass samples RSS after each cycle's epochs. The stream
lives in a temporary directory unless `--dir` keeps it. Exits 1 when any target is not met.

    .venv/bin/python bench/endurance.py [--cycles 1000] [--max-segment-bytes 262144] [--seed 0] [--dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson

from avro_schemas.ndjson import iter_records_from, list_segments
from consumers.validator import Validator
from producer.harness import CycleData, HarnessConfig, TrainingHarness, preset_for
from producer.ndjson_sink import NdjsonSink

ENV_ID = "Conflict-v0"
MIN_CYCLES = 200
MIN_WARMUP_CYCLES = 20
GROWTH_TARGET = 0.10


def current_rss_bytes() -> int:
    """The process's resident set size now (VmRSS), not its peak."""
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError("no VmRSS in /proc/self/status")


class SampledHarness(TrainingHarness):
    """`TrainingHarness` that records the resident set size after every mixed-mode cycle."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rss_after_cycle: list[int] = []
        self.flush_after_cycle: list[int] = []
        """Cycles completed at each record batch's flush (the harness batches about a second of records)."""

    def train_epochs(self, cycle: CycleData, data_mode: str) -> int:
        """Train as usual, then sample RSS: one sample per cycle, after its records are queued."""
        epochs = super().train_epochs(cycle, data_mode)
        self.rss_after_cycle.append(current_rss_bytes())
        return epochs


@dataclass
class StreamCheck:
    """What reading the whole stream back found."""

    lines: int = 0
    segments: int = 0
    largest_segment: int = 0
    statuses: Counter = field(default_factory=Counter)
    gap_warnings: int = 0
    other_warnings: int = 0
    offset_mismatches: int = 0
    epoch_mismatches: int = 0
    mode_mismatches: int = 0
    records_per_cycle: Counter = field(default_factory=Counter)
    cycle_returns: dict[int, float | None] = field(default_factory=dict)
    first_problem: str | None = None

    def problem(self, message: str) -> None:
        if self.first_problem is None:
            self.first_problem = message


def check_stream(directory: Path) -> StreamCheck:
    """Read every segment back in offset order and check each line (see the module docstring)."""
    check = StreamCheck()
    segments = list_segments(directory)
    check.segments = len(segments)
    check.largest_segment = max((path.stat().st_size for _, path in segments), default=0)
    validator = Validator()
    for position, (offset, line) in enumerate(iter_records_from(directory, 0)):
        check.lines += 1
        verdict = validator.validate_line(line)
        check.statuses[verdict.status] += 1
        if verdict.status != "valid":
            check.problem(f"line {position}: {verdict.status} {[e.to_json_dict() for e in verdict.errors]}")
        for warning in verdict.warnings:
            if warning.startswith("gap:"):
                check.gap_warnings += 1
            else:
                check.other_warnings += 1
            check.problem(f"line {position}: warning {warning}")
        record = orjson.loads(line)
        if not (offset == position == record.get("log_stream_offset")):
            check.offset_mismatches += 1
            check.problem(f"line {position}: reader offset {offset}, log_stream_offset {record.get('log_stream_offset')}")
        if record.get("epoch") != position:
            check.epoch_mismatches += 1
            check.problem(f"line {position}: epoch {record.get('epoch')}")
        if record.get("data_mode") != "mixed":
            check.mode_mismatches += 1
            check.problem(f"line {position}: data_mode {record.get('data_mode')}")
        cycle_id = record.get("cycle_id")
        check.records_per_cycle[cycle_id] += 1
        check.cycle_returns.setdefault(cycle_id, record.get("mean_episode_return"))
    return check


def mean_return(check: StreamCheck, cycle_ids: list[int]) -> float | None:
    """Mean of the cycles' mean_episode_return over the cycles where an episode finished."""
    values = [check.cycle_returns[c] for c in cycle_ids if check.cycle_returns.get(c) is not None]
    return sum(values) / len(values) if values else None


def mib(n: float) -> str:
    """Bytes as MiB for the summary."""
    return f"{n / 2**20:.1f} MiB"


def run(config: HarnessConfig, directory: Path, max_segment_bytes: int) -> tuple[SampledHarness, float, int]:
    """(harness, training wall seconds, records published) of one endurance run into `directory`."""
    sink = NdjsonSink(directory, max_segment_bytes=max_segment_bytes, buffered=True)
    published = [0]

    def publish(record):
        sink.publish(record)
        published[0] += 1

    def flush():
        sink.flush()
        harness.flush_after_cycle.append(len(harness.rss_after_cycle))

    harness = SampledHarness(config, publish=publish, flush=flush)
    try:
        start = time.perf_counter()
        harness.run_ppo()
        sink.close()  # the last lines reach the OS inside the timed run; close is idempotent for the finally
        wall = time.perf_counter() - start
    finally:
        sink.close()
        harness.close()
    return harness, wall, published[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1000, help=f"capture<->train cycles (>= {MIN_CYCLES})")
    parser.add_argument("--max-segment-bytes", type=int, default=256 * 1024, help="segment rotation size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="keep the stream here (an empty or new directory)")
    args = parser.parse_args()
    if args.cycles < MIN_CYCLES:
        parser.error(f"--cycles must be ≥ {MIN_CYCLES}")
    if args.dir is not None and args.dir.exists() and list_segments(args.dir):
        parser.error(f"{args.dir} already holds a stream; offsets would not start at 0")

    preset = preset_for(ENV_ID)
    config = replace(
        preset,
        seed=args.seed,
        data_mode="mixed",
        total_steps=args.cycles * preset.num_envs * preset.num_steps,
        run_id=f"endurance-{args.seed}",
    )
    # The harness holds about a second of records before it writes a batch (~55 cycles here), so a
    # 10 % warm-up ends while that batch is still filling: the growth figure includes it, a leak would
    # show as a trend that keeps rising afterwards (printed per cycle below).
    warmup = max(MIN_WARMUP_CYCLES, args.cycles // 10)
    started = time.perf_counter()
    rss_start = current_rss_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir if args.dir is not None else Path(tmp)
        harness, wall, published = run(config, directory, args.max_segment_bytes)
        read_start = time.perf_counter()
        check = check_stream(directory)
        read_wall = time.perf_counter() - read_start
    total_wall = time.perf_counter() - started

    samples = harness.rss_after_cycle
    cycles_run = len(samples)
    rss_warm = samples[warmup - 1]
    rss_end = samples[-1]
    rss_max = max(samples[warmup - 1 :])
    growth = (rss_end - rss_warm) / rss_warm
    max_growth = (rss_max - rss_warm) / rss_warm
    # a least-squares slope over the post-warm-up samples tells a steady leak from noise
    tail = samples[warmup - 1 :]
    xs = range(len(tail))
    x_mean, y_mean = (len(tail) - 1) / 2, sum(tail) / len(tail)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, tail)) / max(1e-9, sum((x - x_mean) ** 2 for x in xs))

    epochs_per_cycle = config.update_epochs
    expected_cycles = list(range(1, args.cycles + 1))
    cycles_seen = sorted(c for c in check.records_per_cycle if c is not None)
    if config.target_kl is None:  # every cycle runs all its epochs
        per_cycle_ok = all(check.records_per_cycle[c] == epochs_per_cycle for c in expected_cycles)
    else:  # the KL early stop may cut a cycle short
        per_cycle_ok = all(1 <= check.records_per_cycle[c] <= epochs_per_cycle for c in expected_cycles)
    first10 = mean_return(check, expected_cycles[:10])
    last10 = mean_return(check, expected_cycles[-10:])

    def fmt_return(value: float | None) -> str:
        return "n/a (no episode finished)" if value is None else f"{value:+.3f}"

    targets = [
        (f"resident memory growth after warm-up < {GROWTH_TARGET:.0%}", growth < GROWTH_TARGET),
        ("every line valid (no invalid, no duplicates)", check.statuses["valid"] == check.lines == published > 0),
        ("no gap warnings", check.gap_warnings == 0),
        ("log_stream_offset 0..N-1, equal to line position", check.offset_mismatches == 0 and check.lines == published),
        ("epoch 0..N-1", check.epoch_mismatches == 0),
        (f"cycle_id 1..{args.cycles}, {epochs_per_cycle} records each, data_mode mixed",
         cycles_run == args.cycles and cycles_seen == expected_cycles and per_cycle_ok and check.mode_mismatches == 0),
        (f"stream rotated, no segment over {args.max_segment_bytes:,} bytes",
         check.segments > 1 and check.largest_segment <= args.max_segment_bytes),
    ]

    print(f"Endurance: {ENV_ID}, data_mode mixed, seed {args.seed}, {args.cycles} cycles x "
          f"{config.num_envs} envs x {config.num_steps} steps = {config.total_steps:,} ticks, "
          f"{epochs_per_cycle} epochs per cycle, segments of {args.max_segment_bytes:,} bytes")
    print(f"  training wall {wall:.1f} s; {published:,} records, {published / wall:,.0f} records/s; "
          f"telemetry_seconds {harness.telemetry_seconds:.3f} s = {harness.telemetry_seconds / wall:.2%} of training wall")
    print(f"  read back + validate {read_wall:.2f} s ({check.lines:,} lines, {check.lines / read_wall:,.0f} lines/s); "
          f"total wall {total_wall:.1f} s")
    print(f"  RSS: before the run {mib(rss_start)}; end of warm-up (cycle {warmup}) {mib(rss_warm)}; "
          f"end (cycle {cycles_run}) {mib(rss_end)}; max after warm-up {mib(rss_max)}")
    batches = harness.flush_after_cycle
    print(f"  record batches: {len(batches)}, the first flushed after cycle {batches[0] if batches else '-'} "
          f"(records wait up to {harness.max_publish_delay:g} s in memory before they are written)")
    print(f"  RSS growth after warm-up: {growth:+.2%} at the end, {max_growth:+.2%} at the max; "
          f"trend {slope / 1024:+.1f} KiB per cycle")
    print(f"  stream: {check.segments} segments (largest {check.largest_segment:,} bytes), {check.lines:,} lines, "
          f"statuses {dict(check.statuses)}, gap warnings {check.gap_warnings}, other warnings {check.other_warnings}")
    print(f"  learning: mean episode return, first 10 cycles {fmt_return(first10)}, last 10 cycles {fmt_return(last10)}; "
          f"{len(harness.episodes.returns):,} episodes finished")
    if check.first_problem:
        print(f"  first problem: {check.first_problem}")
    for name, met in targets:
        print(f"  [{'met' if met else 'NOT met'}] {name}")
    ok = all(met for _, met in targets)
    print("all targets met" if ok else "some targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
