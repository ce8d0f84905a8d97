"""Fault injection (`producer.faults`, SPEC §8): parsing, the pure pieces, and real changes to training.

Each fault is checked on short real runs against the same run without it: the records of every cycle
before the fault's first cycle are identical, and from that cycle on the training changes the way the
fault says. Tiny configurations keep each run well under a second.
"""

from __future__ import annotations

import json
import math
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from avro_schemas.errors import TelemetryError
from consumers.validator import validate_record
from producer.faults import (
    FAULT_DEFAULTS,
    Fault,
    FaultError,
    FaultSchedule,
    check_fault_steps,
    parse_fault,
    reinitialise_critic,
    write_faults_file,
)
from producer.harness import HarnessConfig, HarnessError, TrainingHarness
from producer.ppo import ActorCritic, Adam
from producer.rollout import Dataset
from producer.stats import pearson_or_none

TIMING_FIELDS = {"timestamp_ms", "epoch_duration_sec"}
PER_CYCLE = 2 * 16
TOTAL_STEPS = 24 * PER_CYCLE
ONSET = 12 * PER_CYCLE - 20  # inside cycle 12's capture: cycle 12 (global_step 384) is the first affected
FIRST_CYCLE = 12


def tiny(**overrides) -> HarnessConfig:
    values = dict(
        env_id="CartPole-v1", num_envs=2, num_steps=16, update_epochs=4, num_minibatches=2, total_steps=TOTAL_STEPS,
    )
    values.update(overrides)
    return HarnessConfig(**values)


class Run:
    """A finished run: its records, the datasets it trained on (per cycle id), the harness."""

    def __init__(self, config: HarnessConfig) -> None:
        self.records: list[dict] = []
        self.datasets: dict[int, Dataset] = {}
        self.harness = TrainingHarness(config, publish=self.records.append)
        original = self.harness.train_epochs

        def keeping(cycle, data_mode):
            self.datasets[cycle.cycle_id] = cycle.dataset
            return original(cycle, data_mode)

        self.harness.train_epochs = keeping
        try:
            self.harness.run_ppo()
        finally:
            self.harness.close()

    def cycle(self, cycle_id: int) -> list[dict]:
        return [r for r in self.records if r["cycle_id"] == cycle_id]

    def before(self, cycle_id: int) -> list[dict]:
        return [without_timing(r) for r in self.records if r["cycle_id"] < cycle_id]

    def from_(self, cycle_id: int) -> list[dict]:
        return [r for r in self.records if r["cycle_id"] >= cycle_id]


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}


_healthy_runs: dict[tuple, Run] = {}


def healthy(**overrides) -> Run:
    """The run without faults (shared between tests: a run is deterministic)."""
    key = tuple(sorted(overrides.items()))
    if key not in _healthy_runs:
        _healthy_runs[key] = Run(tiny(**overrides))
    return _healthy_runs[key]


def with_fault(text: str, **overrides) -> Run:
    return Run(tiny(faults=[parse_fault(text)], **overrides))


# ------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("name", sorted(FAULT_DEFAULTS))
def test_a_fault_without_value_takes_its_default(name):
    assert parse_fault(f"{name}@40000") == Fault(name, 40000, FAULT_DEFAULTS[name])


def test_the_defaults_are_those_of_the_spec_table():
    assert FAULT_DEFAULTS == {
        "lr_spike": 50, "clip_off": 1000, "negative_entropy_bonus": 0.5, "reward_scale": 1000,
        "advantage_sign": None, "value_reset": None, "reward_noise": 1.0, "grad_clip_off": 10,
    }


def test_a_given_value_is_used():
    assert parse_fault("lr_spike@40000:50") == Fault("lr_spike", 40000, 50.0)
    assert parse_fault("reward_noise@0:0.25") == Fault("reward_noise", 0, 0.25)
    assert parse_fault("reward_scale@10:-1") == Fault("reward_scale", 10, -1.0)  # a sign bug of the rewards


def test_a_fault_prints_as_it_is_written():
    assert str(parse_fault("lr_spike@40000")) == "lr_spike@40000:50"
    assert str(parse_fault("value_reset@7")) == "value_reset@7"


@pytest.mark.parametrize(
    "text, says",
    [
        ("bogus@10", "unknown fault 'bogus'"),
        ("lr_spike", "NAME@STEP[:VALUE]"),
        ("lr_spike@", "STEP must be an integer"),
        ("lr_spike@1e4", "STEP must be an integer"),
        ("lr_spike@-5", "STEP must be >= 0"),
        ("lr_spike@10:x", "VALUE must be a number"),
        ("lr_spike@10:0", "VALUE must be finite and > 0"),
        ("lr_spike@10:-2", "VALUE must be finite and > 0"),
        ("clip_off@10:inf", "VALUE must be finite and > 0"),
        ("reward_noise@10:nan", "VALUE must be finite and > 0"),
        ("negative_entropy_bonus@10:0", "VALUE must be finite and > 0"),
        ("reward_scale@10:0", "VALUE must be finite and non-zero"),
        ("grad_clip_off@10:", "VALUE must be a number"),
        ("advantage_sign@10:1", "advantage_sign takes no VALUE"),
        ("value_reset@10:1", "value_reset takes no VALUE"),
    ],
)
def test_a_bad_fault_is_a_one_line_fault_error(text, says):
    with pytest.raises(FaultError) as caught:
        parse_fault(text)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, TelemetryError)


def test_a_step_beyond_the_run_is_refused_and_the_last_step_accepted():
    check_fault_steps([Fault("lr_spike", 1000, 50.0)], 1000)
    with pytest.raises(FaultError, match="STEP 1,001 is beyond the run's 1,000 environment steps"):
        check_fault_steps([Fault("lr_spike", 1001, 50.0)], 1000)


# ------------------------------------------------------------------------------------- pure pieces


def test_a_fault_becomes_active_at_its_step_once_and_stays_active():
    schedule = FaultSchedule([Fault("lr_spike", 100, 50.0), Fault("clip_off", 300, 1000.0)], seed=0)
    started: list[tuple] = []
    schedule.on_activate = lambda fault, cycle_id, step: started.append((fault.name, cycle_id, step))
    assert schedule.activate(96, 3) == [] and schedule.active == ()
    assert [f.name for f in schedule.activate(128, 4)] == ["lr_spike"]
    assert schedule.activate(160, 5) == []
    assert [f.name for f in schedule.activate(320, 10)] == ["clip_off"]
    assert [f.name for f in schedule.active] == ["lr_spike", "clip_off"]
    assert started == [("lr_spike", 4, 128), ("clip_off", 10, 320)]
    assert schedule.report() == [
        {"name": "lr_spike", "step": 100, "value": 50.0, "first_cycle_id": 4},
        {"name": "clip_off", "step": 300, "value": 1000.0, "first_cycle_id": 10},
    ]


def test_without_an_active_fault_every_knob_keeps_its_healthy_value():
    schedule = FaultSchedule([Fault(name, 10**6, value) for name, value in FAULT_DEFAULTS.items()], seed=0)
    schedule.activate(1000, 1)
    rewards = np.array([1.0, -2.0, 0.5])
    schedule.change_rewards(rewards)
    assert rewards.tolist() == [1.0, -2.0, 0.5]
    assert schedule.learning_rate(1e-3) == 1e-3
    assert schedule.clip_range(0.2) == 0.2
    assert schedule.ent_coef(0.01) == 0.01
    assert schedule.max_grad_norm(0.5) == 0.5
    dataset = _dataset(np.array([1.0, 2.0]))
    assert schedule.change_dataset(dataset) is dataset
    assert schedule.report()[0]["first_cycle_id"] is None


def _active(*faults: Fault) -> FaultSchedule:
    schedule = FaultSchedule(faults, seed=0)
    schedule.activate(10**9, 1)
    return schedule


def _dataset(advantages: np.ndarray) -> Dataset:
    values = np.full_like(advantages, 0.5)
    return Dataset(
        obs=np.zeros((len(advantages), 2)), actions=np.zeros(len(advantages), dtype=np.int64),
        logprobs=np.zeros_like(advantages), values=values, rewards=np.ones_like(advantages),
        advantages=advantages, returns=advantages + values,
    )


def test_the_knobs_under_their_faults():
    assert _active(Fault("lr_spike", 0, 50.0)).learning_rate(1e-3) == pytest.approx(5e-2)
    assert _active(Fault("lr_spike", 0, 50.0), Fault("grad_clip_off", 0, 10.0)).learning_rate(1e-3) == pytest.approx(0.5)
    assert _active(Fault("clip_off", 0, 1000.0)).clip_range(0.2) == 1000.0
    assert _active(Fault("negative_entropy_bonus", 0, 0.5)).ent_coef(0.0) == -0.5
    assert _active(Fault("grad_clip_off", 0, 10.0)).max_grad_norm(0.5) is None


def test_reward_scale_multiplies_and_reward_noise_replaces_the_rewards():
    rewards = np.array([1.0, 0.0, -1.0])
    _active(Fault("reward_scale", 0, 1000.0)).change_rewards(rewards)
    assert rewards.tolist() == [1000.0, 0.0, -1000.0]
    rewards = np.ones(20_000)
    _active(Fault("reward_noise", 0, 2.0)).change_rewards(rewards)
    assert abs(rewards.mean()) < 0.1 and rewards.std() == pytest.approx(2.0, rel=0.05)


def test_reward_noise_is_the_same_for_the_same_seed_and_apart_from_the_run_generator():
    first, second = np.ones(8), np.ones(8)
    _active(Fault("reward_noise", 0, 1.0)).change_rewards(first)
    _active(Fault("reward_noise", 0, 1.0)).change_rewards(second)
    assert first.tolist() == second.tolist()
    assert first.tolist() != np.random.default_rng(0).normal(0.0, 1.0, 8).tolist()


def test_advantage_sign_negates_the_advantages_and_keeps_the_returns():
    dataset = _dataset(np.array([1.0, -2.0, 3.0]))
    changed = _active(Fault("advantage_sign", 0, None)).change_dataset(dataset)
    assert changed.advantages.tolist() == [-1.0, 2.0, -3.0]
    assert changed.returns.tolist() == dataset.returns.tolist() == [1.5, -1.5, 3.5]
    assert changed.rewards is dataset.rewards


def test_reinitialise_critic_redraws_the_critic_only_and_zeroes_its_adam_moments():
    agent = ActorCritic(4, 2, hidden=8, seed=0)
    optimizer = Adam(agent.params.size, 1e-3)
    optimizer.m[:] = 1.0
    optimizer.v[:] = 2.0
    actor = [a.copy() for a in (agent.a_w1, agent.a_b1, agent.a_w2, agent.a_b2, agent.a_w3, agent.a_b3)]
    critic_weights = [w.copy() for w in (agent.c_w1, agent.c_w2, agent.c_w3)]
    agent.c_b1[:] = 0.3  # a trained critic's biases are not 0
    reinitialise_critic(agent, optimizer, np.random.default_rng(7))
    after = (agent.a_w1, agent.a_b1, agent.a_w2, agent.a_b2, agent.a_w3, agent.a_b3)
    assert all(np.array_equal(a, b) for a, b in zip(actor, after))
    assert all(not np.array_equal(w, agent_w) for w, agent_w in zip(critic_weights, (agent.c_w1, agent.c_w2, agent.c_w3)))
    assert not agent.c_b1.any() and not agent.c_b2.any() and not agent.c_b3.any()
    # orthogonal rows/columns with CleanRL's critic gains (sqrt 2, sqrt 2, 1)
    assert np.allclose(agent.c_w2.T @ agent.c_w2, 2.0 * np.eye(8))
    assert np.allclose(agent.c_w3.T @ agent.c_w3, np.eye(1))
    critic_size = sum(p.size for p in (agent.c_w1, agent.c_b1, agent.c_w2, agent.c_b2, agent.c_w3, agent.c_b3))
    assert not optimizer.m[-critic_size:].any() and not optimizer.v[-critic_size:].any()
    assert (optimizer.m[:-critic_size] == 1.0).all() and (optimizer.v[:-critic_size] == 2.0).all()


def test_faults_json_keeps_other_runs_entries_and_replaces_its_own(tmp_path):
    path = tmp_path / "faults.json"
    entry = {"name": "lr_spike", "step": 10, "value": 50.0, "first_cycle_id": None}
    write_faults_file(path, "run-a", [entry])
    write_faults_file(path, "run-b", [dict(entry, name="value_reset", value=None)])
    write_faults_file(path, "run-a", [dict(entry, first_cycle_id=3)])
    assert json.loads(path.read_text()) == [
        {"name": "value_reset", "step": 10, "value": None, "first_cycle_id": None, "run_id": "run-b"},
        {"name": "lr_spike", "step": 10, "value": 50.0, "first_cycle_id": 3, "run_id": "run-a"},
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["faults.json"]


def test_a_damaged_faults_json_is_replaced(tmp_path):
    path = tmp_path / "faults.json"
    path.write_text("{not json")
    write_faults_file(path, "run-a", [])
    assert json.loads(path.read_text()) == []


# ------------------------------------------------------------------------------ faults in training


@pytest.mark.parametrize("name", sorted(FAULT_DEFAULTS))
def test_a_fault_leaves_every_cycle_before_its_first_identical_and_changes_that_cycle_on(name):
    run = with_fault(f"{name}@{ONSET}")
    baseline = healthy()
    (entry,) = run.harness.faults.report()
    assert entry["first_cycle_id"] == FIRST_CYCLE
    assert run.cycle(FIRST_CYCLE)[0]["global_step"] >= ONSET > run.cycle(FIRST_CYCLE - 1)[0]["global_step"]
    assert run.before(FIRST_CYCLE) == baseline.before(FIRST_CYCLE)
    if name != "clip_off":  # clip_off changes nothing while no ratio leaves [1 - eps, 1 + eps]: see below
        assert [without_timing(r) for r in run.from_(FIRST_CYCLE)] != [without_timing(r) for r in baseline.from_(FIRST_CYCLE)]
    for record in run.records:
        verdict = validate_record(dict(record, log_stream_offset=0))
        assert verdict.status == "valid", [e.to_json_dict() for e in verdict.errors]


def test_mean_episode_return_stays_the_environment_s_under_reward_faults():
    run = with_fault(f"reward_scale@{ONSET}")
    baseline = healthy()
    # the first affected cycle played the same episodes: their returns are the environment's, not x1000
    assert [r["mean_episode_return"] for r in run.cycle(FIRST_CYCLE)] == [
        r["mean_episode_return"] for r in baseline.cycle(FIRST_CYCLE)
    ]
    assert all(r["mean_episode_return"] is None or r["mean_episode_return"] <= 500 for r in run.records)


def test_a_fault_at_step_0_changes_the_first_cycle():
    run = with_fault("lr_spike@0")
    assert run.harness.faults.report()[0]["first_cycle_id"] == 1
    assert run.records[0]["learning_rate"] == pytest.approx(healthy().records[0]["learning_rate"] * 50)


def test_lr_spike_multiplies_the_learning_rate_in_use_and_reported():
    run, baseline = with_fault(f"lr_spike@{ONSET}"), healthy()
    for faulted, healthy_record in zip(run.records, baseline.records):
        factor = 50 if faulted["cycle_id"] >= FIRST_CYCLE else 1
        assert faulted["learning_rate"] == healthy_record["learning_rate"] * factor
    assert run.harness.optimizer.lr == run.records[-1]["learning_rate"]


def test_grad_clip_off_stops_clipping_and_multiplies_the_learning_rate():
    baseline = healthy()
    # the healthy run clips in the first affected cycle (pre-clip norms above max_grad_norm 0.5) ...
    assert max(r["grad_norm_max"] for r in baseline.cycle(FIRST_CYCLE)) > 0.5
    # ... so without clipping, even at lr x 1, the training changes from that cycle on
    unclipped = with_fault(f"grad_clip_off@{ONSET}:1")
    assert unclipped.before(FIRST_CYCLE) == baseline.before(FIRST_CYCLE)
    assert [r["learning_rate"] for r in unclipped.records] == [r["learning_rate"] for r in baseline.records]
    first = unclipped.cycle(FIRST_CYCLE)
    assert [r["policy_loss"] for r in first] != [r["policy_loss"] for r in baseline.cycle(FIRST_CYCLE)]
    spiked = with_fault(f"grad_clip_off@{ONSET}")
    assert [r["learning_rate"] for r in spiked.from_(FIRST_CYCLE)] == [
        r["learning_rate"] * 10 for r in baseline.from_(FIRST_CYCLE)
    ]


def test_clip_off_lets_the_ratio_leave_the_clip_range_unclipped():
    # more epochs and a larger step than the tiny default, so that the healthy run clips
    settings = dict(update_epochs=10, learning_rate=1e-2)
    baseline = healthy(**settings)
    run = with_fault(f"clip_off@{ONSET}", **settings)
    assert run.before(FIRST_CYCLE) == baseline.before(FIRST_CYCLE)
    assert any(r["clip_fraction"] > 0 for r in baseline.from_(FIRST_CYCLE))
    assert all(r["clip_fraction"] == 0 for r in run.from_(FIRST_CYCLE))  # |ratio - 1| > 1000: never
    assert [r["kl_divergence_max"] for r in run.from_(FIRST_CYCLE)] != [
        r["kl_divergence_max"] for r in baseline.from_(FIRST_CYCLE)
    ]


def test_negative_entropy_bonus_drives_the_entropy_down():
    baseline = healthy()
    run = with_fault(f"negative_entropy_bonus@{ONSET}:5")
    last = max(r["cycle_id"] for r in run.records)
    for cycle_id in range(FIRST_CYCLE, last + 1):  # lower after each affected cycle's training
        assert run.cycle(cycle_id)[-1]["batch_entropy_mean"] < baseline.cycle(cycle_id)[-1]["batch_entropy_mean"]
    assert run.cycle(last)[-1]["batch_entropy_mean"] < 0.75 * baseline.cycle(last)[-1]["batch_entropy_mean"]


@pytest.mark.parametrize("value", [1000.0, -3.0])
def test_reward_scale_multiplies_the_rewards_the_trainer_and_telemetry_use(value):
    run, baseline = with_fault(f"reward_scale@{ONSET}:{value}", env_id="Conflict-v0"), healthy(env_id="Conflict-v0")
    # the first affected cycle's capture was played by the unchanged policy: the same env rewards, x VALUE
    assert run.datasets[FIRST_CYCLE].rewards.tolist() == (baseline.datasets[FIRST_CYCLE].rewards * value).tolist()
    assert run.datasets[FIRST_CYCLE - 1].rewards.tolist() == baseline.datasets[FIRST_CYCLE - 1].rewards.tolist()
    dataset = run.datasets[FIRST_CYCLE]
    assert run.cycle(FIRST_CYCLE)[0]["reward_advantage_corr"] == pytest.approx(
        pearson_or_none(dataset.rewards, dataset.advantages)
    )
    assert run.cycle(FIRST_CYCLE)[0]["value_loss"] > 10 * baseline.cycle(FIRST_CYCLE)[0]["value_loss"]


def test_reward_noise_replaces_the_rewards_by_noise_the_telemetry_reads():
    run, baseline = with_fault(f"reward_noise@{ONSET}:2", env_id="Conflict-v0"), healthy(env_id="Conflict-v0")
    noisy = run.datasets[FIRST_CYCLE].rewards
    assert noisy.tolist() != baseline.datasets[FIRST_CYCLE].rewards.tolist()
    assert len(set(noisy.tolist())) == len(noisy)  # a draw per sample, not the environment's few values
    assert 0.5 < noisy.std() < 5
    assert run.cycle(FIRST_CYCLE)[0]["reward_advantage_corr"] == pytest.approx(
        pearson_or_none(noisy, run.datasets[FIRST_CYCLE].advantages)
    )


def test_advantage_sign_flips_the_reward_advantage_correlation():
    run, baseline = with_fault(f"advantage_sign@{ONSET}", env_id="Conflict-v0"), healthy(env_id="Conflict-v0")
    faulted, healthy_data = run.datasets[FIRST_CYCLE], baseline.datasets[FIRST_CYCLE]
    assert faulted.advantages.tolist() == (-healthy_data.advantages).tolist()
    assert faulted.returns.tolist() == healthy_data.returns.tolist()  # the value targets stay right
    healthy_corr = baseline.cycle(FIRST_CYCLE)[0]["reward_advantage_corr"]
    assert healthy_corr is not None and healthy_corr > 0.1
    assert run.cycle(FIRST_CYCLE)[0]["reward_advantage_corr"] == pytest.approx(-healthy_corr)
    assert all(r["reward_advantage_corr"] < 0 for r in run.from_(FIRST_CYCLE) if r["reward_advantage_corr"] is not None)


def test_value_reset_reinitialises_the_critic_once_at_the_first_affected_cycle():
    cycles = TOTAL_STEPS // PER_CYCLE
    healthy_harness = TrainingHarness(tiny())
    harness = TrainingHarness(tiny(faults=[parse_fault(f"value_reset@{ONSET}")]))
    agent = harness.agent
    critic = slice(-sum(p.size for p in (agent.c_w1, agent.c_b1, agent.c_w2, agent.c_b2, agent.c_w3, agent.c_b3)), None)
    resets: list[bool] = []
    reset_critic_if_due = harness.faults.reset_critic_if_due

    def counting(agent, optimizer) -> bool:
        resets.append(reset_critic_if_due(agent, optimizer))
        return resets[-1]

    harness.faults.reset_critic_if_due = counting
    try:
        with threadpool_limits(limits=1, user_api="blas"):  # as run_ppo trains
            for index in range(cycles):
                cycle_id = index + 1
                if cycle_id == FIRST_CYCLE:
                    trained_critic = agent.params[critic].copy()
                healthy_harness.mixed_cycle(index / cycles)
                harness.mixed_cycle(index / cycles)
                assert np.array_equal(agent.params, healthy_harness.agent.params) == (cycle_id < FIRST_CYCLE), cycle_id
    finally:
        harness.close()
        healthy_harness.close()
    assert resets.count(True) == 1 and resets.index(True) == FIRST_CYCLE - 1
    assert not np.allclose(trained_critic, agent.params[critic])


def test_value_reset_raises_the_value_loss_of_its_first_cycle():
    run, baseline = with_fault(f"value_reset@{ONSET}"), healthy()
    assert run.cycle(FIRST_CYCLE)[0]["value_loss"] > 2 * baseline.cycle(FIRST_CYCLE)[0]["value_loss"]
    # the dataset's values came from the critic before the reset: explained variance moves one cycle later
    assert run.cycle(FIRST_CYCLE)[0]["explained_variance"] == baseline.cycle(FIRST_CYCLE)[0]["explained_variance"]


def test_several_faults_each_start_at_their_own_step():
    run = Run(tiny(faults=[parse_fault(f"lr_spike@{ONSET}"), parse_fault(f"reward_scale@{ONSET + 4 * PER_CYCLE}")]))
    assert [f["first_cycle_id"] for f in run.harness.faults.report()] == [FIRST_CYCLE, FIRST_CYCLE + 4]


def test_a_fault_at_the_last_step_starts_in_the_last_cycle():
    run = Run(tiny(total_steps=TOTAL_STEPS - 10, faults=[parse_fault(f"lr_spike@{TOTAL_STEPS - 10}")]))
    # 24 cycles of 32 ticks: the last ends at global_step 768 >= 758, the one before at 736
    assert run.harness.faults.report()[0]["first_cycle_id"] == 24
    baseline = healthy(total_steps=TOTAL_STEPS - 10)
    changed = [f["cycle_id"] for f, h in zip(run.records, baseline.records) if f["learning_rate"] != h["learning_rate"]]
    assert changed == [24] * 4


def test_a_fault_not_reached_when_the_run_stops_has_no_first_cycle():
    harness = TrainingHarness(tiny(faults=[parse_fault(f"lr_spike@{ONSET}")]))
    try:
        for index in range(3):
            harness.mixed_cycle(index / 24)
    finally:
        harness.close()
    assert harness.faults.report() == [{"name": "lr_spike", "step": ONSET, "value": 50.0, "first_cycle_id": None}]


def test_rollout_mode_trains_its_one_capture_with_the_fault():
    run = Run(tiny(data_mode="rollout", faults=[parse_fault(f"lr_spike@{ONSET}")]))
    assert run.harness.faults.report()[0]["first_cycle_id"] == 1
    assert run.records[0]["learning_rate"] == pytest.approx(tiny().learning_rate * 50)


def test_faults_are_refused_in_replay_mode_and_beyond_the_run(tmp_path):
    with pytest.raises(HarnessError, match="replay consumes none"):
        TrainingHarness(tiny(data_mode="replay", replay_manifest=tmp_path, faults=[parse_fault("lr_spike@0")]))
    with pytest.raises(FaultError, match="beyond the run"):
        TrainingHarness(tiny(faults=[parse_fault(f"lr_spike@{TOTAL_STEPS + 1}")]))


def test_a_run_without_faults_is_the_run_it_was_before_faults_existed():
    # no fault: no fault generator, and every knob the healthy one (the schedule is inert)
    run = Run(tiny())
    assert run.harness.faults.report() == [] and run.harness.faults.active == ()
    assert [without_timing(r) for r in run.records] == [without_timing(r) for r in healthy().records]
    assert not math.isnan(run.records[-1]["policy_loss"])
