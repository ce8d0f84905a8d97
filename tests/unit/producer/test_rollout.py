"""GAE and the rollout buffer (`producer.rollout`) against a naive per-environment definition."""

from __future__ import annotations

import numpy as np
import pytest

from producer.rollout import RolloutBuffer, compute_gae

GAMMA, LAM = 0.97, 0.9


def naive_gae(rewards, values, terminated, truncated, truncation_values, last_values, gamma, lam):
    """The textbook definition, one environment and one start step at a time.

    delta_t = r_t + gamma * next_value_t * (1 - terminated_t) - V_t, with next_value_t = V(final_obs) when
    the episode was truncated at t, V_{t+1} otherwise (last_values after the last step);
    A_t = sum_k (gamma * lam)^k delta_{t+k}, summed only up to the step where t's episode ends.
    """
    steps, envs = rewards.shape
    advantages = np.zeros((steps, envs))
    for e in range(envs):
        delta = np.zeros(steps)
        for t in range(steps):
            if terminated[t, e]:
                next_value = 0.0
            elif truncated[t, e]:
                next_value = truncation_values[t, e]
            elif t + 1 < steps:
                next_value = values[t + 1, e]
            else:
                next_value = last_values[e]
            delta[t] = rewards[t, e] + gamma * next_value * (1.0 - terminated[t, e]) - values[t, e]
        for t in range(steps):
            total, weight = 0.0, 1.0
            for k in range(t, steps):
                total += weight * delta[k]
                if terminated[k, e] or truncated[k, e]:
                    break  # never across an episode boundary
                weight *= gamma * lam
            advantages[t, e] = total
    return advantages


def filled_buffer(seed: int, steps: int = 12, envs: int = 4, obs_shape=(3,)) -> tuple[RolloutBuffer, np.ndarray]:
    """A full buffer of random data with terminations and truncations mid-capture and at the last step."""
    rng = np.random.default_rng(seed)
    buffer = RolloutBuffer(steps, envs, obs_shape)
    terminated = rng.random((steps, envs)) < 0.15
    truncated = (rng.random((steps, envs)) < 0.15) & ~terminated
    terminated[steps - 1, 0] = True  # ends at the last step, each way
    truncated[steps - 1, 1] = True
    terminated[steps - 1, 1] = False
    terminated[steps // 2, 2], truncated[steps // 2, 2] = False, True  # mid-capture, each way
    terminated[steps // 2, 3], truncated[steps // 2, 3] = True, False
    terminated[3, 3] = truncated[3, 3] = True  # both flags: termination wins, bootstrap 0
    for t in range(steps):
        buffer.add(
            rng.normal(size=(envs, *obs_shape)),
            rng.integers(0, 3, envs),
            rng.normal(size=envs),
            rng.normal(size=envs),
            rng.normal(size=envs),
            terminated[t],
            truncated[t],
        )
        cut = np.flatnonzero(truncated[t])  # a value at a step also terminated must be ignored
        if cut.size:
            buffer.add_truncation_values(cut, rng.normal(size=cut.size) * 3.0)
    return buffer, rng.normal(size=envs)


def naive_for(buffer: RolloutBuffer, last_values: np.ndarray) -> np.ndarray:
    return naive_gae(
        buffer.rewards, buffer.values, buffer.terminated, buffer.truncated, buffer.truncation_values,
        last_values, GAMMA, LAM,
    )


@pytest.mark.parametrize("seed", range(5))
def test_build_dataset_advantages_equal_the_naive_definition(seed):
    buffer, last_values = filled_buffer(seed)
    assert buffer.terminated.any() and buffer.truncated.any()
    dataset, _ = buffer.build_dataset(GAMMA, LAM, last_values)
    expected = naive_for(buffer, last_values)
    np.testing.assert_allclose(dataset.advantages, expected.reshape(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_compute_gae_equals_the_naive_definition(seed):
    buffer, last_values = filled_buffer(seed)
    terminated, truncated = buffer.terminated, buffer.truncated
    episode_end = np.maximum(terminated, truncated)
    next_values = np.vstack([buffer.values[1:], last_values[None]])
    bootstrap = np.where(terminated > 0, 0.0, np.where(truncated > 0, buffer.truncation_values, next_values))
    advantages = compute_gae(buffer.rewards, buffer.values, bootstrap, episode_end, GAMMA, LAM)
    np.testing.assert_allclose(advantages, naive_for(buffer, last_values), rtol=1e-12, atol=1e-12)


def test_gae_with_lambda_one_and_no_episode_end_is_discounted_return_minus_value():
    rng = np.random.default_rng(0)
    steps = 6
    rewards, values = rng.normal(size=(steps, 1)), rng.normal(size=(steps, 1))
    last = 2.5
    bootstrap = np.vstack([values[1:], [[last]]])
    adv = compute_gae(rewards, values, bootstrap, np.zeros((steps, 1)), GAMMA, 1.0)
    for t in range(steps):
        ret = sum(GAMMA ** (k - t) * rewards[k, 0] for k in range(t, steps)) + GAMMA ** (steps - t) * last
        assert adv[t, 0] == pytest.approx(ret - values[t, 0], rel=1e-12)


def one_env_buffer(terminated_at=None, truncated_at=None, truncation_value=0.0) -> RolloutBuffer:
    buffer = RolloutBuffer(4, 1, (1,))
    rewards = [1.0, 2.0, 3.0, 4.0]
    values = [0.5, 0.25, 0.75, 1.5]
    for t in range(4):
        buffer.add(np.zeros((1, 1)), [0], [0.0], [values[t]], [rewards[t]], [t == terminated_at], [t == truncated_at])
        if t == truncated_at:
            buffer.add_truncation_values(np.array([0]), np.array([truncation_value]))
    return buffer


def test_a_terminated_step_bootstraps_zero():
    dataset, _ = one_env_buffer(terminated_at=1).build_dataset(GAMMA, LAM, np.array([9.0]))
    assert dataset.advantages[1] == pytest.approx(2.0 - 0.25)  # r - V, nothing after


def test_a_truncated_step_bootstraps_from_its_truncation_value():
    dataset, _ = one_env_buffer(truncated_at=1, truncation_value=10.0).build_dataset(GAMMA, LAM, np.array([9.0]))
    assert dataset.advantages[1] == pytest.approx(2.0 + GAMMA * 10.0 - 0.25)


def test_a_truncation_at_the_last_step_bootstraps_from_its_truncation_value_not_last_values():
    dataset, _ = one_env_buffer(truncated_at=3, truncation_value=10.0).build_dataset(GAMMA, LAM, np.array([-50.0]))
    assert dataset.advantages[3] == pytest.approx(4.0 + GAMMA * 10.0 - 1.5)


def test_the_last_step_without_an_episode_end_bootstraps_from_last_values():
    dataset, _ = one_env_buffer().build_dataset(GAMMA, LAM, np.array([-50.0]))
    assert dataset.advantages[3] == pytest.approx(4.0 + GAMMA * -50.0 - 1.5)


@pytest.mark.parametrize("end", ["terminated", "truncated"])
def test_gae_never_crosses_an_episode_boundary(end):
    kwargs = {f"{end}_at": 1, "truncation_value": 3.0}
    before = one_env_buffer(**kwargs)
    after = one_env_buffer(**kwargs)
    after.rewards[2:] += 100.0  # the next episode changes completely
    after.values[2:] -= 7.0
    a, _ = before.build_dataset(GAMMA, LAM, np.array([0.0]))
    b, _ = after.build_dataset(GAMMA, LAM, np.array([123.0]))
    np.testing.assert_array_equal(a.advantages[:2], b.advantages[:2])
    assert not np.array_equal(a.advantages[2:], b.advantages[2:])


def test_returns_are_advantages_plus_values():
    buffer, last_values = filled_buffer(11)
    dataset, _ = buffer.build_dataset(GAMMA, LAM, last_values)
    np.testing.assert_allclose(dataset.returns, dataset.advantages + dataset.values, rtol=0, atol=0)


def test_build_dataset_flattens_in_step_then_env_order():
    steps, envs = 5, 3
    buffer = RolloutBuffer(steps, envs, (2,))
    for t in range(steps):
        tag = 10 * t + np.arange(envs)  # sample (t, e) carries 10 t + e
        buffer.add(np.stack([tag, -tag], axis=1), tag, tag + 0.5, tag + 0.25, tag + 0.75, np.zeros(envs), np.zeros(envs))
    dataset, _ = buffer.build_dataset(GAMMA, LAM, np.zeros(envs))
    expected = np.array([10 * t + e for t in range(steps) for e in range(envs)])
    np.testing.assert_array_equal(dataset.actions, expected)
    np.testing.assert_array_equal(dataset.obs, np.stack([expected, -expected], axis=1))
    np.testing.assert_array_equal(dataset.logprobs, expected + 0.5)
    np.testing.assert_array_equal(dataset.values, expected + 0.25)
    np.testing.assert_array_equal(dataset.rewards, expected + 0.75)
    assert len(dataset) == steps * envs


def test_dataset_arrays_do_not_alias_the_reused_buffer():
    buffer, last_values = filled_buffer(12)
    dataset, _ = buffer.build_dataset(GAMMA, LAM, last_values)
    snapshot = dataset.obs.copy(), dataset.rewards.copy(), dataset.actions.copy()
    buffer.reset()
    buffer.obs[:] = 99.0
    buffer.rewards[:] = 99.0
    buffer.actions[:] = 99
    np.testing.assert_array_equal(dataset.obs, snapshot[0])
    np.testing.assert_array_equal(dataset.rewards, snapshot[1])
    np.testing.assert_array_equal(dataset.actions, snapshot[2])


def test_meta_counts_ticks_and_records_finished_episodes():
    buffer, last_values = filled_buffer(13, steps=7, envs=4)
    buffer.finish_episode(12.5, 9)
    buffer.finish_episode(-3.0, 2)
    _, meta = buffer.build_dataset(GAMMA, LAM, last_values)
    assert meta.rollout_ticks == 7 * 4
    assert meta.episode_returns == (12.5, -3.0)
    assert meta.episode_lengths == (9, 2)


def test_reset_starts_a_clean_capture():
    buffer, _ = filled_buffer(14)
    buffer.finish_episode(1.0, 1)
    buffer.reset()
    assert buffer.step == 0 and not buffer.full
    assert buffer.episode_returns == [] and buffer.episode_lengths == []
    assert not buffer.truncation_values.any()


def test_build_dataset_on_a_partly_filled_buffer_raises():
    buffer = RolloutBuffer(4, 2, (1,))
    for _ in range(3):
        buffer.add(np.zeros((2, 1)), [0, 0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0, 0], [0, 0])
    assert not buffer.full
    with pytest.raises(ValueError, match="3 of 4"):
        buffer.build_dataset(GAMMA, LAM, np.zeros(2))
