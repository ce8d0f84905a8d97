"""Conflict-v0: the Gymnasium contract, seeding, reward shape, episode bounds and the baseline figures."""

from __future__ import annotations

import importlib
import math
import re
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import producer.envs
from producer.envs import conflict
from producer.envs.conflict import (
    HEURISTIC_MEAN_RETURN,
    MAX_TICKS,
    RANDOM_MEAN_RETURN,
    ConflictEnv,
    evaluate_policy,
    heuristic_action,
    random_action,
)

_WRAPPED_ENV_WARNING = "is different from the unwrapped version"


def _heuristic(obs: np.ndarray, rng: np.random.Generator) -> int:
    return heuristic_action(obs)


def _read_the_bluff(obs: np.ndarray, rng: np.random.Generator) -> int:
    # Counter the stance; against a flagged bluff play the stance itself, which beats the bluff.
    stance = int(np.argmax(obs[1:4]))
    counter = (conflict.DEFEND, conflict.GATHER, conflict.ATTACK)
    return stance if obs[4] > 0.5 else counter[stance]


def _play(env: gymnasium.Env, seed: int, actions: list[int]) -> list[tuple]:
    """Run `actions` from `reset(seed)`, resetting (unseeded) after each episode end."""
    obs, _ = env.reset(seed=seed)
    trajectory = [(obs.tolist(),)]
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        trajectory.append((obs.tolist(), reward, terminated, truncated))
        if terminated or truncated:
            obs, _ = env.reset()
            trajectory.append((obs.tolist(),))
    return trajectory


def test_check_env_passes_on_the_raw_environment():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(gymnasium.make("Conflict-v0").unwrapped)
    assert [str(w.message) for w in caught] == []


def test_check_env_passes_through_gymnasium_make():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(gymnasium.make("Conflict-v0"))
    # The only warning is check_env's advice to pass the unwrapped env, not a defect.
    assert [str(w.message) for w in caught if _WRAPPED_ENV_WARNING not in str(w.message)] == []


def test_registration_names_the_entry_point_and_the_tick_limit():
    spec = gymnasium.spec("Conflict-v0")
    assert spec.entry_point == "producer.envs.conflict:ConflictEnv"
    assert spec.max_episode_steps == MAX_TICKS


def test_importing_the_package_again_does_not_register_twice():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warns when an id is overridden
        importlib.reload(producer.envs)
    assert "Conflict-v0" in gymnasium.registry


def test_spaces_have_three_actions_and_a_small_bounded_float32_box():
    env = ConflictEnv()
    assert isinstance(env.action_space, gymnasium.spaces.Discrete)
    assert env.action_space.n >= 3
    space = env.observation_space
    assert space.dtype == np.float32
    assert space.shape == (9,)
    assert np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))


def test_same_seed_and_actions_give_the_same_trajectory():
    actions = np.random.default_rng(7).integers(3, size=600).tolist()
    first = _play(ConflictEnv(), 123, actions)
    second = _play(gymnasium.make("Conflict-v0"), 123, actions)
    assert first == second


def test_different_seeds_give_different_trajectories():
    actions = np.random.default_rng(7).integers(3, size=100).tolist()
    assert _play(ConflictEnv(), 1, actions) != _play(ConflictEnv(), 2, actions)


def test_random_play_rewards_take_both_signs_and_several_magnitudes():
    env = ConflictEnv()
    rng = np.random.default_rng(0)
    rewards = []
    for episode in range(30):
        obs, _ = env.reset(seed=episode)
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(random_action(obs, rng))
            assert env.observation_space.contains(obs)
            rewards.append(reward)
            done = terminated or truncated
    assert min(rewards) < 0 < max(rewards)
    magnitudes = {round(abs(r), 6) for r in rewards}
    assert len(magnitudes) >= 3
    # Per-tick shaping (0.05, 0.1) and a larger terminal reward both occur.
    assert {0.05, 0.1} <= magnitudes
    assert max(magnitudes) > 1.0


@pytest.mark.parametrize("make", [ConflictEnv, lambda: gymnasium.make("Conflict-v0")])
def test_episodes_end_within_the_tick_limit(make):
    env = make()
    rng = np.random.default_rng(0)
    truncations = 0
    for episode in range(60):
        obs, _ = env.reset(seed=episode)
        for tick in range(1, MAX_TICKS + 1):
            obs, _, terminated, truncated, _ = env.step(_heuristic(obs, rng))
            if terminated or truncated:
                break
        assert terminated or truncated, f"episode {episode} still running after {MAX_TICKS} ticks"
        if truncated:
            assert not terminated
            assert tick == MAX_TICKS and obs[-1] == 1.0
            truncations += 1
        else:
            assert abs(obs[0]) == 1.0  # the front reached an end
    assert truncations > 0  # the heuristic stalls sometimes, so the limit is exercised


def test_invalid_action_is_rejected():
    env = ConflictEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(3)


def test_heuristic_beats_random_by_a_clear_margin():
    random_mean, _ = evaluate_policy(random_action, episodes=300, seed=0)
    heuristic_mean, _ = evaluate_policy(_heuristic, episodes=300, seed=0)
    margin = 0.5 * (HEURISTIC_MEAN_RETURN - RANDOM_MEAN_RETURN)
    assert heuristic_mean > random_mean + margin


def test_reading_the_bluff_beats_the_heuristic_so_there_is_room_to_learn():
    best_mean, _ = evaluate_policy(_read_the_bluff, episodes=100, seed=0)
    heuristic_mean, _ = evaluate_policy(_heuristic, episodes=100, seed=0)
    assert best_mean > heuristic_mean + 1.0
    assert best_mean > 1.9  # it wins (nearly) every contest


def _docstring_figure(doc: str, label: str) -> tuple[float, float]:
    match = re.search(re.escape(label) + r"[^:]*: ([+-]?\d+\.\d+) ± (\d+\.\d+)", doc)
    assert match, f"no figure for {label!r} in the docstring"
    return float(match.group(1)), float(match.group(2))


def test_docstring_figures_agree_with_the_constants():
    assert _docstring_figure(conflict.__doc__, "uniform random policy")[0] == RANDOM_MEAN_RETURN
    assert _docstring_figure(conflict.__doc__, "`heuristic_action`")[0] == HEURISTIC_MEAN_RETURN
    assert f"random {RANDOM_MEAN_RETURN:+.3f}" in " ".join(ConflictEnv.__doc__.split())
    assert f"`heuristic_action` {HEURISTIC_MEAN_RETURN:+.3f}" in " ".join(ConflictEnv.__doc__.split())


@pytest.mark.parametrize(
    ("label", "policy"), [("uniform random policy", random_action), ("`heuristic_action`", _heuristic)]
)
def test_docstring_figures_match_a_fresh_evaluation(label, policy):
    mean, std = _docstring_figure(conflict.__doc__, label)
    episodes = 200
    # Episodes the docstring did not use (it used seeds 0..999); four standard errors of tolerance.
    fresh_mean, fresh_std = evaluate_policy(policy, episodes=episodes, seed=5_000)
    assert abs(fresh_mean - mean) < 4 * std / math.sqrt(episodes) + 0.02
    assert abs(fresh_std - std) < 0.25 * std + 0.05


def test_sync_vector_env_with_same_step_autoreset_reports_final_obs():
    envs = gymnasium.vector.SyncVectorEnv(
        [lambda: gymnasium.make("Conflict-v0") for _ in range(4)],
        autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP,
    )
    obs, _ = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    endings = 0
    for _ in range(500):
        obs, rewards, terminated, truncated, infos = envs.step(rng.integers(3, size=4))
        assert obs.shape == (4, 9) and obs.dtype == np.float32
        ended = terminated | truncated
        if ended.any():
            assert "final_obs" in infos
            for i in np.flatnonzero(ended):
                endings += 1
                assert infos["_final_obs"][i]
                assert envs.single_observation_space.contains(infos["final_obs"][i])
                assert abs(infos["final_obs"][i][0]) == 1.0 or truncated[i]
                # SAME_STEP: the returned observation already starts the next episode.
                assert obs[i][0] == 0.0 and obs[i][-1] == 0.0
    envs.close()
    assert endings > 4
