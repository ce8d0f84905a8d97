"""Watch core (SPEC §6, alerts v2): each rule's condition, the firing/resolved machine (hold, clear, cooldown,
warm-up, nulls), snapshots and restore, the TOML rules file, and the transition's evidence."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avro_schemas.errors import TelemetryError
from avro_schemas.models import EpochSummary
from consumers.telemetry_watch import (
    RULE_NAMES,
    RulesConfig,
    RulesError,
    Transition,
    Watch,
    WatchStateError,
    load_rules,
    rules_from_mapping,
)

from .conftest import epoch_summary

MakeRecord = Callable[..., EpochSummary]

SPEC_KEYS = [
    "run_id", "rule", "state", "severity", "epoch", "global_step", "log_stream_offset", "value", "reference",
    "since_epoch", "summary",
]


def only(rule: str, **settings_: Any) -> RulesConfig:
    """A config with every rule disabled but `rule`, set as given."""
    tables: dict[str, Any] = {name: {"enabled": False} for name in RULE_NAMES if name != rule}
    tables[rule] = settings_
    return rules_from_mapping(tables)


def states(watch: Watch, records: list[EpochSummary]) -> list[tuple[int, str, str]]:
    """Feed `records` in order; every transition as (epoch, rule, state)."""
    return [(t.epoch, t.rule, t.state) for r in records for t in watch.observe(r)]


def corr_records(values: list[float | None], start: int = 0) -> list[EpochSummary]:
    """One record per cycle carrying `reward_advantage_corr` (gae_sanity's value); None is a null."""
    return [epoch_summary(epoch=start + i, reward_advantage_corr=v) for i, v in enumerate(values)]


# The machine is shared by every rule; clip_inactive (a fixed condition: the policy moved, nothing was
# clipped) makes its behaviour easy to read. One record per cycle: T trips it, Q is quiet, None is a null.
Q, T = "quiet", "tripped"


def machine_records(values: list[str | None]) -> list[EpochSummary]:
    """One record per cycle; T: no sample clipped with KL 0.05, Q: some clipped, None: a null KL."""
    return [
        epoch_summary(epoch=i, clip_fraction=0.0 if v == T else 0.1, kl_divergence_max=None if v is None else 0.05)
        for i, v in enumerate(values)
    ]


def machine(hold: int = 2, clear: int = 2, cooldown: int = 0, warmup: int = 0) -> Watch:
    return Watch(only("clip_inactive", hold=hold, clear=clear, cooldown=cooldown, warmup=warmup))


# --- the machine ----------------------------------------------------------------------------------


def test_fires_only_after_the_condition_held_hold_consecutive_evaluations() -> None:
    records = machine_records([T, Q, T, T, Q, T, T, T])
    assert states(machine(hold=3), records) == [(7, "clip_inactive", "firing")]


def test_resolves_only_after_clear_consecutive_false_evaluations() -> None:
    records = machine_records([T, T, Q, T, Q, Q, Q])
    assert states(machine(hold=2, clear=3), records) == [(1, "clip_inactive", "firing"), (6, "clip_inactive", "resolved")]


def test_no_new_firing_within_the_cooldown_after_resolving() -> None:
    # resolved at 3; cooldown 4 evaluations (4..7): the condition holding at 4-5 does not fire, at 8-9 it does
    records = machine_records([T, T, Q, Q, T, T, Q, Q, T, T])
    assert states(machine(hold=2, clear=2, cooldown=4), records) == [
        (1, "clip_inactive", "firing"), (3, "clip_inactive", "resolved"), (9, "clip_inactive", "firing"),
    ]


def test_condition_held_through_the_cooldown_fires_as_soon_as_it_ends() -> None:
    # one record per cycle; resolved in cycle 3, cooldown 3: cycles 4 and 5 may not fire, cycle 6 may
    records = machine_records([T, T, Q, Q, T, T, T, T, T])
    assert states(machine(hold=2, clear=2, cooldown=3), records)[-1] == (6, "clip_inactive", "firing")


def test_cooldown_and_warmup_count_cycles_not_epochs(make_record: MakeRecord) -> None:
    # clip_inactive is evaluated per epoch, 4 epochs a cycle here: a warm-up of 2 cycles is 8 epochs
    watch = Watch(only("clip_inactive", warmup=2, hold=1, clear=1, cooldown=2))
    clipped = [0.0] * 12 + [0.1] * 2 + [0.0] * 6
    records = [make_record(epoch=e, global_step=100 * (e // 4 + 1), clip_fraction=c, kl_divergence_max=0.05)
               for e, c in enumerate(clipped)]
    # fires at epoch 8 (cycle 3), resolves at 12 (cycle 4); may fire again from cycle 6 (epoch 20): not here
    assert states(watch, records) == [(8, "clip_inactive", "firing"), (12, "clip_inactive", "resolved")]


def test_a_null_value_leaves_the_state_as_it_is() -> None:
    # nulls neither count towards hold or clear nor break a streak
    records = machine_records([T, None, None, T, None, Q, None, Q])
    assert states(machine(hold=2, clear=2), records) == [(3, "clip_inactive", "firing"), (7, "clip_inactive", "resolved")]


def test_no_firing_during_warmup_cycles_even_when_the_condition_holds() -> None:
    records = machine_records([T] * 8)
    assert states(machine(hold=2, warmup=5), records) == [(5, "clip_inactive", "firing")]


def test_since_epoch_is_where_the_condition_started_to_hold_or_stopped() -> None:
    watch = machine(hold=3, clear=2)
    transitions = [t for r in machine_records([Q, T, T, T, T, Q, Q]) for t in watch.observe(r)]
    assert [(t.state, t.epoch, t.since_epoch) for t in transitions] == [("firing", 3, 1), ("resolved", 6, 5)]


def test_v1_0_records_are_not_evaluated_by_rules_that_need_v1_1_fields(make_record: MakeRecord) -> None:
    watch = machine(hold=2)
    tripped = {"clip_fraction": 0.0, "kl_divergence_max": 0.05}
    records = [make_record(epoch=0, **tripped), make_record(epoch=1, version="1.0", clip_fraction=0.0),
               make_record(epoch=2, **tripped)]
    assert states(watch, records) == [(2, "clip_inactive", "firing")]


def test_v1_0_records_are_evaluated_by_rules_reading_v1_0_fields(make_record: MakeRecord) -> None:
    watch = Watch(only("lr_jump", warmup=0))
    records = [make_record(epoch=i, version="1.0", learning_rate=lr) for i, lr in enumerate([1e-3, 1e-3, 5e-2])]
    assert states(watch, records) == [(2, "lr_jump", "firing")]


def test_per_cycle_rules_are_evaluated_once_per_cycle(make_record: MakeRecord) -> None:
    # 3 epochs per cycle (same global_step): gae_sanity's hold 2 needs two cycles, not two epochs
    watch = Watch(only("gae_sanity", warmup=1, hold=2))
    corr = [0.5] * 3 + [-0.9] * 6
    records = [make_record(epoch=e, global_step=1000 * (e // 3 + 1), reward_advantage_corr=c) for e, c in enumerate(corr)]
    assert states(watch, records) == [(6, "gae_sanity", "firing")]


def test_rule_state_is_per_run(make_record: MakeRecord) -> None:
    watch = machine(hold=2)
    tripped = {"clip_fraction": 0.0, "kl_divergence_max": 0.05}
    records = [make_record(run_id="a", epoch=0, **tripped), make_record(run_id="b", epoch=0, **tripped),
               make_record(run_id="a", epoch=1, **tripped)]
    assert [(t.run_id, t.state) for r in records for t in watch.observe(r)] == [("a", "firing")]


# --- each rule's condition ------------------------------------------------------------------------


def steady(count: int, **values: Any) -> list[EpochSummary]:
    """`count` records, one per cycle, with `values` held steady."""
    return [epoch_summary(epoch=i, **values) for i in range(count)]


def test_kl_spike_is_relative_to_the_runs_level_and_above_the_floor() -> None:
    watch = Watch(only("kl_spike", warmup=5, hold=2, factor=10.0, floor=0.01, rate=0.001))
    base = steady(10, kl_divergence_max=0.004)
    # 0.03 is 7.5x the level: quiet; 0.05 is 12.5x: fires after two epochs
    spikes = [epoch_summary(epoch=10 + i, kl_divergence_max=v) for i, v in enumerate([0.03, 0.03, 0.05, 0.05])]
    transitions = [t for r in base + spikes for t in watch.observe(r)]
    assert [(t.epoch, t.rule, t.state) for t in transitions] == [(13, "kl_spike", "firing")]
    assert transitions[0].reference == pytest.approx(0.04, rel=0.01)


def test_kl_spike_floor_keeps_tiny_kls_quiet_whatever_their_ratio() -> None:
    watch = Watch(only("kl_spike", warmup=5, hold=1, floor=0.1))
    records = steady(10, kl_divergence_max=1e-5) + [epoch_summary(epoch=10, kl_divergence_max=0.05)]
    assert states(watch, records) == []


def test_kl_spike_level_is_each_cycles_largest_kl(make_record: MakeRecord) -> None:
    # KL grows through a cycle's epochs: the level follows the cycles' maxima (0.01), so 0.08 is 8x: quiet
    watch = Watch(only("kl_spike", warmup=0, hold=1, factor=10.0, floor=0.0, rate=1.0))
    records = [make_record(epoch=e, global_step=100 * (e // 4 + 1), kl_divergence_max=0.0025 * (e % 4 + 1))
               for e in range(40)]
    records.append(make_record(epoch=40, global_step=100 * 11, kl_divergence_max=0.08))
    assert states(watch, records) == []


def test_grad_explosion_compares_with_the_larger_of_recent_and_start_levels() -> None:
    watch = Watch(only("grad_explosion", warmup=5, hold=1, factor=10.0, rate=0.5))
    # start level 2.0; later the norms shrink to 0.02, so 10x recent (0.2) would fire on 5.0 but 10x start (20) does not
    records = steady(6, grad_norm_max=2.0) + [epoch_summary(epoch=6 + i, grad_norm_max=0.02) for i in range(30)]
    records += [epoch_summary(epoch=36, grad_norm_max=5.0), epoch_summary(epoch=37, grad_norm_max=25.0)]
    assert states(watch, records) == [(37, "grad_explosion", "firing")]


def test_entropy_collapse_compares_ratios_for_a_categorical_start() -> None:
    watch = Watch(only("entropy_collapse", warmup=5, hold=2, ratio=0.3, rate=0.1))
    records = steady(10, batch_entropy_mean=math.log(3))  # ln 3: a 3-action categorical policy's start
    records += [epoch_summary(epoch=10 + i, batch_entropy_mean=v) for i, v in enumerate([0.4, 0.4, 0.2, 0.2])]
    assert states(watch, records) == [(13, "entropy_collapse", "firing")]


def test_entropy_collapse_compares_nats_when_entropy_is_differential() -> None:
    # a Gaussian policy: entropy 1.42 (not ln k) falling to -0.5 is a 1.9-nat drop; ratios would be meaningless
    watch = Watch(only("entropy_collapse", warmup=5, hold=2, drop_nats=1.5, rate=0.1))
    records = steady(10, batch_entropy_mean=1.4189)
    records += [epoch_summary(epoch=10 + i, batch_entropy_mean=v) for i, v in enumerate([0.5, 0.5, -0.5, -0.5])]
    assert states(watch, records) == [(13, "entropy_collapse", "firing")]


def test_entropy_collapse_needs_fresh_rollouts_not_epochs_on_one_batch() -> None:
    # A late-stage policy is sure in some states: one rollout of easy states has a batch entropy several
    # times below the next one's, the same in each of its 20 epochs. One such cycle is quiet; two are not.
    def cycle(index: int, entropy: float) -> list[EpochSummary]:
        return [epoch_summary(epoch=20 * index + e, global_step=256 * (index + 1), cycle_id=index + 1,
                              batch_entropy_mean=entropy)
                for e in range(20)]

    def run(low_cycles: list[int]) -> list[tuple[int, str, str]]:
        entropies = [math.log(3)] + [0.01 if index in low_cycles else 0.05 for index in range(1, 16)]
        records = [r for index, entropy in enumerate(entropies) for r in cycle(index, entropy)]
        return states(Watch(only("entropy_collapse")), records)

    assert run([12]) == []
    assert run([12, 13]) == [(260, "entropy_collapse", "firing")]


def test_an_entropy_of_exactly_zero_keeps_a_categorical_run_on_ratios_and_a_negative_one_switches_to_nats() -> None:
    # a categorical policy sure of every action in its batch has entropy 0.0; only a Gaussian's goes below
    def scales(entropies: list[float]) -> dict[str, bool]:
        watch = Watch()
        for i, entropy in enumerate(entropies):
            watch.observe(epoch_summary(epoch=i, cycle_id=i + 1, global_step=100 * (i + 1), batch_entropy_mean=entropy))
        rules = watch.run_state("run")["rules"]
        return {name: rules[name]["ratio_mode"] for name in ("entropy_collapse", "entropy_pushdown", "entropy_drain")}

    assert scales([math.log(2), 0.3, 0.0, 0.0]) == dict.fromkeys(("entropy_collapse", "entropy_pushdown", "entropy_drain"), True)
    assert scales([math.log(2), 0.3, -0.1]) == dict.fromkeys(("entropy_collapse", "entropy_pushdown", "entropy_drain"), False)


def test_entropy_collapse_slow_decline_of_a_solved_task_stays_quiet() -> None:
    # ln 2 down to 2 % of it over 2000 epochs: a run learning to be sure, not a collapse
    watch = Watch(only("entropy_collapse"))
    records = [epoch_summary(epoch=i, batch_entropy_mean=math.log(2) * 0.02 ** (i / 2000)) for i in range(2000)]
    assert states(watch, records) == []


def gae_states(values: list[float]) -> list[tuple[int, str, str]]:
    return states(Watch(only("gae_sanity", warmup=3, hold=1, threshold=-0.2, drop=0.6, rate=0.2)), corr_records(values))


def test_gae_sanity_fires_when_the_correlation_falls_far_below_its_level_into_negative() -> None:
    # level 0.35: fires under min(-0.2, 0.35 - 0.6) = -0.25
    assert gae_states([0.35] * 4 + [-0.24]) == []
    assert gae_states([0.35] * 4 + [-0.26]) == [(4, "gae_sanity", "firing")]


def test_gae_sanity_on_a_run_whose_correlation_hovers_near_zero_needs_a_larger_fall() -> None:
    # level 0: fires under -0.6 only (Pendulum's healthy correlations swing to -0.4)
    assert gae_states([0.0] * 4 + [-0.45]) == []
    assert gae_states([0.0] * 4 + [-0.65]) == [(4, "gae_sanity", "firing")]


def test_value_divergence_fires_when_explained_variance_collapses() -> None:
    watch = Watch(only("value_divergence", warmup=5, hold=2))
    records = steady(10, explained_variance=0.95, value_loss=1.0) + [
        epoch_summary(epoch=10 + i, explained_variance=v, value_loss=2.5) for i, v in enumerate([0.9, 0.1, 0.05])
    ]
    assert states(watch, records) == [(12, "value_divergence", "firing")]


def test_value_divergence_ignores_a_low_explained_variance_when_the_loss_did_not_rise() -> None:
    # a solved task's returns barely vary: the explained variance swings while the loss stays tiny
    watch = Watch(only("value_divergence", warmup=5, hold=2))
    records = steady(10, explained_variance=0.95, value_loss=1e-5) + [
        epoch_summary(epoch=10 + i, explained_variance=-2.0, value_loss=1e-5) for i in range(5)
    ]
    assert states(watch, records) == []


def test_value_divergence_fires_when_the_value_loss_blows_up() -> None:
    watch = Watch(only("value_divergence", warmup=5, hold=2, loss_factor=100.0))
    records = steady(10, value_loss=2.0) + [epoch_summary(epoch=10 + i, value_loss=v) for i, v in enumerate([150.0, 500.0, 500.0])]
    transitions = [t for r in records for t in watch.observe(r)]
    # 150 is under 100 x 2: quiet, and learned from (the level rises a little); 500 twice fires
    assert [(t.epoch, t.state, t.value) for t in transitions] == [(12, "firing", 500.0)]
    assert 200.0 < transitions[0].reference < 500.0


def test_value_loss_spike_fires_at_once_above_the_larger_of_recent_and_start_levels() -> None:
    watch = Watch(only("value_loss_spike", warmup=3, factor=5.0, rate=0.5))
    # start level 10; the loss then settles at 0.01: 30 (3x start) is quiet, 80 (8x start) fires at once
    records = steady(3, value_loss=10.0) + [epoch_summary(epoch=3 + i, value_loss=0.01) for i in range(20)]
    records += [epoch_summary(epoch=23, value_loss=30.0), epoch_summary(epoch=24, value_loss=0.01),
                epoch_summary(epoch=25, value_loss=80.0)]
    assert states(watch, records) == [(25, "value_loss_spike", "firing")]


def test_return_collapse_needs_most_of_the_gain_lost_and_held() -> None:
    watch = Watch(only("return_collapse", warmup=3, hold=3, fraction=0.6, rate=0.5))
    rising = [epoch_summary(epoch=i, mean_episode_return=r) for i, r in enumerate([10, 10, 10, 50, 100, 100, 100, 100])]
    # best ~100, start 10: the reference is 100 - 0.6 x 90 = 46; a dip to 60 is not a collapse
    fall = [epoch_summary(epoch=8 + i, mean_episode_return=r) for i, r in enumerate([60, 20, 20, 20])]
    assert states(watch, rising + fall) == [(11, "return_collapse", "firing")]


def test_return_collapse_never_fires_for_a_run_that_never_learned() -> None:
    watch = Watch(only("return_collapse", warmup=3, hold=1))
    records = [epoch_summary(epoch=i, mean_episode_return=r) for i, r in enumerate([10, 12, 9, 11, 10, 3, 2])]
    assert states(watch, records) == []


def test_clip_inactive_fires_when_the_policy_moves_without_any_clipping() -> None:
    watch = Watch(only("clip_inactive", warmup=0, hold=2, kl_min=0.01))
    records = [epoch_summary(epoch=i, clip_fraction=c, kl_divergence_max=k)
               for i, (c, k) in enumerate([(0.0, 0.001), (0.1, 0.05), (0.0, 0.05), (0.0, 0.06)])]
    assert states(watch, records) == [(3, "clip_inactive", "firing")]


def test_lr_jump_fires_when_the_learning_rate_jumps_but_not_as_it_anneals() -> None:
    watch = Watch(only("lr_jump", warmup=2, factor=3.0))
    lrs = [1e-3, 9e-4, 8e-4, 7e-4, 3.5e-2]
    records = [epoch_summary(epoch=i, learning_rate=lr) for i, lr in enumerate(lrs)]
    assert states(watch, records) == [(4, "lr_jump", "firing")]


def cycle_records(cycle: int, epochs_per_cycle: int, losses: list[float], entropies: list[float | None]) -> list[EpochSummary]:
    """One cycle's records (one global_step), epoch by epoch, with `policy_loss` and `batch_entropy_mean`."""
    return [
        epoch_summary(epoch=cycle * epochs_per_cycle + i, global_step=100 * (cycle + 1), policy_loss=loss, batch_entropy_mean=entropy)
        for i, (loss, entropy) in enumerate(zip(losses, entropies))
    ]


def pushdown_run(last: list[EpochSummary], first_entropy: float = math.log(2)) -> list[EpochSummary]:
    """Two quiet warm-up cycles (surrogate falling, entropy steady), then `last`."""
    quiet = [cycle_records(c, 5, [0.0, -0.002, -0.004, -0.006, -0.008], [first_entropy] * 5) for c in range(2)]
    return [r for cycle in quiet for r in cycle] + last


def pushdown() -> Watch:
    return Watch(only("entropy_pushdown", warmup=2, hold=2, loss_rise=0.005, drop=0.1))


def test_entropy_pushdown_fires_when_updates_raise_the_policy_loss_and_lower_the_entropy() -> None:
    # ratios for a categorical start: log(0.6 / 0.5) = 0.18 > 0.1 from the third epoch on, loss up 0.006 from the third
    last = cycle_records(2, 5, [0.0, 0.003, 0.006, 0.008, 0.01], [0.6, 0.58, 0.5, 0.45, 0.4])
    assert states(pushdown(), pushdown_run(last)) == [(13, "entropy_pushdown", "firing")]


def test_entropy_pushdown_stays_quiet_when_only_one_of_the_two_moves() -> None:
    # the loss rising with the entropy steady (a healthy cycle can do that), and the entropy falling while the
    # surrogate improves (a policy sharpening on its advantages): neither is a loss term pushing entropy down
    loss_only = cycle_records(2, 5, [0.0, 0.006, 0.01, 0.011, 0.012], [0.6, 0.6, 0.59, 0.59, 0.58])
    entropy_only = cycle_records(3, 5, [0.0, -0.01, -0.02, -0.03, -0.04], [0.6, 0.5, 0.4, 0.3, 0.2])
    assert states(pushdown(), pushdown_run(loss_only + entropy_only)) == []


def test_entropy_pushdown_compares_nats_for_a_differential_entropy() -> None:
    # a Gaussian policy's entropy 1.4189 (not ln k): -0.2 -> -0.31 is 0.11 nats (a ratio would be meaningless)
    last = cycle_records(2, 5, [0.0, 0.01, 0.02, 0.03, 0.04], [-0.2, -0.25, -0.31, -0.35, -0.4])
    assert states(pushdown(), pushdown_run(last, 1.4189)) == [(13, "entropy_pushdown", "firing")]


def test_entropy_pushdown_measures_from_each_cycle_s_first_epoch_and_skips_nulls() -> None:
    # the second cycle starts lower: its own first epoch is the reference, so no drop; a null entropy is skipped
    first = cycle_records(2, 5, [0.0, 0.01, 0.02, 0.02, 0.02], [0.6, 0.55, None, None, None])
    second = cycle_records(3, 5, [0.02, 0.03, 0.04, 0.04, 0.04], [0.4, 0.39, 0.385, 0.38, 0.375])
    assert states(pushdown(), pushdown_run(first + second)) == []
    falling = cycle_records(3, 5, [0.02, 0.03, 0.04, 0.04, 0.04], [0.4, 0.3, 0.2, 0.2, 0.2])
    assert states(pushdown(), pushdown_run(first + falling)) == [(17, "entropy_pushdown", "firing")]


def test_entropy_pushdown_restored_mid_cycle_keeps_the_cycle_s_reference() -> None:
    last = cycle_records(2, 5, [0.0, 0.003, 0.006, 0.008, 0.01], [0.6, 0.58, 0.5, 0.45, 0.4])
    records = pushdown_run(last)
    first = pushdown()
    states(first, records[:11])  # the cycle's first epoch seen, its reference stored
    second = Watch(first.config, state=json.loads(json.dumps(first.state_snapshot())))
    assert states(second, records[11:]) == [(13, "entropy_pushdown", "firing")]


def drain() -> Watch:
    return Watch(only("entropy_drain", warmup=2, hold=1, window=2, drop=0.3, ratio=0.5, rate=0.1))


def log_entropy_cycles(first_cycle: int, logs: list[list[float]]) -> list[EpochSummary]:
    """Cycles of 5 epochs from `first_cycle`, each epoch's entropy given as its logarithm."""
    return [r for offset, cycle in enumerate(logs)
            for r in cycle_records(first_cycle + offset, 5, [0.0] * 5, [math.exp(v) for v in cycle])]


def test_entropy_drain_fires_when_every_epoch_lowers_the_entropy_cycle_after_cycle() -> None:
    # log entropy falls 0.1 every epoch from the level L = log(ln 2) on. At the third cycle's first epoch the
    # level learns its L - 0.5 (the entropy is not yet under half), to L - 0.05; from its fourth epoch the
    # entropy is L - 0.8, 0.75 under the level (> ln 2) and the sustained drops sum to 0.4 + 0.3 (> 0.3)
    level = math.log(math.log(2))
    falling = [[level - 0.1 * (5 * c + k) for k in range(5)] for c in range(2)]
    records = pushdown_run(log_entropy_cycles(2, falling))
    assert states(drain(), records) == [(18, "entropy_drain", "firing")]


def test_entropy_drain_ignores_falls_made_in_one_large_step_or_recovered_by_the_next_rollout() -> None:
    level = math.log(math.log(2))
    one_step = [[level - 0.5 * c] * 4 + [level - 0.5 * (c + 1)] for c in range(3)]  # 0.5 per cycle, all at its last epoch
    recovering = [[level - 0.1 * k for k in range(5)] for _ in range(3)]  # sharpens on each batch, back at each rollout
    assert states(drain(), pushdown_run(log_entropy_cycles(2, one_step))) == []
    assert states(drain(), pushdown_run(log_entropy_cycles(2, recovering))) == []


def test_entropy_drain_compares_nats_for_a_differential_entropy() -> None:
    # a Gaussian policy: entropy 1.4189 falling 0.1 nats an epoch (values cross zero: ratios would be meaningless)
    falling = [[1.4189 - 0.1 * (5 * c + k) for k in range(5)] for c in range(2)]
    records = pushdown_run([r for offset, cycle in enumerate(falling)
                            for r in cycle_records(2 + offset, 5, [0.0] * 5, cycle)], 1.4189)
    assert states(drain(), records) == [(18, "entropy_drain", "firing")]


def test_entropy_drain_restored_mid_cycle_fires_where_the_uninterrupted_run_fires() -> None:
    level = math.log(math.log(2))
    falling = [[level - 0.1 * (5 * c + k) for k in range(5)] for c in range(2)]
    records = pushdown_run(log_entropy_cycles(2, falling))
    first = drain()
    states(first, records[:17])  # mid-cycle: the window of past cycles and this cycle's steps are in the state
    snapshot = json.loads(json.dumps(first.state_snapshot()))
    assert snapshot["runs"]["run"]["rules"]["entropy_drain"]["window"] == [pytest.approx(0.4)]
    second = Watch(first.config, state=snapshot)
    assert states(second, records[17:]) == [(18, "entropy_drain", "firing")]


def test_transitions_of_one_record_come_in_rule_order() -> None:
    config = rules_from_mapping({name: {"warmup": 1, "hold": 1} for name in ("gae_sanity", "lr_jump")})
    watch = Watch(config)
    watch.observe(epoch_summary(epoch=0))
    transitions = watch.observe(epoch_summary(epoch=1, reward_advantage_corr=-0.9, learning_rate=1.0))
    assert [t.rule for t in transitions] == ["gae_sanity", "lr_jump"]


# --- the transition -------------------------------------------------------------------------------


def test_transition_carries_the_evidence_with_spec_keys_in_order() -> None:
    watch = Watch(only("gae_sanity", warmup=1, hold=1))
    watch.observe(epoch_summary(epoch=2, global_step=700, reward_advantage_corr=0.5))
    (fired,) = watch.observe(epoch_summary(epoch=3, global_step=777, log_stream_offset=41, reward_advantage_corr=-0.5))
    doc = fired.to_json_dict()
    assert list(doc) == SPEC_KEYS
    assert (doc["state"], doc["severity"], doc["epoch"], doc["global_step"], doc["log_stream_offset"]) == (
        "firing", "warning", 3, 777, 41)
    assert (doc["value"], doc["reference"], doc["since_epoch"]) == (-0.5, -0.1, 3)
    assert "-0.5" in doc["summary"] and "\n" not in doc["summary"]
    assert json.loads(json.dumps(doc)) == doc


def test_avro_dict_adds_threshold_equal_to_reference() -> None:
    transition = Transition("r", "kl_spike", "firing", "warning", 1, 2, 3, 0.5, 0.1, 1, "s")
    assert transition.to_avro_dict() == dict(transition.to_json_dict(), threshold=0.1)


def test_severity_comes_from_the_rule_and_can_be_overridden() -> None:
    watch = Watch(rules_from_mapping({"clip_inactive": {"warmup": 0, "hold": 1, "severity": "critical"}}))
    (fired,) = watch.observe(epoch_summary(clip_fraction=0.0, kl_divergence_max=0.05))
    assert fired.severity == "critical"


# --- defaults on healthy-looking data -------------------------------------------------------------


def test_default_rules_stay_quiet_on_the_record_factory_s_steady_run() -> None:
    watch = Watch()
    assert states(watch, steady(500)) == []


def test_default_config_enables_every_rule_with_documented_severity() -> None:
    config = RulesConfig.default()
    assert tuple(f.name for f in fields(config)) == RULE_NAMES
    for name in RULE_NAMES:
        rule = getattr(config, name)
        assert rule.enabled and rule.severity in ("warning", "critical")
        assert rule.hold >= 1 and rule.clear >= 1


# --- snapshots and restore ------------------------------------------------------------------------


def lively_run(run_id: str, count: int, seed: int) -> list[EpochSummary]:
    """A run with every rule's value moving, nulls included, so each machine changes state now and then."""
    import random

    rng = random.Random(seed)
    records = []
    for epoch in range(count):
        bad = (epoch // 30) % 3 == 2
        records.append(epoch_summary(
            run_id=run_id, epoch=epoch, global_step=100 * (epoch // 4 + 1), log_stream_offset=epoch,
            kl_divergence_max=rng.uniform(0.2, 0.4) if bad else rng.uniform(0.001, 0.01),
            grad_norm_max=rng.uniform(100, 200) if bad else rng.uniform(0.5, 1.5),
            batch_entropy_mean=(rng.uniform(0.01, 0.02) if bad else math.log(2) * rng.uniform(0.9, 1.0)) if epoch else math.log(2),
            reward_advantage_corr=None if rng.random() < 0.2 else (rng.uniform(-0.9, -0.5) if bad else rng.uniform(0.2, 0.6)),
            explained_variance=None if rng.random() < 0.1 else (rng.uniform(-1, 0) if bad else rng.uniform(0.8, 0.95)),
            mean_episode_return=None if rng.random() < 0.3 else (rng.uniform(0, 10) if bad else 100 + epoch),
            clip_fraction=0.0 if bad else rng.uniform(0.05, 0.1),
            policy_loss=0.01 * (epoch % 4) if bad else -0.001 * (epoch % 4),  # bad: the surrogate rises through a cycle
        ))
    return records


FAST = rules_from_mapping({name: {"warmup": 8, "hold": 2, "clear": 3, "cooldown": 5} for name in RULE_NAMES})


def test_lively_run_exercises_every_rule_s_machine() -> None:
    watch = Watch(FAST)
    fired = {t.rule for r in lively_run("a", 400, 1) for t in watch.observe(r) if t.state == "resolved"}
    assert fired >= {"kl_spike", "grad_explosion", "entropy_collapse", "gae_sanity", "clip_inactive", "entropy_pushdown",
                     "entropy_drain"}


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(min_value=0, max_value=300), seed=st.integers(min_value=0, max_value=5))
def test_snapshot_and_restore_at_any_point_gives_the_uninterrupted_transitions(cut: int, seed: int) -> None:
    records = [r for pair in zip(lively_run("a", 150, seed), lively_run("b", 150, seed + 10)) for r in pair]
    whole = Watch(FAST)
    expected = [t for r in records for t in whole.observe(r)]
    first = Watch(FAST)
    got = [t for r in records[:cut] for t in first.observe(r)]
    snapshot = json.loads(json.dumps(first.state_snapshot()))  # through JSON, as the state topic carries it
    second = Watch(FAST, state=snapshot)
    got += [t for r in records[cut:] for t in second.observe(r)]
    assert got == expected


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.floats(-1.0, 1.0)), max_size=60), warmup=st.integers(0, 30))
def test_no_rule_fires_before_its_warmup_whatever_the_values(values: list[float | None], warmup: int) -> None:
    watch = Watch(only("gae_sanity", hold=1, warmup=warmup))
    for index, value in enumerate(values):  # one record per cycle
        transitions = watch.observe(epoch_summary(epoch=index, reward_advantage_corr=value))
        if any(t.state == "firing" for t in transitions):
            assert index + 1 > warmup


def test_state_stays_small_and_bounded_per_run() -> None:
    watch = Watch(FAST)
    sizes = []
    for index, record in enumerate(lively_run("a", 4000, 3)):
        watch.observe(record)
        if index in (2003, 3999):  # both at a cycle's last epoch: the same fields are set
            sizes.append(len(json.dumps(watch.run_state("a"))))
    # a few numbers per rule (entropy_drain: a window of its last cycles): only counters gain digits
    assert sizes[1] <= sizes[0] + 64 and sizes[1] < 200 * len(RULE_NAMES)


def test_restore_mid_hold_fires_exactly_where_the_uninterrupted_run_fires() -> None:
    records = machine_records([Q, T, T, T, T, Q])
    whole = states(machine(hold=4), records)
    assert whole == [(4, "clip_inactive", "firing")]
    first = machine(hold=4)
    states(first, records[:3])  # two of the four evaluations held
    assert first.run_state("run")["rules"]["clip_inactive"]["streak"] == 2
    second = Watch(first.config, state=json.loads(json.dumps(first.state_snapshot())))
    assert states(second, records[3:]) == whole


def test_run_state_round_trips_one_run_at_a_time() -> None:
    records = lively_run("a", 200, 4)
    whole = Watch(FAST)
    expected = [t for r in records for t in whole.observe(r)]
    first = Watch(FAST)
    got = [t for r in records[:77] for t in first.observe(r)]
    second = Watch(FAST)
    second.restore_run("a", json.loads(json.dumps(first.run_state("a"))))
    got += [t for r in records[77:] for t in second.observe(r)]
    assert got == expected
    assert second.run_state("nobody") is None
    second.forget_run("a")
    assert second.run_state("a") is None


@pytest.mark.parametrize(
    "snapshot",
    [
        {"version": 1, "runs": {}},
        {"version": 2},
        {"version": 2, "runs": {"r": "x"}},
        {"version": 2, "runs": {"r": {"rules": {"no_such_rule": {}}}}},
        {"version": 2, "runs": {"r": {"rules": {"kl_spike": {"level": "high"}}}}},
        {"version": 2, "runs": {"r": {"rules": {"kl_spike": {"streak": -1}}}}},
        {"version": 2, "runs": {"r": {"rules": {"kl_spike": {"firing": 1}}}}},
        {"version": 2, "runs": {"r": {"rules": {"kl_spike": {"surprise": 1}}}}},
        {"version": 2, "runs": {"r": {"rules": {"entropy_drain": {"window": [0.1, "x"]}}}}},
        {"version": 2, "runs": {"r": {"rules": {"entropy_drain": {"window": 0.1}}}}},
        {"version": 2, "runs": {"r": {"rules": {"entropy_drain": {"steps": -1}}}}},
        {"version": 2, "runs": {"r": {"cycle_step": "x", "rules": {}}}},
    ],
)
def test_restore_rejects_a_malformed_snapshot(snapshot: dict[str, Any]) -> None:
    with pytest.raises(WatchStateError):
        Watch(state=snapshot)
    assert issubclass(WatchStateError, TelemetryError)


# --- the rules file -------------------------------------------------------------------------------


def test_toml_overrides_every_key_and_keeps_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[kl_spike]\nfactor = 20\nfloor = 0.2\nhold = 5\nseverity = "critical"\n[lr_jump]\nenabled = false\n')
    config = load_rules(path)
    assert (config.kl_spike.factor, config.kl_spike.floor, config.kl_spike.hold, config.kl_spike.severity) == (20.0, 0.2, 5, "critical")
    assert config.kl_spike.clear == RulesConfig.default().kl_spike.clear
    assert not config.lr_jump.enabled
    assert config.grad_explosion == RulesConfig.default().grad_explosion


def test_toml_disabled_rule_never_fires() -> None:
    watch = Watch(rules_from_mapping({"clip_inactive": {"enabled": False}}))
    assert all(t.rule != "clip_inactive" for r in machine_records([T] * 50) for t in watch.observe(r))


def test_empty_toml_is_the_default_config(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("")
    assert load_rules(path) == RulesConfig.default()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[no_such_rule]\nhold = 1\n", "unknown rule 'no_such_rule'"),
        ("[kl_spike]\nlimit = 1\n", "rule [kl_spike] has unknown key 'limit'"),
        ("[kl_spike]\nfactor = true\n", "key 'factor' must be a number"),
        ("[kl_spike]\nfactor = 0.5\n", "key 'factor' must be > 1"),
        ("[kl_spike]\nhold = 0\n", "key 'hold' must be >= 1"),
        ("[kl_spike]\nhold = 2.5\n", "key 'hold' must be an integer"),
        ("[kl_spike]\nfloor = nan\n", "key 'floor' must be finite"),
        ("[entropy_collapse]\nratio = 1.5\n", "key 'ratio' must be in (0, 1]"),
        ('[kl_spike]\nseverity = "page"\n', "key 'severity' must be one of warning, critical"),
        ('[kl_spike]\nenabled = "yes"\n', "key 'enabled' must be true or false"),
        ("kl_spike = 3\n", "rule [kl_spike] must be a table"),
        ("[kl_spike\n", "invalid TOML"),
    ],
)
def test_toml_error_is_one_line_naming_file_rule_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_missing_rules_file_is_a_rules_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "nope.toml")


def test_rules_from_mapping_accepts_ints_as_floats() -> None:
    config = rules_from_mapping({"grad_explosion": {"factor": 50}})
    assert config.grad_explosion.factor == 50.0 and isinstance(config.grad_explosion.factor, float)


def test_on_reading_sees_every_evaluation_after_warmup_with_its_value_and_reference() -> None:
    seen: list[tuple[str, int, float, float]] = []
    watch = Watch(
        only("kl_spike", warmup=5, hold=2, factor=10.0, floor=0.01, rate=0.001),
        on_reading=lambda rule, record, value, reference: seen.append((rule, record.epoch, value, reference)),
    )
    records = steady(10, kl_divergence_max=0.004) + [epoch_summary(epoch=10, kl_divergence_max=None)]
    records += [epoch_summary(epoch=11, kl_divergence_max=0.05)]
    states(watch, records)
    # one record per cycle: cycles 1-5 warm the rule up; the null of epoch 10 is not evaluated
    assert [(rule, epoch, value) for rule, epoch, value, _ in seen] == [("kl_spike", e, 0.004) for e in range(5, 10)] + [
        ("kl_spike", 11, 0.05)
    ]
    assert seen[-1][3] == pytest.approx(0.04, rel=0.01)
