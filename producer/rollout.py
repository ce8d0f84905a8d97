"""Rollout storage and GAE: `RolloutBuffer` collects one capture, `build_dataset()` turns it into training data.

Episode ends are handled as Gymnasium 1.x reports them with `autoreset_mode=SAME_STEP`: the observation
returned on the last step is already the next episode's first, and the true last observation is in
`info["final_obs"]`. A terminated episode bootstraps from 0, a truncated one from V(final_obs), and the
GAE recursion never crosses an episode boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["RolloutBuffer", "Dataset", "DatasetMeta", "compute_gae"]


@dataclass(frozen=True, slots=True)
class Dataset:
    """Flat per-sample training arrays (length = `len(self)`)."""

    obs: np.ndarray
    actions: np.ndarray
    logprobs: np.ndarray
    values: np.ndarray
    rewards: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray

    def __len__(self) -> int:
        return int(self.actions.shape[0])


@dataclass(frozen=True, slots=True)
class DatasetMeta:
    """What a dataset came from: ticks captured and the episodes that finished inside it."""

    rollout_ticks: int
    episode_returns: tuple[float, ...] = ()
    episode_lengths: tuple[int, ...] = ()


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    bootstrap: np.ndarray,
    episode_end: np.ndarray,
    gamma: float,
    lam: float,
) -> np.ndarray:
    """GAE(λ) advantages for (T, N) arrays.

    `bootstrap[t]` is the value of the state after step t (0 when the episode terminated there,
    V(final_obs) when it was truncated); `episode_end[t]` stops the recursion at episode boundaries.
    """
    steps = rewards.shape[0]
    advantages = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1:])
    deltas = rewards + gamma * bootstrap - values
    carry = gamma * lam * (1.0 - episode_end)
    for t in range(steps - 1, -1, -1):
        running = deltas[t] + carry[t] * running
        advantages[t] = running
    return advantages


@dataclass
class RolloutBuffer:
    """One capture of `num_steps` vector steps from `num_envs` environments.

    Actions are indices (`action_shape` (), int64) for Discrete spaces and vectors (`action_shape`
    (dim,), float64) for Box spaces, stored as sampled (unclipped)."""

    num_steps: int
    num_envs: int
    obs_shape: tuple[int, ...]
    action_shape: tuple[int, ...] = ()
    action_dtype: type = np.int64
    obs: np.ndarray = field(init=False)
    actions: np.ndarray = field(init=False)
    logprobs: np.ndarray = field(init=False)
    values: np.ndarray = field(init=False)
    rewards: np.ndarray = field(init=False)
    terminated: np.ndarray = field(init=False)
    truncated: np.ndarray = field(init=False)
    truncation_values: np.ndarray = field(init=False)
    episode_returns: list[float] = field(init=False, default_factory=list)
    episode_lengths: list[int] = field(init=False, default_factory=list)
    step: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        t, n = self.num_steps, self.num_envs
        self.obs = np.zeros((t, n, *self.obs_shape))
        self.actions = np.zeros((t, n, *self.action_shape), dtype=self.action_dtype)
        for name in ("logprobs", "values", "rewards", "terminated", "truncated", "truncation_values"):
            setattr(self, name, np.zeros((t, n)))

    def reset(self) -> None:
        """Start a new capture (arrays are reused)."""
        self.step = 0
        self.truncation_values[:] = 0.0
        self.episode_returns = []
        self.episode_lengths = []

    def add(self, obs, actions, logprobs, values, rewards, terminated, truncated) -> None:
        """Store one vector step."""
        t = self.step
        self.obs[t] = obs
        self.actions[t] = actions
        self.logprobs[t] = logprobs
        self.values[t] = values
        self.rewards[t] = rewards
        self.terminated[t] = terminated
        self.truncated[t] = truncated
        self.step += 1

    def add_truncation_values(self, env_indices: np.ndarray, values: np.ndarray) -> None:
        """V(final_obs) for the environments truncated at the step just added."""
        self.truncation_values[self.step - 1, env_indices] = values

    def finish_episode(self, episode_return: float, length: int) -> None:
        """Record an episode that ended during this capture."""
        self.episode_returns.append(float(episode_return))
        self.episode_lengths.append(int(length))

    @property
    def full(self) -> bool:
        """True once `num_steps` vector steps are stored."""
        return self.step == self.num_steps

    def build_dataset(self, gamma: float, gae_lambda: float, last_values: np.ndarray) -> tuple[Dataset, DatasetMeta]:
        """GAE advantages and returns, flattened to samples, plus the capture's metadata."""
        if not self.full:
            raise ValueError(f"rollout holds {self.step} of {self.num_steps} steps")
        terminated, truncated = self.terminated, self.truncated
        episode_end = np.maximum(terminated, truncated)
        # the state after step t: the next stored obs's value, unless the episode ended at t
        next_values = np.empty_like(self.values)
        next_values[:-1] = self.values[1:]
        next_values[-1] = last_values
        bootstrap = np.where(episode_end > 0, self.truncation_values * (1.0 - terminated), next_values)
        advantages = compute_gae(self.rewards, self.values, bootstrap, episode_end, gamma, gae_lambda)
        samples = self.num_steps * self.num_envs
        dataset = Dataset(
            obs=self.obs.reshape(samples, *self.obs_shape).copy(),
            actions=self.actions.reshape(samples, *self.action_shape).copy(),
            logprobs=self.logprobs.reshape(samples).copy(),
            values=self.values.reshape(samples).copy(),
            rewards=self.rewards.reshape(samples).copy(),
            advantages=advantages.reshape(samples),
            returns=(advantages + self.values).reshape(samples),
        )
        meta = DatasetMeta(
            rollout_ticks=samples,
            episode_returns=tuple(self.episode_returns),
            episode_lengths=tuple(self.episode_lengths),
        )
        return dataset, meta
