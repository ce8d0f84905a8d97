"""Watch core (SPEC §6): each rule's firing/resolved transitions, the TOML rules file, and state snapshots."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from avro_schemas.errors import TelemetryError
from avro_schemas.models import EpochSummary
from consumers.telemetry_watch import (
    EntropyCollapseRule,
    KlSpikeRule,
    RulesConfig,
    RulesError,
    Transition,
    Watch,
    WatchStateError,
    load_rules,
    rules_from_mapping,
)


MakeRecord = Callable[..., EpochSummary]


def states(watch: Watch, records: list[EpochSummary]) -> list[tuple[int, str, str]]:
    """Feed `records` in order; every transition as (epoch, rule, state)."""
    return [(t.epoch, t.rule, t.state) for r in records for t in watch.observe(r)]


@pytest.mark.parametrize(
    ("rule", "name", "quiet", "tripped"),
    [
        ("kl_spike", "kl_divergence_max", 0.05, 0.0501),
        ("grad_explosion", "grad_norm_max", 10.0, 10.5),
        ("gae_sanity", "reward_advantage_corr", 0.0, -0.01),
    ],
)
def test_threshold_rule_fires_once_and_resolves_once(
    make_record: MakeRecord, rule: str, name: str, quiet: float, tripped: float
) -> None:
    # The threshold value itself does not fire: the comparisons are strict.
    values = [quiet, tripped, tripped, tripped, quiet, quiet, tripped]
    records = [make_record(epoch=epoch, **{name: value}) for epoch, value in enumerate(values)]
    assert states(Watch(), records) == [(1, rule, "firing"), (4, rule, "resolved"), (6, rule, "firing")]


def test_transition_carries_value_threshold_and_offset(make_record: MakeRecord) -> None:
    watch = Watch()
    (fired,) = watch.observe(make_record(epoch=3, grad_norm_max=12.5, log_stream_offset=41))
    assert fired == Transition(
        run_id="run", rule="grad_explosion", state="firing", epoch=3, log_stream_offset=41, value=12.5, threshold=10.0
    )
    (resolved,) = watch.observe(make_record(epoch=4, grad_norm_max=2.0, log_stream_offset=42))
    assert (resolved.state, resolved.value, resolved.threshold) == ("resolved", 2.0, 10.0)


def test_transition_json_has_the_spec_keys_in_order(make_record: MakeRecord) -> None:
    (fired,) = Watch().observe(make_record(epoch=2, kl_divergence_max=0.2, log_stream_offset=9))
    out = fired.to_json_dict()
    assert list(out) == ["run_id", "rule", "state", "epoch", "log_stream_offset", "value", "threshold"]
    assert out == {
        "run_id": "run", "rule": "kl_spike", "state": "firing", "epoch": 2,
        "log_stream_offset": 9, "value": 0.2, "threshold": 0.05,
    }  # fmt: skip
    assert json.loads(json.dumps(out)) == out


def test_entropy_collapse_threshold_is_relative_to_the_runs_first_entropy(make_record: MakeRecord) -> None:
    watch = Watch()
    # First entropy 2.0 -> threshold max(0.01, 0.1 * 2.0) = 0.2.
    entropies = [2.0, 0.25, 0.19, 0.1, 0.21]
    records = [make_record(epoch=e, batch_entropy_mean=h) for e, h in enumerate(entropies)]
    transitions = [t for r in records for t in watch.observe(r)]
    assert [(t.epoch, t.state, t.threshold) for t in transitions] == [(2, "firing", 0.2), (4, "resolved", 0.2)]
    assert transitions[0].value == 0.19


def test_entropy_collapse_floor_applies_when_first_entropy_is_small(make_record: MakeRecord) -> None:
    # First entropy 0.05 -> ratio gives 0.005, so the floor 0.01 is the threshold.
    records = [make_record(epoch=e, batch_entropy_mean=h) for e, h in enumerate([0.05, 0.011, 0.009])]
    watch = Watch()
    transitions = [t for r in records for t in watch.observe(r)]
    assert [(t.epoch, t.rule, t.state, t.threshold) for t in transitions] == [(2, "entropy_collapse", "firing", 0.01)]


def test_entropy_collapse_first_entropy_is_the_first_non_null_one(make_record: MakeRecord) -> None:
    watch = Watch()
    records = [
        make_record(epoch=0, batch_entropy_mean=None),
        make_record(epoch=1, batch_entropy_mean=1.0),  # first non-null: threshold 0.1
        make_record(epoch=2, batch_entropy_mean=0.05),
    ]
    assert states(watch, records) == [(2, "entropy_collapse", "firing")]
    assert watch.state_snapshot()["runs"]["run"]["first_batch_entropy_mean"] == 1.0


def test_entropy_collapse_first_entropy_is_per_run(make_record: MakeRecord) -> None:
    watch = Watch()
    records = [
        make_record("a", epoch=0, batch_entropy_mean=10.0),
        make_record("b", epoch=0, batch_entropy_mean=0.5),
        make_record("b", epoch=1, batch_entropy_mean=0.6),  # 0.6 < 1.0 would fire against run a's first
    ]
    assert states(watch, records) == []


def test_null_value_leaves_the_state_as_it_is(make_record: MakeRecord) -> None:
    watch = Watch()
    records = [
        make_record(epoch=0, reward_advantage_corr=-0.5),
        make_record(epoch=1, reward_advantage_corr=None),
        make_record(epoch=2, reward_advantage_corr=-0.4),
        make_record(epoch=3, reward_advantage_corr=None),
        make_record(epoch=4, reward_advantage_corr=0.3),
    ]
    assert states(watch, records) == [(0, "gae_sanity", "firing"), (4, "gae_sanity", "resolved")]


def test_v1_0_records_are_not_evaluated(make_record: MakeRecord) -> None:
    watch = Watch()
    assert watch.observe(make_record(epoch=0, version="1.0")) == []
    assert watch.state_snapshot()["runs"] == {}
    # A v1.0 record between two firing v1.1 records neither resolves nor re-fires.
    records = [
        make_record(epoch=1, kl_divergence_max=0.3),
        make_record(epoch=2, version="1.0"),
        make_record(epoch=3, kl_divergence_max=0.3),
    ]
    assert states(watch, records) == [(1, "kl_spike", "firing")]


def test_rules_state_is_per_run(make_record: MakeRecord) -> None:
    records = [make_record("a", epoch=0, grad_norm_max=50.0), make_record("b", epoch=0, grad_norm_max=50.0)]
    watch = Watch()
    transitions = [t for r in records for t in watch.observe(r)]
    assert [(t.run_id, t.state) for t in transitions] == [("a", "firing"), ("b", "firing")]


def test_transitions_of_one_record_come_in_rule_order(make_record: MakeRecord) -> None:
    record = make_record(
        epoch=1, batch_entropy_mean=0.001, kl_divergence_max=1.0, grad_norm_max=100.0, reward_advantage_corr=-1.0
    )
    watch = Watch()
    watch.observe(make_record(epoch=0))
    assert [t.rule for t in watch.observe(record)] == ["entropy_collapse", "kl_spike", "grad_explosion", "gae_sanity"]


def test_default_config_matches_the_spec() -> None:
    config = RulesConfig.default()
    assert config.entropy_collapse == EntropyCollapseRule(enabled=True, floor=0.01, ratio=0.1)
    assert config.kl_spike == KlSpikeRule(enabled=True, threshold=0.05)
    assert (config.grad_explosion.threshold, config.gae_sanity.threshold) == (10.0, 0.0)


def test_toml_overrides_a_threshold_and_keeps_other_defaults(tmp_path: Path, make_record: MakeRecord) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[kl_spike]\nthreshold = 0.03\n\n[entropy_collapse]\nfloor = 0\nratio = 0.5\n")
    config = load_rules(path)
    assert config.kl_spike == KlSpikeRule(enabled=True, threshold=0.03)
    assert config.entropy_collapse == EntropyCollapseRule(enabled=True, floor=0.0, ratio=0.5)
    assert isinstance(config.entropy_collapse.floor, float)
    assert config.grad_explosion == RulesConfig.default().grad_explosion
    assert states(Watch(config), [make_record(epoch=0, kl_divergence_max=0.04)]) == [(0, "kl_spike", "firing")]


def test_toml_disabled_rule_never_fires(tmp_path: Path, make_record: MakeRecord) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[grad_explosion]\nenabled = false\n")
    watch = Watch(load_rules(path))
    assert watch.observe(make_record(epoch=0, grad_norm_max=1e6, kl_divergence_max=0.5)) == [
        Transition("run", "kl_spike", "firing", 0, 0, 0.5, 0.05)
    ]


def test_empty_toml_is_the_default_config(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("")
    assert load_rules(path) == RulesConfig.default()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[kl_spkie]\nthreshold = 0.1\n", r"unknown rule 'kl_spkie'"),
        ("[kl_spike]\ntreshold = 0.1\n", r"rule \[kl_spike\] has unknown key 'treshold'"),
        ("[entropy_collapse]\nthreshold = 0.1\n", r"rule \[entropy_collapse\] has unknown key 'threshold'"),
        ("[kl_spike]\nthreshold = '0.1'\n", r"rule \[kl_spike\] key 'threshold' must be a number"),
        ("[kl_spike]\nthreshold = true\n", r"rule \[kl_spike\] key 'threshold' must be a number"),
        ("[kl_spike]\nenabled = 1\n", r"rule \[kl_spike\] key 'enabled' must be true or false"),
        ("[kl_spike]\nthreshold = inf\n", r"rule \[kl_spike\] key 'threshold' must be finite"),
        ("[gae_sanity]\nthreshold = nan\n", r"rule \[gae_sanity\] key 'threshold' must be finite"),
        ("[entropy_collapse]\nfloor = -0.1\n", r"rule \[entropy_collapse\] key 'floor' must be >= 0"),
        ("[entropy_collapse]\nratio = 1.5\n", r"rule \[entropy_collapse\] key 'ratio' must be in \[0, 1\]"),
        ("kl_spike = 0.1\n", r"rule \[kl_spike\] must be a table"),
        ("[kl_spike\nthreshold = 0.1\n", r"invalid TOML: .*line 1"),
    ],
    ids=[
        "unknown-rule", "unknown-key", "key-of-another-rule", "string-number", "bool-number", "int-enabled",
        "infinite", "nan", "negative-floor", "ratio-above-one", "rule-not-a-table", "bad-syntax",
    ],
)  # fmt: skip
def test_toml_error_is_one_line_naming_file_rule_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(RulesError, match=expected) as info:
        load_rules(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)
    assert isinstance(info.value, TelemetryError)


def test_missing_rules_file_is_a_rules_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(RulesError, match=r"absent\.toml: cannot read rules file") as info:
        load_rules(path)
    assert "\n" not in str(info.value)


def test_rules_from_mapping_accepts_ints_as_floats() -> None:
    config = rules_from_mapping({"grad_explosion": {"threshold": 5}, "gae_sanity": {"enabled": False}})
    assert config.grad_explosion.threshold == 5.0 and isinstance(config.grad_explosion.threshold, float)
    assert config.gae_sanity.enabled is False


def test_state_snapshot_round_trip_continues_without_repeats(make_record: MakeRecord) -> None:
    before = Watch()
    records = [
        make_record(epoch=0, batch_entropy_mean=2.0),
        make_record(epoch=1, batch_entropy_mean=0.1, kl_divergence_max=0.3),  # entropy_collapse and kl_spike fire
    ]
    assert states(before, records) == [(1, "entropy_collapse", "firing"), (1, "kl_spike", "firing")]
    snapshot = json.loads(json.dumps(before.state_snapshot()))
    assert snapshot["runs"] == {"run": {"first_batch_entropy_mean": 2.0, "firing": ["entropy_collapse", "kl_spike"]}}

    after = Watch(RulesConfig.default(), state=snapshot)
    later = [
        make_record(epoch=2, batch_entropy_mean=0.15, kl_divergence_max=0.3),  # both still firing: no repeat
        make_record(epoch=3, batch_entropy_mean=0.5, kl_divergence_max=0.01),  # 0.5 >= 0.1 * 2.0: both resolve
    ]
    assert states(after, later) == [(3, "entropy_collapse", "resolved"), (3, "kl_spike", "resolved")]
    assert after.state_snapshot()["runs"]["run"] == {"first_batch_entropy_mean": 2.0, "firing": []}


def test_restore_replaces_the_whole_state(make_record: MakeRecord) -> None:
    watch = Watch()
    watch.observe(make_record("old", epoch=0, grad_norm_max=99.0))
    watch.restore(Watch().state_snapshot())
    assert watch.state_snapshot()["runs"] == {}
    # Nothing firing any more, so the same condition fires again.
    assert states(watch, [make_record("old", epoch=1, grad_norm_max=99.0)]) == [(1, "grad_explosion", "firing")]


@pytest.mark.parametrize(
    "snapshot",
    [
        {},
        {"version": 99, "runs": {}},
        {"version": 1, "runs": []},
        {"version": 1, "runs": {"r": {"first_batch_entropy_mean": "high", "firing": []}}},
        {"version": 1, "runs": {"r": {"first_batch_entropy_mean": None, "firing": ["no_such_rule"]}}},
    ],
    ids=["empty", "wrong-version", "runs-not-object", "entropy-not-number", "unknown-rule"],
)
def test_restore_rejects_a_malformed_snapshot(snapshot: dict[str, Any]) -> None:
    with pytest.raises(WatchStateError):
        Watch(state=snapshot)
