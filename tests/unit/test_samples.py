"""`make samples` is reproducible: the committed sample stream is what the seeded runs produce.

Two kinds of reproducibility, tested apart:
- **On one machine, bit for bit.** Two generations in one process give identical records but for the
  timing fields: everything else is a pure function of the seeds.
- **Across machines, to float32 precision.** The harness trains in float32, and OpenBLAS picks its sgemm
  kernel and numpy its float32 `tanh`/`exp`/`log` loops by CPU, so another CPU changes the last digits of
  the statistics (an AMD EPYC differs from the machine that made the file in the 6th significant digit).
  Integers, strings, offsets and the record layout must still match exactly; floats within `FLOAT_TOLERANCE`
  (checked by regenerating under other OpenBLAS kernels and numpy SIMD levels, see the table's comment).
"""

from __future__ import annotations

import json
import math

from consumers.validator import Validator
from ppo_telemetry.samples import SAMPLE_PATH, TIMING_FIELDS, generate_samples

# (relative, absolute) tolerance per float field. float32 rounding moves a value by ~1e-7 of the magnitudes
# it is computed from, not of the value itself: a KL of 1e-6 is a difference of log-probabilities of order 1,
# so the absolute part matters for the small ones. Measured on an AMD EPYC against the committed file with
# other OpenBLAS kernels (OPENBLAS_CORETYPE Haswell, Zen, SandyBridge, Prescott) and numpy's float32 loops
# limited to SSE4/AVX2 (NPY_DISABLE_CPU_FEATURES): at most 3e-7 absolute, 2e-6 relative on values not near
# zero. The bounds leave a margin of ~10x and still catch a changed formula, which moves far more.
FLOAT_TOLERANCE: dict[str, tuple[float, float]] = {
    "policy_loss": (1e-4, 1e-6),
    "value_loss": (1e-4, 1e-6),
    "kl_divergence": (1e-4, 1e-6),
    "kl_divergence_max": (1e-4, 1e-6),
    "explained_variance": (1e-4, 1e-6),
    "learning_rate": (0.0, 0.0),  # a schedule of float64 numbers: exact
    "mean_episode_return": (1e-9, 0.0),  # the environment's float64 rewards: exact unless the trajectory changed
    "batch_entropy_mean": (1e-4, 1e-6),
    "batch_entropy_std": (1e-4, 1e-6),
    "grad_norm_max": (1e-4, 1e-6),
    "reward_advantage_corr": (1e-4, 1e-6),
}
# clip_fraction counts samples beyond the clip range: a ratio within rounding of the boundary may flip
# one sample, so it may differ by one sample's share (1 / num_samples) and no more.
CLIP_FRACTION = "clip_fraction"


def load(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}


def differences(fresh: dict, committed: dict) -> list[str]:
    """What differs between two records beyond the tolerances (timing fields ignored)."""
    found = []
    for name, expected in without_timing(committed).items():
        actual = fresh[name]
        if name == CLIP_FRACTION:
            close = abs(actual - expected) <= 1.0 / committed["num_samples"] + 1e-12
        elif name in FLOAT_TOLERANCE and isinstance(expected, float) and isinstance(actual, float):
            rel, absolute = FLOAT_TOLERANCE[name]
            close = math.isclose(actual, expected, rel_tol=rel, abs_tol=absolute)
        else:  # integers, strings, enums, nulls: exactly
            close = type(actual) is type(expected) and actual == expected
        if not close:
            found.append(f"{name}: {actual!r} != {expected!r}")
    return found


def test_regenerated_samples_match_the_committed_ones_within_float32_tolerance(tmp_path):
    out = tmp_path / "samples.jsonl"
    count = generate_samples(out)
    fresh, committed = load(out), load(SAMPLE_PATH)
    assert count == len(fresh) == len(committed)
    assert [list(r) for r in fresh] == [list(r) for r in committed]  # same keys, same order
    mismatches = {
        (r["run_id"], r["epoch"]): found for r, c in zip(fresh, committed) if (found := differences(r, c))
    }
    assert mismatches == {}


def test_two_generations_on_one_machine_are_identical_but_for_timing(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    generate_samples(first)
    generate_samples(second)
    assert [without_timing(r) for r in load(first)] == [without_timing(r) for r in load(second)]


def test_tolerance_table_names_every_float_field_of_the_samples():
    floats = {name for r in load(SAMPLE_PATH) for name, v in without_timing(r).items() if isinstance(v, float)}
    assert floats <= set(FLOAT_TOLERANCE) | {CLIP_FRACTION}


def test_the_comparison_catches_a_changed_statistic():
    committed = load(SAMPLE_PATH)[-1]
    assert differences(dict(committed), committed) == []
    changed = dict(committed, value_loss=committed["value_loss"] * 1.001)
    assert differences(changed, committed) == [f"value_loss: {changed['value_loss']!r} != {committed['value_loss']!r}"]
    assert differences(dict(committed, global_step=committed["global_step"] + 1), committed)
    assert differences(dict(committed, epoch=float(committed["epoch"])), committed)


def test_samples_cover_v1_0_and_every_v1_1_data_mode_and_validate():
    records = load(SAMPLE_PATH)
    versions = [r["telemetry_version"] for r in records]
    assert versions[0] == "1.0" and "1.1" in versions
    assert versions == sorted(versions)  # a few v1.0 records first, then v1.1
    modes = {r["data_mode"] for r in records if r["telemetry_version"] == "1.1"}
    assert modes == {"mixed", "rollout", "replay"}
    replay = [r for r in records if r.get("data_mode") == "replay"]
    assert all(r["cycle_id"] == 0 and r["rollout_ticks"] == 0 for r in replay)
    validator = Validator()
    verdicts = [validator.validate_line(line) for line in SAMPLE_PATH.read_bytes().splitlines()]
    assert [v.status for v in verdicts] == ["valid"] * len(records)
    assert not any(v.warnings for v in verdicts)
