"""Single-core throughput of decode + validate for v1.1 single-object messages, beside raw fastavro.

The baseline is `fastavro.schemaless_reader` on the same messages (body after the 10-byte header, writer
schema already parsed), measured in the same run, alternating rounds so both see the same machine state.
Targets (issue 2): ≥ 100,000 records/s and ≥ 50% of the raw rate.

    .venv/bin/python bench/codec_validate.py [--records 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from io import BytesIO

from fastavro import schemaless_reader

from avro_schemas import HEADER_SIZE, epoch_summary_codec
from consumers.validator import Validator


def make_records(n: int, seed: int = 0) -> list[dict]:
    """`n` valid v1.1 records of a few runs, values varied like a real training stream."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        run = i % 4
        epoch = i // 4
        kl = rng.uniform(0.0, 0.03)
        records.append({
            "telemetry_version": "1.1",
            "run_id": f"bench-run-{run}",
            "epoch": epoch,
            "global_step": epoch * 2048,
            "timestamp_ms": 1_764_000_000_000 + i * 37,
            "policy_loss": rng.uniform(-0.1, 0.1),
            "value_loss": rng.uniform(0.0, 50.0),
            "kl_divergence": kl,
            "clip_fraction": rng.uniform(0.0, 0.3),
            "explained_variance": rng.uniform(-1.0, 1.0) if i % 10 else None,
            "learning_rate": 3e-4,
            "mean_episode_return": rng.uniform(0.0, 500.0) if i % 7 else None,
            "num_samples": 2048,
            "num_minibatches": 32,
            "epoch_duration_sec": rng.uniform(0.01, 0.2),
            "data_mode": "mixed",
            "cycle_id": epoch // 10 + 1,
            "batch_entropy_mean": rng.uniform(0.1, 0.7),
            "batch_entropy_std": rng.uniform(0.0, 0.05),
            "grad_norm_max": rng.uniform(0.1, 5.0),
            "kl_divergence_max": kl + rng.uniform(0.0, 0.02),
            "reward_advantage_corr": rng.uniform(-1.0, 1.0) if i % 5 else None,
            "rollout_ticks": 2048,
            "log_stream_offset": epoch,
        })
    return records


def run_raw(messages: list[bytes], parsed: dict) -> float:
    start = time.perf_counter()
    for message in messages:
        buf = BytesIO(message)
        buf.seek(HEADER_SIZE)
        schemaless_reader(buf, parsed, None)
    return time.perf_counter() - start


def run_ours(messages: list[bytes], codec) -> float:
    validator = Validator()
    decode = codec.decode
    validate = validator.validate
    start = time.perf_counter()
    for message in messages:
        validate(decode(message))
    elapsed = time.perf_counter() - start
    assert validator.counts["valid"] == len(messages), validator.counts  # every bench record is valid
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # single core, as the target says

    codec = epoch_summary_codec()
    messages = [codec.encode(r) for r in make_records(args.records)]
    parsed = codec.versions["1.1"].parsed
    run_raw(messages[:10_000], parsed)  # warm-up
    run_ours(messages[:10_000], codec)

    raw_rates, our_rates = [], []
    for _ in range(args.rounds):
        raw_rates.append(len(messages) / run_raw(messages, parsed))
        our_rates.append(len(messages) / run_ours(messages, codec))
    raw, ours = statistics.median(raw_rates), statistics.median(our_rates)
    print(f"records per round: {len(messages)}, rounds: {args.rounds}, medians over rounds")
    print(f"raw fastavro.schemaless_reader : {raw:>10,.0f} records/s")
    print(f"decode + validate (ours)       : {ours:>10,.0f} records/s")
    print(f"ratio ours / raw               : {ours / raw:>10.1%}")
    fast, close = ours >= 100_000, ours / raw >= 0.5
    print(f"targets: >= 100,000 records/s [{'met' if fast else 'NOT met'}], "
          f">= 50% of raw [{'met' if close else 'NOT met'}]")
    return 0 if fast and close else 1


if __name__ == "__main__":
    raise SystemExit(main())
