"""`make samples`: regenerate `docs/samples/ppo_conflict_telemetry.jsonl` from seeded Conflict-v0 runs.

One NDJSON stream, four short runs in order, offsets global across them:

1. `sample-v1.0`: the v1.0 fall-back mode (`enable_telemetry_v1_1=False`);
2. `sample-mixed`: alternating capture <-> train cycles (`mixed`, cycle_id 1, 2, ...), recording its rollouts;
3. `sample-rollout`: one capture, then training (`rollout`);
4. `sample-replay`: training from the rollouts recorded by run 2 (`replay`, cycle_id 0, rollout_ticks 0).

Everything but `timestamp_ms` and `epoch_duration_sec` is a pure function of the seeds; a test regenerates
the file and compares.

    .venv/bin/python -m ppo_telemetry.samples [OUT]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from avro_schemas.ndjson import list_segments
from producer.harness import HarnessConfig, TrainingHarness, preset_for
from producer.ndjson_sink import NdjsonSink

__all__ = ["SAMPLE_PATH", "TIMING_FIELDS", "generate_samples"]

SAMPLE_PATH = Path(__file__).resolve().parents[1] / "docs" / "samples" / "ppo_conflict_telemetry.jsonl"
TIMING_FIELDS = ("timestamp_ms", "epoch_duration_sec")


def _small(**overrides) -> HarnessConfig:
    base = replace(preset_for("Conflict-v0"), num_envs=2, num_steps=32, update_epochs=2, num_minibatches=2, seed=7)
    return replace(base, **overrides)


def generate_samples(out: Path) -> int:
    """Write the sample stream to `out`; returns the number of records."""
    with tempfile.TemporaryDirectory(prefix="ppo-telemetry-samples-") as tmp:
        stream, rollouts = Path(tmp) / "stream", Path(tmp) / "rollouts"
        sink = NdjsonSink(stream, max_segment_bytes=1 << 30)
        runs = [
            _small(run_id="sample-v1.0", total_steps=128, enable_telemetry_v1_1=False),
            _small(run_id="sample-mixed", total_steps=256, record_rollouts=rollouts),
            _small(run_id="sample-rollout", total_steps=128, data_mode="rollout"),
            _small(run_id="sample-replay", data_mode="replay", replay_manifest=rollouts / "manifest.json"),
        ]
        for config in runs:
            harness = TrainingHarness(config, publish=sink.publish, flush=sink.flush)
            try:
                harness.run_ppo()
            finally:
                harness.close()
        records = sink.writer.next_offset
        sink.close()
        (segment,) = [path for _, path in list_segments(stream)]
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(segment, out)
    return records


def main(argv: list[str] | None = None) -> int:
    """Regenerate the samples (default path: docs/samples/ppo_conflict_telemetry.jsonl)."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else SAMPLE_PATH
    count = generate_samples(out)
    print(f"wrote {count} records to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
