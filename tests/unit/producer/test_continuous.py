"""The harness on Box action spaces (issue 8 item 1): Pendulum-v1 with the diagonal Gaussian policy.

Samples are stored unclipped and clipped only on their way to the environment, as in CleanRL's
`ppo_continuous_action.py`; the records stay valid v1.1 records even when the (differential) entropy
is negative. An environment whose extra dependency is missing is one `HarnessError` line.
"""

from __future__ import annotations

import math
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest

from consumers.validator import validate_record
from producer.harness import HarnessConfig, HarnessError, TrainingHarness, preset_for

NUM_ENVS, NUM_STEPS, UPDATE_EPOCHS, TOTAL_STEPS = 2, 32, 2, 256
BOX2D_MISSING = "LunarLander-v3"  # the venv does not install gymnasium[box2d]


def tiny(**overrides) -> HarnessConfig:
    values = dict(
        env_id="Pendulum-v1", num_envs=NUM_ENVS, num_steps=NUM_STEPS, update_epochs=UPDATE_EPOCHS,
        total_steps=TOTAL_STEPS, num_minibatches=2,
    )
    values.update(overrides)
    return HarnessConfig(**values)


class Collector:
    """Keeps every published record, numbering them as the stream writer would."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def publish(self, record: dict) -> None:
        record["log_stream_offset"] = len(self.records)
        self.records.append(record)


def publishing(config: HarnessConfig) -> TrainingHarness:
    """A harness whose records a `Collector` keeps (`harness.collected`)."""
    collector = Collector()
    harness = TrainingHarness(config, publish=collector.publish)
    harness.collected = collector.records
    return harness


def run(harness: TrainingHarness) -> list[dict]:
    try:
        harness.run_ppo()
    finally:
        harness.close()
    return harness.collected


def assert_all_valid(records: list[dict]) -> None:
    assert records
    for record in records:
        verdict = validate_record(record)
        assert verdict.status == "valid", (record, [e.to_json_dict() for e in verdict.errors])
        assert verdict.warnings == [], verdict.warnings


def test_a_pendulum_run_publishes_valid_v1_1_records_with_the_gaussian_entropy():
    harness = publishing(tiny())
    assert harness.continuous and harness.n_actions == 1 and harness.agent.continuous
    records = run(harness)
    assert len(records) == TOTAL_STEPS // (NUM_ENVS * NUM_STEPS) * UPDATE_EPOCHS
    assert_all_valid(records)
    assert {r["telemetry_version"] for r in records} == {"1.1"}
    # log_std starts at 0: a 1-D unit Gaussian's entropy, 0.5 ln(2 pi e), moved a little by training
    assert records[0]["batch_entropy_mean"] == pytest.approx(0.5 * math.log(2 * math.pi * math.e), abs=0.01)


def test_a_narrow_gaussian_policy_publishes_negative_entropy_in_valid_records():
    harness = publishing(tiny())
    harness.agent.log_std[:] = -3.0
    records = run(harness)
    assert_all_valid(records)
    assert all(r["batch_entropy_mean"] < 0 for r in records)


def test_actions_are_stored_unclipped_and_reach_the_environment_clipped_to_the_bounds(monkeypatch):
    harness = TrainingHarness(tiny())
    harness.agent.log_std[:] = 1.0  # std e: many samples outside Pendulum's [-2, 2]
    sent: list[np.ndarray] = []
    original_step = harness.envs.step

    def recording_step(actions):
        sent.append(np.array(actions))
        return original_step(actions)

    monkeypatch.setattr(harness.envs, "step", recording_step)
    try:
        cycle = harness.capture_rollout()
    finally:
        harness.close()
    stored = cycle.dataset.actions.reshape(NUM_STEPS, NUM_ENVS, 1)  # samples are (step, env) row-major
    assert cycle.dataset.actions.shape == (NUM_STEPS * NUM_ENVS, 1) and cycle.dataset.actions.dtype == np.float64
    assert np.abs(stored).max() > 2.0
    np.testing.assert_array_equal(np.stack(sent), np.clip(stored, -2.0, 2.0))
    # the stored log-probabilities are those of the unclipped samples
    logp, _ = harness.agent.log_prob_entropy(cycle.dataset.obs, cycle.dataset.actions)
    np.testing.assert_allclose(cycle.dataset.logprobs, logp, rtol=1e-5)


def test_the_log_std_is_trained_with_the_other_parameters():
    harness = publishing(tiny(ent_coef=0.5))  # a large bonus: the log-std must move
    run(harness)
    assert harness.agent.log_std[0] > 0.0
    assert np.shares_memory(harness.agent.log_std, harness.agent.params)


def test_the_same_seed_gives_the_same_continuous_run():
    first, second = run(publishing(tiny())), run(publishing(tiny()))
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("timestamp_ms", "epoch_duration_sec")} for r in rs]
    assert strip(first) == strip(second)


@pytest.mark.parametrize("overrides", [{"record_rollouts": "rec"}, {"data_mode": "replay", "replay_manifest": "m.json"}])
def test_recording_and_replay_of_continuous_actions_are_one_harness_error(tmp_path, overrides):
    paths = {key: tmp_path / value if key != "data_mode" else value for key, value in overrides.items()}
    with pytest.raises(HarnessError, match="Discrete actions only") as caught:
        TrainingHarness(tiny(**paths))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "rec").exists()


def test_a_rejected_run_closes_the_environments_it_made(tmp_path):
    made = []

    class Recording(TrainingHarness):
        @staticmethod
        def _make_envs(config):
            made.append(TrainingHarness._make_envs(config))
            return made[-1]

    with pytest.raises(HarnessError, match="Discrete actions only"):
        Recording(tiny(record_rollouts=tmp_path / "rec"))
    assert len(made) == 1 and made[0].closed


def test_an_environment_with_its_dependency_missing_is_one_line_naming_what_to_install():
    with pytest.raises(gym.error.DependencyNotInstalled):  # the premise: Box2D is not installed here
        gym.make(BOX2D_MISSING)
    with pytest.raises(HarnessError) as caught:
        TrainingHarness(HarnessConfig(env_id=BOX2D_MISSING, num_envs=1))
    message = str(caught.value)
    assert message.startswith(f"{BOX2D_MISSING} needs a package that is not installed: ")
    assert "gymnasium[box2d]" in message and "\n" not in message


def test_the_pendulum_preset_is_our_own_and_other_environments_keep_the_cartpole_defaults():
    pendulum = preset_for("Pendulum-v1")
    assert (pendulum.num_envs, pendulum.num_steps, pendulum.gamma, pendulum.anneal_lr) == (4, 1024, 0.9, False)
    defaults = preset_for("CartPole-v1")
    for env_id in ("Acrobot-v1", "Conflict-v0"):
        assert preset_for(env_id) == replace(defaults, env_id=env_id)
