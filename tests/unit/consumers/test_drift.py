"""Drift core (SPEC §5): values against hand computations, skip reasons and their order, the baseline choice."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from avro_schemas.errors import TelemetryError
from avro_schemas.models import V1_1_ADDED_FIELDS, EpochSummary
from consumers.drift import (
    DRIFT_FIELDS,
    Baseline,
    BaselineError,
    DriftTracker,
    FieldDrift,
)


MakeRecord = Callable[..., EpochSummary]
Series = Callable[[str, str, list[Any]], list[EpochSummary]]


@pytest.fixture
def series(make_record: MakeRecord) -> Series:
    """`series(run_id, field, values)`: records of epochs 0, 1, ... with `field` taking `values` in turn."""

    def build(run_id: str, name: str, values: list[Any]) -> list[EpochSummary]:
        return [make_record(run_id, epoch=epoch, **{name: value}) for epoch, value in enumerate(values)]

    return build


def track(baseline: list[EpochSummary], current: list[EpochSummary]) -> DriftTracker:
    """A tracker against `baseline` that has observed every record of `current`."""
    tracker = DriftTracker(Baseline.from_records(baseline))
    for record in current:
        tracker.observe(record)
    return tracker


def test_drift_fields_follow_the_spec_order() -> None:
    assert DRIFT_FIELDS == (
        "policy_loss", "value_loss", "kl_divergence", "clip_fraction", "explained_variance",
        "learning_rate", "mean_episode_return", "epoch_duration_sec", "batch_entropy_mean",
        "batch_entropy_std", "grad_norm_max", "kl_divergence_max", "reward_advantage_corr",
        "rollout_ticks",
    )  # fmt: skip


def test_relative_drift_matches_hand_computation_per_epoch(make_record: MakeRecord) -> None:
    baseline = make_record("base", policy_loss=-2.0, value_loss=4.0, rollout_ticks=200)
    tracker = DriftTracker(Baseline.from_records([baseline]))
    current = make_record("cur", policy_loss=-1.0, value_loss=3.0, rollout_ticks=250, log_stream_offset=7)
    drift = tracker.observe(current)
    assert drift is not None
    # (-1 - -2) / |-2| = 0.5; (3 - 4) / 4 = -0.25; (250 - 200) / 200 = 0.25
    assert drift.drifts["policy_loss"] == pytest.approx(0.5)
    assert drift.drifts["value_loss"] == pytest.approx(-0.25)
    assert drift.drifts["rollout_ticks"] == pytest.approx(0.25)
    assert type(drift.drifts["rollout_ticks"]) is float
    assert drift.drifts["kl_divergence"] == 0.0
    assert (drift.run_id, drift.baseline_run_id, drift.epoch, drift.log_stream_offset) == ("cur", "base", 0, 7)
    assert list(drift.drifts) == list(DRIFT_FIELDS)
    assert drift.skipped_fields == {}


def test_summary_mean_is_signed_and_max_is_absolute(make_record: MakeRecord) -> None:
    baseline = [make_record("base", epoch=e, policy_loss=2.0) for e in range(3)]
    current = [
        make_record("cur", epoch=0, policy_loss=3.0),  # +0.5
        make_record("cur", epoch=1, policy_loss=1.0),  # -0.5
        make_record("cur", epoch=2, policy_loss=0.5),  # -0.75
    ]
    summary = track(baseline, current).summary("cur")
    assert summary.fields["policy_loss"] == FieldDrift(
        compared=3, mean_relative_drift=pytest.approx((0.5 - 0.5 - 0.75) / 3), max_abs_relative_drift=0.75
    )
    assert summary.epochs_compared == 3


def test_epochs_are_aligned_by_epoch_and_unmatched_epochs_are_not_compared(make_record: MakeRecord) -> None:
    baseline = [make_record("base", epoch=0, value_loss=1.0), make_record("base", epoch=2, value_loss=4.0)]
    tracker = DriftTracker(Baseline.from_records(baseline))
    assert tracker.observe(make_record("cur", epoch=2, value_loss=5.0)) is not None
    assert tracker.observe(make_record("cur", epoch=1, value_loss=100.0)) is None
    assert tracker.observe(make_record("cur", epoch=0, value_loss=3.0)) is not None
    summary = tracker.summary("cur")
    assert summary.epochs_compared == 2
    # epoch 2: (5-4)/4 = 0.25; epoch 0: (3-1)/1 = 2.0
    assert summary.fields["value_loss"].mean_relative_drift == pytest.approx(1.125)
    assert summary.fields["value_loss"].max_abs_relative_drift == pytest.approx(2.0)


def test_baseline_later_record_of_an_epoch_replaces_the_earlier(make_record: MakeRecord) -> None:
    records = [make_record("base", epoch=0, policy_loss=1.0), make_record("base", epoch=0, policy_loss=2.0)]
    baseline = Baseline.from_records(records)
    assert baseline.at(0) is not None and baseline.at(0).policy_loss == 2.0
    assert len(baseline.records) == 1


def test_replaced_current_epoch_is_not_double_counted(make_record: MakeRecord) -> None:
    baseline = [make_record("base", epoch=0, policy_loss=1.0), make_record("base", epoch=1, policy_loss=1.0)]
    current = [
        make_record("cur", epoch=0, policy_loss=2.0),  # +1.0, replaced below
        make_record("cur", epoch=1, policy_loss=1.5),  # +0.5
        make_record("cur", epoch=0, policy_loss=1.25),  # +0.25
    ]
    summary = track(baseline, current).summary("cur")
    assert summary.epochs_compared == 2
    assert summary.fields["policy_loss"].compared == 2
    assert summary.fields["policy_loss"].mean_relative_drift == pytest.approx(0.375)
    assert summary.fields["policy_loss"].max_abs_relative_drift == pytest.approx(0.5)


def test_skip_missing_in_baseline_when_baseline_never_has_the_field(series: Series) -> None:
    baseline = series("base", "explained_variance", [None, None])
    current = series("cur", "explained_variance", [0.5, 0.5])
    summary = track(baseline, current).summary("cur")
    assert summary.skipped_fields == {"explained_variance": "missing_in_baseline"}
    assert "explained_variance" not in summary.fields


def test_skip_missing_in_current_when_current_is_null_wherever_baseline_has_a_value(series: Series) -> None:
    baseline = series("base", "mean_episode_return", [5.0, None])
    # Epoch 1 has a current value but no baseline value, so it cannot count either.
    current = series("cur", "mean_episode_return", [None, 7.0])
    summary = track(baseline, current).summary("cur")
    assert summary.skipped_fields == {"mean_episode_return": "missing_in_current"}


def test_skip_zero_baseline_when_every_pair_has_a_zero_baseline(series: Series) -> None:
    baseline = series("base", "clip_fraction", [0.0, 0.0])
    current = series("cur", "clip_fraction", [0.1, 0.2])
    assert track(baseline, current).summary("cur").skipped_fields == {"clip_fraction": "zero_baseline"}


def test_skip_reason_order_baseline_before_current_before_zero(series: Series) -> None:
    # Epoch 0: baseline zero, current null -> the epoch says missing_in_current, not zero_baseline.
    # Epoch 1: baseline null, current present -> missing_in_baseline for the epoch.
    baseline = series("base", "explained_variance", [0.0, None])
    current = series("cur", "explained_variance", [None, 0.5])
    tracker = DriftTracker(Baseline.from_records(baseline))
    first = tracker.observe(current[0])
    second = tracker.observe(current[1])
    assert first is not None and first.skipped_fields == {"explained_variance": "missing_in_current"}
    assert second is not None and second.skipped_fields == {"explained_variance": "missing_in_baseline"}
    # Some epoch has a baseline value, so not missing_in_baseline; no such epoch has a current value.
    assert tracker.summary("cur").skipped_fields == {"explained_variance": "missing_in_current"}


def test_skip_reason_zero_baseline_wins_over_a_null_current_elsewhere(series: Series) -> None:
    baseline = series("base", "explained_variance", [0.0, 0.5])
    current = series("cur", "explained_variance", [0.3, None])
    assert track(baseline, current).summary("cur").skipped_fields == {"explained_variance": "zero_baseline"}


def test_field_counted_in_one_epoch_is_not_skipped(series: Series) -> None:
    baseline = series("base", "explained_variance", [None, 0.5])
    current = series("cur", "explained_variance", [0.3, 0.25])
    summary = track(baseline, current).summary("cur")
    assert summary.skipped_fields == {}
    assert summary.fields["explained_variance"] == FieldDrift(1, -0.5, 0.5)


def test_zero_baseline_threshold_is_exclusive_at_1e_12(series: Series) -> None:
    tracker = DriftTracker(Baseline.from_records(series("base", "policy_loss", [1e-12, -2e-12])))
    at_bound, above = (tracker.observe(record) for record in series("cur", "policy_loss", [1.0, 0.0]))
    assert at_bound is not None and at_bound.skipped_fields["policy_loss"] == "zero_baseline"
    assert above is not None and above.drifts["policy_loss"] == pytest.approx(1.0)  # (0 - -2e-12) / 2e-12
    assert tracker.summary("cur").fields["policy_loss"].compared == 1


def test_v1_0_current_against_v1_1_baseline_skips_v1_1_fields_as_missing_in_current(
    make_record: MakeRecord,
) -> None:
    baseline = [make_record("base", epoch=0), make_record("base", epoch=1)]
    current = [make_record("old", epoch=0, version="1.0"), make_record("old", epoch=1, version="1.0")]
    summary = track(baseline, current).summary("old")
    v1_1_drift_fields = [name for name in DRIFT_FIELDS if name in V1_1_ADDED_FIELDS]
    assert summary.skipped_fields == dict.fromkeys(v1_1_drift_fields, "missing_in_current")
    assert list(summary.fields) == [name for name in DRIFT_FIELDS if name not in V1_1_ADDED_FIELDS]


def test_v1_1_current_against_v1_0_baseline_skips_v1_1_fields_as_missing_in_baseline(
    make_record: MakeRecord,
) -> None:
    summary = track([make_record("base", version="1.0")], [make_record("new")]).summary("new")
    assert set(summary.skipped_fields.values()) == {"missing_in_baseline"}
    assert list(summary.skipped_fields) == [name for name in DRIFT_FIELDS if name in V1_1_ADDED_FIELDS]


def test_run_without_compared_epochs_has_every_field_missing_in_baseline(make_record: MakeRecord) -> None:
    tracker = DriftTracker(Baseline.from_records([make_record("base", epoch=0)]))
    assert tracker.observe(make_record("cur", epoch=5)) is None
    summary = tracker.summary("cur")
    assert summary.epochs_compared == 0
    assert summary.fields == {}
    assert summary.skipped_fields == dict.fromkeys(DRIFT_FIELDS, "missing_in_baseline")


def test_summaries_are_one_per_current_run_in_first_seen_order(make_record: MakeRecord) -> None:
    tracker = DriftTracker(Baseline.from_records([make_record("base", epoch=0)]))
    for run_id in ["b", "a", "b", "c"]:
        tracker.observe(make_record(run_id, epoch=0))
    assert [s.run_id for s in tracker.summaries()] == ["b", "a", "c"]
    with pytest.raises(KeyError):
        tracker.summary("never-seen")


def test_summary_json_has_the_spec_keys_in_order_and_round_trips(make_record: MakeRecord) -> None:
    baseline = [make_record("base", epoch=0, explained_variance=None, value_loss=2.0)]
    summary = track(baseline, [make_record("cur", value_loss=3.0)]).summary("cur")
    out = summary.to_json_dict()
    assert list(out) == ["run_id", "baseline_run_id", "epochs_compared", "fields", "skipped_fields"]
    assert out["fields"]["value_loss"] == {"compared": 1, "mean_relative_drift": 0.5, "max_abs_relative_drift": 0.5}
    assert list(out["fields"]["value_loss"]) == ["compared", "mean_relative_drift", "max_abs_relative_drift"]
    assert list(out["fields"]) == [name for name in DRIFT_FIELDS if name != "explained_variance"]
    assert out["skipped_fields"] == {"explained_variance": "missing_in_baseline"}
    assert json.loads(json.dumps(out)) == out


def test_baseline_with_several_runs_needs_a_run_id(make_record: MakeRecord) -> None:
    records = [make_record("a"), make_record("b"), make_record("c"), make_record("a", epoch=1)]
    with pytest.raises(BaselineError) as info:
        Baseline.from_records(records)
    assert str(info.value) == "baseline holds 3 runs (a, b, c); pick one with --baseline-run"
    assert isinstance(info.value, TelemetryError)
    picked = Baseline.from_records(records, run_id="a")
    assert picked.run_id == "a" and sorted(picked.records) == [0, 1]


def test_baseline_run_id_absent_names_it(make_record: MakeRecord) -> None:
    with pytest.raises(BaselineError, match="'zzz' not found"):
        Baseline.from_records([make_record("a")], run_id="zzz")


def test_empty_baseline_is_an_error() -> None:
    with pytest.raises(BaselineError, match="no records"):
        Baseline.from_records([])


def test_epoch_drift_is_frozen(make_record: MakeRecord) -> None:
    drift = DriftTracker(Baseline.from_records([make_record("base")])).observe(make_record("cur"))
    assert drift is not None
    with pytest.raises(AttributeError):
        drift.epoch = 3  # type: ignore[misc]
