"""`make samples` is reproducible: the committed sample stream is what the seeded runs produce."""

from __future__ import annotations

import json

from consumers.validator import Validator
from ppo_telemetry.samples import SAMPLE_PATH, TIMING_FIELDS, generate_samples


def load(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}


def test_regenerated_samples_equal_the_committed_ones_but_for_timing(tmp_path):
    out = tmp_path / "samples.jsonl"
    count = generate_samples(out)
    fresh, committed = load(out), load(SAMPLE_PATH)
    assert count == len(fresh) == len(committed)
    assert [list(r) for r in fresh] == [list(r) for r in committed]  # same keys, same order
    assert [without_timing(r) for r in fresh] == [without_timing(r) for r in committed]


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
