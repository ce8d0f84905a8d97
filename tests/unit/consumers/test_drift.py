"""Drift v2 core (SPEC §5): windows by global_step, noise scales, verdicts, skip reasons, state, the group."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avro_schemas.codec import drift_record_codec
from avro_schemas.errors import TelemetryError
from avro_schemas.models import V1_1_ADDED_FIELDS, EpochSummary
from consumers.drift import (
    DRIFT_FIELDS,
    FIELD_SPECS,
    Baseline,
    BaselineError,
    DriftSettings,
    DriftStateError,
    DriftTracker,
)
from consumers.groups import DriftGroup
from consumers.validator import Verdict

MakeRecord = Callable[..., EpochSummary]
SPEC = {spec.name: spec for spec in FIELD_SPECS}
# windows of 1,000 steps; three in a row beyond 3 noise units make a field differ
SETTINGS = DriftSettings(window_steps=1000, threshold=3.0, consecutive=3, inflation=1.5, pool_windows=2)


def run(
    make_record: MakeRecord,
    run_id: str,
    steps: int = 10_000,
    cycle: int = 250,
    epochs_per_cycle: int = 4,
    version: str = "1.1",
    values: Callable[[int, int], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Record dicts of a run: `epochs_per_cycle` epochs at each `global_step` = cycle, 2 cycle, ... steps.

    `values(step, epoch)` gives field overrides; by default every field is the conftest's constant.
    """
    records = []
    epoch = 0
    for step in range(cycle, steps + 1, cycle):
        for _ in range(epochs_per_cycle):
            extra = values(step, epoch) if values else {}
            record = make_record(run_id, epoch=epoch, version=version, global_step=step, **extra)
            records.append(record.to_dict())
            epoch += 1
    return records


def wobble(seed: int) -> Callable[[int, int], dict[str, Any]]:
    """Healthy-looking noise: every compared field moves a little, deterministically per seed."""

    def values(step: int, epoch: int) -> dict[str, Any]:
        x = math.sin(epoch * 0.7 + seed * 1.3) * 0.5 + math.sin(step * 0.001 + seed) * 0.5
        return {
            "policy_loss": 0.01 * x,
            "value_loss": 0.5 * (1.2 + x),
            "kl_divergence": 0.01 * (1.5 + x),
            "kl_divergence_max": 0.02 * (1.5 + x),
            "clip_fraction": 0.1 + 0.02 * x,
            "explained_variance": 0.5 + 0.05 * x,
            "mean_episode_return": 100 + 3 * x,
            "batch_entropy_mean": 0.6 + 0.01 * x,
            "batch_entropy_std": 0.05 + 0.002 * x,
            "grad_norm_max": 2.0 + 0.3 * x,
            "reward_advantage_corr": 0.3 + 0.05 * x,
        }

    return values


def track(baseline: Baseline, records: list[dict[str, Any]]) -> tuple[DriftTracker, list[Any]]:
    tracker = DriftTracker(baseline)
    changes = [c for r in records if (c := tracker.observe(r)) is not None]
    return tracker, changes


# ------------------------------------------------------------------------------------------ fields


def test_drift_fields_are_the_training_metrics_without_epoch_duration():
    assert DRIFT_FIELDS == (
        "policy_loss", "value_loss", "kl_divergence", "clip_fraction", "explained_variance",
        "learning_rate", "mean_episode_return", "batch_entropy_mean", "batch_entropy_std",
        "grad_norm_max", "kl_divergence_max", "reward_advantage_corr", "rollout_ticks",
    )  # fmt: skip
    assert {name for name, spec in SPEC.items() if spec.log} == {
        "value_loss", "kl_divergence", "kl_divergence_max", "grad_norm_max", "learning_rate", "rollout_ticks",
        "clip_fraction",
    }
    assert {name for name, spec in SPEC.items() if spec.log_if_nonnegative} == {"batch_entropy_mean"}


@pytest.mark.parametrize(("entropy", "log_scale"), [(0.5, True), (-0.5, False)])
def test_entropy_is_compared_by_factors_only_where_the_baseline_s_is_never_negative(make_record, entropy, log_scale):
    records = run(make_record, "b", values=lambda step, epoch: {"batch_entropy_mean": entropy})
    baseline = Baseline.from_records(records, settings=SETTINGS)
    i = DRIFT_FIELDS.index("batch_entropy_mean")
    assert baseline.specs[i].log is log_scale
    assert baseline.level[i][3] == pytest.approx(math.log(entropy + 1e-3) if log_scale else entropy)
    # a discrete policy's entropy collapsing to 0 (500 times lower), a continuous one's falling by a nat
    low = 0.0 if log_scale else entropy - 1.0
    collapsed = run(make_record, "c", values=lambda step, epoch: {"batch_entropy_mean": low if step >= 3000 else entropy})
    field = track(baseline, collapsed)[0].summary("c").fields["batch_entropy_mean"]
    assert field.verdict == "differs" and field.direction == "lower" and field.first_step == 3000
    if log_scale:
        assert field.relative_change == pytest.approx(1e-3 / 0.501 - 1)


# ------------------------------------------------------------------------------------------ windows


def test_window_size_defaults_to_a_twentieth_of_the_baseline_but_at_least_one_cycle(make_record):
    baseline = Baseline.from_records(run(make_record, "b", steps=40_000, cycle=500))
    assert baseline.window_steps == 2000 and baseline.window_count == 21
    coarse = Baseline.from_records(run(make_record, "b", steps=40_000, cycle=4000))
    assert coarse.window_steps == 4000


def test_runs_align_by_global_step_whatever_their_epochs_per_cycle(make_record):
    def by_step(step: int, epoch: int) -> dict[str, Any]:
        # one level per 1,000-step window: whatever the steps a run samples in it, the same mean
        return {"value_loss": 1.0 + step // 1000, "policy_loss": 0.001 * (step // 1000 % 3)}

    baseline = Baseline.from_records(
        run(make_record, "b1", epochs_per_cycle=4, values=by_step) + run(make_record, "b2", epochs_per_cycle=4, values=by_step),
        settings=SETTINGS,
    )
    tracker, _ = track(baseline, run(make_record, "c", epochs_per_cycle=10, cycle=500, values=by_step))
    summary = tracker.summary("c")
    assert summary.windows_compared == 11  # steps 500 .. 10,000: windows 0 .. 10
    for name in ("value_loss", "policy_loss"):
        assert summary.fields[name].verdict == "same"
        assert summary.fields[name].effect == pytest.approx(0.0, abs=1e-9)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cycle=st.sampled_from([100, 250, 500, 1000]),
    base_epochs=st.integers(min_value=1, max_value=6),
    current_epochs=st.integers(min_value=1, max_value=6),
    current_steps=st.integers(min_value=1_000, max_value=12_000),
)
def test_a_run_like_its_baseline_is_same_whatever_its_epochs_per_cycle_and_length(
    make_record, cycle, base_epochs, current_epochs, current_steps
):
    def by_window(step: int, epoch: int) -> dict[str, Any]:
        level = step // 1000  # one level per window: a run sampling other steps of it has the same mean
        return {"value_loss": 1.0 + level, "mean_episode_return": 10.0 * level, "batch_entropy_mean": 0.9 - 0.05 * level}

    baseline = Baseline.from_records(
        run(make_record, "b1", cycle=cycle, epochs_per_cycle=base_epochs, values=by_window)
        + run(make_record, "b2", cycle=cycle, epochs_per_cycle=base_epochs, values=by_window),
        settings=SETTINGS,
    )
    current = run(make_record, "c", steps=current_steps, cycle=cycle, epochs_per_cycle=current_epochs, values=by_window)
    tracker, changes = track(baseline, current)
    summary = tracker.summary("c")
    assert summary.windows_compared == len({r["global_step"] // 1000 for r in current if r["global_step"] <= 10_000})
    for name in ("value_loss", "mean_episode_return", "batch_entropy_mean"):
        assert summary.fields[name].verdict == "same"
        assert summary.fields[name].effect == pytest.approx(0.0, abs=1e-9)
    assert all(c.summary.fields["value_loss"].verdict == "same" for c in changes)


def test_a_shorter_run_compares_its_windows_and_a_longer_one_stops_at_the_baseline_s_end(make_record):
    baseline = Baseline.from_records(run(make_record, "b", steps=10_000), settings=SETTINGS)
    short, _ = track(baseline, run(make_record, "short", steps=4_000))
    assert short.summary("short").windows_compared == 5  # steps 250 .. 4,000: windows 0 .. 4
    long, _ = track(baseline, run(make_record, "long", steps=30_000))
    assert long.summary("long").windows_compared == 11


def test_a_run_entirely_beyond_the_baseline_has_every_field_missing_in_baseline(make_record):
    baseline = Baseline.from_records(run(make_record, "b", steps=2_000), settings=SETTINGS)
    late = [r for r in run(make_record, "late", steps=9_000) if r["global_step"] >= 5_000]
    summary = track(baseline, late)[0].summary("late")
    assert summary.windows_compared == 0
    assert summary.skipped_fields == dict.fromkeys(DRIFT_FIELDS, "missing_in_baseline")
    assert all(v.verdict == "skipped" and v.effect is None for v in summary.fields.values())


def test_records_of_an_already_closed_window_are_not_counted(make_record):
    baseline = Baseline.from_records(run(make_record, "b"), settings=SETTINGS)
    records = run(make_record, "c", values=wobble(1))
    tracker, _ = track(baseline, records)
    before = tracker.summary("c")
    tracker.observe(dict(records[0], value_loss=1e6))  # step 250 again, long after its window closed
    assert tracker.summary("c") == before
    assert tracker.runs["c"].late_records == 1


# ------------------------------------------------------------------------------------------ noise scale


def test_two_baseline_runs_take_the_pooled_spread_between_them_as_noise(make_record):
    def level(offset: float) -> Callable[[int, int], dict[str, Any]]:
        return lambda step, epoch: {"mean_episode_return": 100.0 + offset}

    baseline = Baseline.from_records(
        run(make_record, "b1", values=level(-10)) + run(make_record, "b2", values=level(10)), settings=SETTINGS
    )
    i = DRIFT_FIELDS.index("mean_episode_return")
    # levels 90 and 110 in every window: sample variance 200, times inflation and sqrt(1 + 1/2)
    assert baseline.level[i][3] == pytest.approx(100.0)
    assert baseline.noise[i][3] == pytest.approx(1.5 * math.sqrt(1.5) * math.sqrt(200.0))
    # 60 above is ~2.3 noise units: the same; 120 above is ~4.6: differs
    assert track(baseline, run(make_record, "c", values=level(60)))[0].summary("c").fields[
        "mean_episode_return"].verdict == "same"
    far = track(baseline, run(make_record, "c", values=level(120)))[0].summary("c").fields["mean_episode_return"]
    assert (far.verdict, far.direction, far.first_step) == ("differs", "higher", 0)
    assert far.effect == pytest.approx(120 / baseline.noise[i][3])
    assert far.relative_change == pytest.approx(220 / 100 - 1)


def test_the_spread_pooled_over_the_whole_run_bounds_a_quiet_window_s_noise_from_below(make_record):
    def late_split(offset: float) -> Callable[[int, int], dict[str, Any]]:
        return lambda step, epoch: {"mean_episode_return": 100.0 + (offset if step >= 6_000 else 0.0)}

    baseline = Baseline.from_records(
        run(make_record, "b1", values=late_split(-10)) + run(make_record, "b2", values=late_split(10)), settings=SETTINGS
    )
    i = DRIFT_FIELDS.index("mean_episode_return")
    # windows 6-10 have variance 200 between the runs, windows 0-5 none: 1000 / 11 over the run
    whole_run = 1.5 * math.sqrt(1.5) * math.sqrt(5 * 200 / 11)
    assert baseline.noise[i][0] == pytest.approx(whole_run)
    assert baseline.noise[i][8] == pytest.approx(1.5 * math.sqrt(1.5) * math.sqrt(200))
    floor_only = Baseline.from_records(
        run(make_record, "b1", values=late_split(-10)) + run(make_record, "b2", values=late_split(10)),
        settings=DriftSettings(window_steps=1000, whole_run_weight=0.0),
    )
    assert floor_only.noise[i][0] == pytest.approx(SPEC["mean_episode_return"].floor + 0.05 * 100)


def test_one_baseline_run_takes_its_within_window_spread_as_noise(make_record):
    def alternating(step: int, epoch: int) -> dict[str, Any]:
        return {"policy_loss": 0.1 if epoch % 2 else 0.3}

    baseline = Baseline.from_records(run(make_record, "b", values=alternating), settings=SETTINGS)
    i = DRIFT_FIELDS.index("policy_loss")
    # 16 records per window, half 0.1 and half 0.3: sample variance 0.01 * 16/15
    assert baseline.noise[i][5] == pytest.approx(SETTINGS.single_run_inflation * math.sqrt(0.01 * 16 / 15))


def test_the_floor_keeps_a_constant_baseline_from_dividing_by_zero(make_record):
    baseline = Baseline.from_records(run(make_record, "b1") + run(make_record, "b2"), settings=SETTINGS)
    i = DRIFT_FIELDS.index("learning_rate")
    assert baseline.noise[i][2] == SPEC["learning_rate"].floor
    assert baseline.constant[i] == 3e-4


@pytest.mark.parametrize(("factor", "verdict"), [(1.0, "skipped"), (1.1, "same"), (3.0, "differs")])
def test_learning_rate_identical_between_seeds_is_decided_by_its_floor(make_record, factor, verdict):
    baseline = Baseline.from_records(run(make_record, "b1") + run(make_record, "b2"), settings=SETTINGS)
    current = run(make_record, "c", values=lambda step, epoch: {"learning_rate": 3e-4 * factor})
    field = track(baseline, current)[0].summary("c").fields["learning_rate"]
    assert field.verdict == verdict
    if verdict == "differs":
        assert field.direction == "higher" and field.relative_change == pytest.approx(2.0)
        assert field.effect == pytest.approx(math.log(3.0) / SPEC["learning_rate"].floor)


# ------------------------------------------------------------------------------------------ verdicts


def shifted(seed: int, from_step: int, factor: float, until_step: int | None = None):
    base = wobble(seed)

    def values(step: int, epoch: int) -> dict[str, Any]:
        out = base(step, epoch)
        if step >= from_step and (until_step is None or step < until_step):
            out["value_loss"] *= factor
        return out

    return values


def test_a_lasting_shift_differs_from_its_first_window_on_and_the_change_is_announced_once(make_record):
    baseline = Baseline.from_records(
        run(make_record, "b1", values=wobble(1)) + run(make_record, "b2", values=wobble(2)), settings=SETTINGS
    )
    tracker, changes = track(baseline, run(make_record, "c", values=shifted(3, 4_000, 100.0)))
    # the first closed window gives every field a verdict; the shift changes value_loss once
    assert [c.changed_fields for c in changes] == [DRIFT_FIELDS, ("value_loss",)]
    first, shift = changes
    assert first.summary.windows_compared == 1 and first.summary.global_step == 750
    assert shift.summary.global_step == 6_750  # the last record of the third shifted window
    verdict = shift.summary.fields["value_loss"]
    assert (verdict.verdict, verdict.first_step, verdict.direction) == ("differs", 4_000, "higher")
    assert verdict.relative_change == pytest.approx(99.0, rel=0.2)  # x100 against the mean of other seeds
    final = tracker.summary("c").fields["value_loss"]
    assert final.first_step == 4_000 and final.effect > shift.summary.fields["value_loss"].effect * 0.99


def test_a_shift_shorter_than_the_consecutive_windows_stays_same(make_record):
    baseline = Baseline.from_records(
        run(make_record, "b1", values=wobble(1)) + run(make_record, "b2", values=wobble(2)), settings=SETTINGS
    )
    tracker, changes = track(baseline, run(make_record, "c", values=shifted(3, 4_000, 100.0, until_step=6_000)))
    field = tracker.summary("c").fields["value_loss"]
    assert field.verdict == "same" and field.effect > 3.0  # beyond the threshold, for two windows only
    assert field.first_step is None and field.relative_change is None
    assert [c.changed_fields for c in changes] == [DRIFT_FIELDS]


def test_a_differing_field_stays_differs_when_it_comes_back(make_record):
    baseline = Baseline.from_records(
        run(make_record, "b1", values=wobble(1)) + run(make_record, "b2", values=wobble(2)), settings=SETTINGS
    )
    tracker, _ = track(baseline, run(make_record, "c", values=shifted(3, 2_000, 0.001, until_step=6_000)))
    field = tracker.summary("c").fields["value_loss"]
    assert (field.verdict, field.direction, field.first_step) == ("differs", "lower", 2_000)
    assert field.effect < -3.0 and field.relative_change == pytest.approx(-0.999, abs=0.01)


def test_healthy_copies_with_other_noise_are_same_everywhere(make_record):
    baseline = Baseline.from_records(
        run(make_record, "b1", values=wobble(1)) + run(make_record, "b2", values=wobble(2)), settings=SETTINGS
    )
    summary = track(baseline, run(make_record, "c", values=wobble(3)))[0].summary("c")
    verdicts = {name: v.verdict for name, v in summary.fields.items()}
    assert verdicts == {
        **dict.fromkeys(DRIFT_FIELDS, "same"), "learning_rate": "skipped", "rollout_ticks": "skipped",
    }
    assert summary.skipped_fields == {"learning_rate": "constant", "rollout_ticks": "constant"}


# ------------------------------------------------------------------------------------------ skips


def test_v1_0_current_against_v1_1_baseline_has_the_v1_1_fields_missing_in_current(make_record):
    baseline = Baseline.from_records(run(make_record, "b", values=wobble(1)), settings=SETTINGS)
    summary = track(baseline, run(make_record, "old", version="1.0", values=lambda s, e: {}))[0].summary("old")
    missing = [name for name in DRIFT_FIELDS if name in V1_1_ADDED_FIELDS]
    assert {n: r for n, r in summary.skipped_fields.items() if r != "constant"} == dict.fromkeys(
        missing, "missing_in_current"
    )


def test_v1_1_current_against_v1_0_baseline_has_the_v1_1_fields_missing_in_baseline(make_record):
    baseline = Baseline.from_records(run(make_record, "b", version="1.0", values=lambda s, e: {}), settings=SETTINGS)
    summary = track(baseline, run(make_record, "new", values=wobble(1)))[0].summary("new")
    assert {n: r for n, r in summary.skipped_fields.items() if r != "constant"} == dict.fromkeys(
        [name for name in DRIFT_FIELDS if name in V1_1_ADDED_FIELDS], "missing_in_baseline"
    )


def test_a_field_null_in_some_windows_is_compared_where_both_have_it(make_record):
    def early_null(step: int, epoch: int) -> dict[str, Any]:
        return {"mean_episode_return": None if step < 3_000 else 50.0 + epoch % 3}

    baseline = Baseline.from_records(run(make_record, "b1", values=early_null), settings=SETTINGS)
    current = run(make_record, "c", values=lambda s, e: {"mean_episode_return": 51.0 if s < 6_000 else None})
    field = track(baseline, current)[0].summary("c").fields["mean_episode_return"]
    assert field.verdict == "same"
    never = run(make_record, "n", values=lambda s, e: {"mean_episode_return": 50.0 if s < 2_000 else None})
    assert track(baseline, never)[0].summary("n").skipped_fields["mean_episode_return"] == "missing_in_current"


# ------------------------------------------------------------------------------------------ baseline


def test_baseline_groups_by_run_and_picks_named_runs(make_record):
    records = run(make_record, "a") + run(make_record, "b") + run(make_record, "c")
    assert Baseline.from_records(records, settings=SETTINGS).run_ids == ("a", "b", "c")
    picked = Baseline.from_records(records, ["c", "a"], settings=SETTINGS)
    assert picked.run_ids == ("c", "a") and picked.run_id == "c,a"
    with pytest.raises(BaselineError) as info:
        Baseline.from_records(records, ["a", "zzz"])
    assert str(info.value) == "baseline run 'zzz' not found; the baseline holds a, b, c"
    assert isinstance(info.value, TelemetryError)
    with pytest.raises(BaselineError, match="no records"):
        Baseline.from_records([])


def test_a_re_sent_baseline_record_counts_once(make_record):
    records = run(make_record, "b", values=wobble(1))
    once = Baseline.from_records(records, settings=SETTINGS)
    twice = Baseline.from_records(records + [dict(records[5], value_loss=1e9)], settings=SETTINGS)
    assert twice.level != once.level  # the later copy replaces the earlier, it is not added
    assert len(Baseline.from_records(records + records[:5], settings=SETTINGS).level) == len(once.level)
    assert Baseline.from_records(records + records[:5], settings=SETTINGS) == once


def test_baseline_runs_are_not_compared_with_themselves(make_record):
    records = run(make_record, "b1", values=wobble(1))
    tracker, changes = track(Baseline.from_records(records, settings=SETTINGS), records)
    assert changes == [] and tracker.summaries() == []


# ------------------------------------------------------------------------------------------ output


def test_summary_json_has_the_spec_keys_and_every_field(make_record):
    baseline = Baseline.from_records(
        run(make_record, "b1", values=wobble(1)) + run(make_record, "b2", values=wobble(2)), settings=SETTINGS
    )
    doc = track(baseline, run(make_record, "c", values=shifted(3, 4_000, 100.0)))[0].summary("c").to_json_dict()
    assert list(doc) == ["run_id", "baseline_run_ids", "windows_compared", "fields", "skipped_fields"]
    assert doc["baseline_run_ids"] == ["b1", "b2"]
    assert list(doc["fields"]) == list(DRIFT_FIELDS)
    assert all(list(f) == ["verdict", "first_step", "direction", "effect", "relative_change"] for f in doc["fields"].values())
    assert doc["fields"]["learning_rate"] == {
        "verdict": "skipped", "first_step": None, "direction": None, "effect": None, "relative_change": None,
    }
    assert doc["fields"]["value_loss"]["verdict"] == "differs"
    assert json.loads(json.dumps(doc)) == doc


def test_drift_records_round_trip_through_the_v1_1_schema(make_record):
    baseline = Baseline.from_records(
        run(make_record, "b1", values=wobble(1)) + run(make_record, "b2", values=wobble(2)), settings=SETTINGS
    )
    tracker, changes = track(baseline, run(make_record, "c", values=shifted(3, 4_000, 100.0)))
    codec = drift_record_codec()
    for record in [c.to_record_dict() for c in changes] + [tracker.summary("c").to_record_dict("summary")]:
        assert codec.decode(codec.encode(record)) == record
    change = changes[-1].to_record_dict()
    assert change["kind"] == "verdict_change" and change["changed_fields"] == ["value_loss"]
    assert change["baseline_run_id"] == "b1,b2" and change["drifts"]["value_loss"] > 3.0
    assert (change["epoch"], change["log_stream_offset"]) == (107, 107)


# ------------------------------------------------------------------------------------------ state


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=0, max_value=159), max_size=4), factor=st.sampled_from([1.0, 50.0, 0.01]))
def test_a_tracker_restored_from_json_state_at_any_point_gives_what_one_uninterrupted_gives(make_record, cuts, factor):
    baseline = Baseline.from_records(
        run(make_record, "b1", values=wobble(1)) + run(make_record, "b2", values=wobble(2)), settings=SETTINGS
    )
    a = run(make_record, "a", values=shifted(3, 4_000, factor))
    c = run(make_record, "c", values=shifted(4, 2_000, 1 / factor))
    records = [r for pair in zip(a, c) for r in pair]
    whole, expected = track(baseline, records)
    tracker = DriftTracker(baseline)
    got = []
    for index, record in enumerate(records):
        if index in cuts:
            saved = {run_id: json.loads(json.dumps(tracker.run_state(run_id))) for run_id in ("a", "c")}
            tracker = DriftTracker(baseline)
            for run_id, state in saved.items():
                tracker.restore_run(run_id, state)
        if (change := tracker.observe(record)) is not None:
            got.append(change)
    assert got == expected
    assert tracker.summaries() == whole.summaries()


def test_a_state_of_another_baseline_or_malformed_is_refused(make_record):
    records = run(make_record, "c", values=wobble(3))
    one = Baseline.from_records(run(make_record, "b1"), settings=SETTINGS)
    other = Baseline.from_records(run(make_record, "b2"), settings=SETTINGS)
    tracker, _ = track(one, records)
    state = tracker.run_state("c")
    with pytest.raises(DriftStateError, match="saved against baseline"):
        DriftTracker(other).restore_run("c", state)
    for broken in ({**state, "fields": state["fields"][:3]}, {**state, "sums": "x"}, {"baseline": state["baseline"]}, [1]):
        with pytest.raises(DriftStateError):
            DriftTracker(one).restore_run("c", broken)
    assert DriftTracker(one).run_state("nobody") is None


# ------------------------------------------------------------------------------------------ the group


class Clock:
    """A settable clock for the group's idle timing."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed(group: DriftGroup, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    codec = group.codec
    out = []
    for record in records:
        verdict = Verdict("valid", record["telemetry_version"], record["run_id"], record.get("log_stream_offset"), [], [], record)
        out += [codec.decode(o.value) for o in group.on_record(None, verdict)]
    return out


def idle(group: DriftGroup, now: float) -> dict[str, list[dict[str, Any]]]:
    return {run_id: [group.codec.decode(o.value) for o in outs] for run_id, outs in group.on_idle(now).items()}


def test_the_group_emits_verdict_changes_then_one_summary_per_idle_period(make_record):
    clock = Clock()
    base = run(make_record, "b1", values=wobble(1)) + run(make_record, "b2", values=wobble(2))
    group = DriftGroup(Baseline.from_records(base, settings=SETTINGS), idle_seconds=30, clock=clock)
    current = run(make_record, "c", values=shifted(3, 4_000, 100.0))
    assert feed(group, base) == []  # the baseline's own records
    changes = feed(group, current[:120])  # up to step 7,500: the shift's third window is closed
    assert [c["kind"] for c in changes] == ["verdict_change"] * 2
    assert idle(group, 29.9) == {}
    (summary,) = idle(group, 30.0)["c"]
    assert summary["kind"] == "summary" and summary["changed_fields"] == []
    assert summary["log_stream_offset"] == 119 and summary["fields"]["value_loss"]["verdict"] == "differs"
    assert idle(group, 100.0) == {}  # once per idle period
    clock.now = 200.0
    feed(group, current[120:])
    assert idle(group, 229.0) == {}
    assert idle(group, 230.0)["c"][0]["log_stream_offset"] == len(current) - 1


def test_the_group_state_carries_whether_the_summary_went_out(make_record):
    clock = Clock()
    baseline = Baseline.from_records(run(make_record, "b1", values=wobble(1)), settings=SETTINGS)
    group = DriftGroup(baseline, idle_seconds=5, clock=clock)
    feed(group, run(make_record, "c", values=wobble(2)))
    before = json.loads(json.dumps(group.run_state("c")))
    assert before["summarised"] is False
    assert list(idle(group, 5.0)) == ["c"]
    after = json.loads(json.dumps(group.run_state("c")))
    assert after["summarised"] is True
    # a restart after the summary's transaction: no second summary; before it: the summary comes again
    clock.now = 1000.0
    restarted = DriftGroup(baseline, idle_seconds=5, clock=clock)
    restarted.restore_run("c", after)
    assert idle(restarted, 2000.0) == {}
    restarted.restore_run("c", before)
    assert idle(restarted, 1004.0) == {} and list(idle(restarted, 1005.0)) == ["c"]
    restarted.forget_run("c")
    assert restarted.run_state("c") is None and idle(restarted, 9999.0) == {}
    with pytest.raises(DriftStateError):
        restarted.restore_run("c", {"nothing": 1})
