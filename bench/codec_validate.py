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
from avro_schemas.fields import CROSS_FIELD_RULES, FIELDS, Field, example_record
from consumers.validator import Validator


def _varied(row: Field, rng: random.Random) -> float:
    """The field's example scaled by a random factor in [0.5, 1.5], kept within its range."""
    while True:
        value = row.example * rng.uniform(0.5, 1.5)
        if row.range is None or row.range.contains(value):
            return value


def _varied_record(base: dict, rng: random.Random) -> dict:
    """`base` with each double varied around its example and each nullable field null one time in seven,
    drawn again until the cross-field rules hold."""
    while True:
        record = {**base, **{row.name: _varied(row, rng) for row in FIELDS.values() if row.avro_type == "double"}}
        record.update({row.name: None for row in FIELDS.values() if row.nullable and rng.random() < 1 / 7})
        if not any(list(rule.violations(record)) for rule in CROSS_FIELD_RULES):
            return record


def make_records(n: int, seed: int = 0) -> list[dict]:
    """`n` valid v1.1 records of a few runs, from the field table (`_varied_record` of its example record),
    with epochs, steps, times, cycles and offsets advancing like a real training stream."""
    rng = random.Random(seed)
    example = example_record("1.1")
    records = []
    for i in range(n):
        epoch = i // 4
        stream_position = {
            "run_id": f"bench-run-{i % 4}", "epoch": epoch, "global_step": epoch * 2048,
            "timestamp_ms": 1_764_000_000_000 + i * 37, "cycle_id": epoch // 10 + 1, "log_stream_offset": epoch,
        }
        records.append(_varied_record({**example, **stream_position}, rng))
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
