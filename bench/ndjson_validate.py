"""Single-core throughput of `validate`'s NDJSON path: lines read from a file, parsed and validated.

The baseline is `json.loads` over the same file's `bytes.split` lines, measured in the same run in
alternating rounds. Ours is what `validate` does per line: the bounded line reader (`iter_file_lines`
with the default 1 MiB limit) and `Validator.validate_line` (UTF-8, JSON with the duplicate-key check,
every rule of SPEC §2). Records are the valid v1.1 records of `codec_validate.py`.

    .venv/bin/python bench/ndjson_validate.py [--records 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from codec_validate import make_records  # noqa: E402

from avro_schemas.ndjson import DEFAULT_MAX_LINE_BYTES, iter_file_lines  # noqa: E402
from consumers.validator import Validator  # noqa: E402


def run_raw(path: Path) -> float:
    """Seconds to split the file into lines and `json.loads` each."""
    start = time.perf_counter()
    for line in path.read_bytes().split(b"\n"):
        if line:
            json.loads(line)
    return time.perf_counter() - start


def run_ours(path: Path, expected: int) -> float:
    """Seconds to read the file with the bounded reader and validate every line."""
    validator = Validator()
    validate = validator.validate_line
    start = time.perf_counter()
    for line in iter_file_lines(path, max_line_bytes=DEFAULT_MAX_LINE_BYTES):
        if line:
            validate(line)
    elapsed = time.perf_counter() - start
    assert validator.counts["valid"] == expected, validator.counts  # every bench record is valid
    return elapsed


def main() -> int:
    """Print the median rates of both paths and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # single core, as codec_validate
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "records.ndjson"
        path.write_text("".join(json.dumps(record) + "\n" for record in make_records(args.records)))
        run_raw(path)  # warm-up (and the page cache)
        run_ours(path, args.records)
        raw_rates, our_rates = [], []
        for _ in range(args.rounds):
            raw_rates.append(args.records / run_raw(path))
            our_rates.append(args.records / run_ours(path, args.records))
    raw, ours = statistics.median(raw_rates), statistics.median(our_rates)
    print(f"records per round: {args.records}, rounds: {args.rounds}, medians over rounds")
    print(f"raw split + json.loads         : {raw:>10,.0f} records/s")
    print(f"read + validate_line (ours)    : {ours:>10,.0f} records/s")
    print(f"ratio ours / raw               : {ours / raw:>10.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
