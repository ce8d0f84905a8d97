"""The pure pieces the Kafka consumer groups rely on: per-run watch state (drift: test_drift.py; DLQ: test_dead_letter.py)."""

from __future__ import annotations

import pytest

from avro_schemas.models import EpochSummary
from consumers.telemetry_watch import Watch, WatchStateError
from ppo_telemetry.demo import synthetic_run


def models(run_id: str, epochs: int, seed: int, unstable: bool) -> list[EpochSummary]:
    return [EpochSummary.from_dict(r) for r in synthetic_run(run_id, epochs, seed, unstable)]


def test_a_watch_resumed_run_by_run_emits_what_one_uninterrupted_watch_emits():
    a, b = models("a", 240, 1, True), models("b", 240, 43, True)
    whole = Watch()
    expected = [t for pair in zip(a, b) for r in pair for t in whole.observe(r)]
    assert expected
    first = Watch()
    got = [t for pair in zip(a[:148], b[:148]) for r in pair for t in first.observe(r)]  # mid-hold
    second = Watch()  # a new instance takes over, one run's state at a time (as from the state topic)
    for run_id in ("a", "b"):
        second.restore_run(run_id, first.run_state(run_id))
    got += [t for pair in zip(a[148:], b[148:]) for r in pair for t in second.observe(r)]
    assert got == expected


def test_watch_run_state_is_none_for_an_unknown_run_and_forgetting_resets_a_run():
    watch = Watch()
    assert watch.run_state("nobody") is None
    records = models("r", 240, 1, True)
    for record in records[:220]:
        watch.observe(record)
    assert any(rule["firing"] for rule in watch.run_state("r")["rules"].values())
    watch.forget_run("r")
    assert watch.run_state("r") is None
    watch.restore_run("r", None)  # a tombstone: nothing to restore
    assert watch.run_state("r") is None


@pytest.mark.parametrize(
    "entry", [{"rules": {"kl_spike": {"level": "high"}}}, {"rules": {"no_such_rule": {}}}, {"firing": []}, "x"]
)
def test_a_malformed_run_state_is_refused(entry):
    with pytest.raises(WatchStateError):
        Watch().restore_run("r", entry)

