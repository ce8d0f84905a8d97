"""`TrainingHarness`: PPO on Gymnasium vector environments, publishing one `EpochSummary` per epoch.

The loop, as in CleanRL's `ppo.py`:

    for each cycle:                       # data_mode "mixed": capture <-> train, cycle_id 1, 2, 3, ...
        dataset, meta = capture_rollout() #   num_envs x num_steps ticks with the current policy
        for epoch in range(update_epochs):
            for minibatch in shuffled(dataset):
                loss, grad = PPO objective (producer.ppo)
                clip grad to max_grad_norm; Adam step
            publish EpochSummary           # statistics from the minibatches just run

`data_mode "rollout"` captures once (all `total_steps` ticks) and trains on it; `"replay"` trains on
rollouts recorded earlier (`producer.replay`), capturing nothing (`cycle_id` and `rollout_ticks` 0).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from threadpoolctl import threadpool_limits

from avro_schemas.errors import TelemetryError

from . import envs as _register_envs  # noqa: F401  (registers Conflict-v0)
from .faults import Fault, FaultSchedule, check_fault_steps
from .ppo import ActorCritic, Adam
from .recorder import EpochRecorder
from .records import RowBatch
from .rollout import Dataset, DatasetMeta, RolloutBuffer
from .stats import mean_or_none

__all__ = ["HarnessConfig", "HarnessError", "TrainingHarness", "DATA_MODES", "PRESETS", "preset_for"]

DATA_MODES = ("mixed", "rollout", "replay")


class HarnessError(TelemetryError):
    """A harness configuration or environment that cannot run."""


@dataclass
class HarnessConfig:
    """Everything a run needs. Defaults are rl-baselines3-zoo's tuned PPO for CartPole-v1."""

    env_id: str = "CartPole-v1"
    """Gymnasium environment id (Discrete or 1-D Box actions, Box observations)."""
    seed: int = 0
    """Seeds the network initialisation, the action sampling, the shuffles and the environments."""
    total_steps: int = 100_000
    """Environment ticks to consume (summed over the vector environments)."""
    num_envs: int = 8
    """Environments stepped together through `gymnasium.vector.SyncVectorEnv`."""
    num_steps: int = 32
    """Vector steps per capture in mixed mode (a cycle's dataset is num_envs x num_steps samples)."""
    num_minibatches: int = 1
    """Minibatches per epoch."""
    update_epochs: int = 20
    """Epochs (passes over the dataset) per cycle; each publishes one record."""
    learning_rate: float = 1e-3
    """Adam step size at the start of the run."""
    anneal_lr: bool = True
    """Decay the learning rate linearly towards 0 over the run."""
    clip_range: float = 0.2
    """PPO's ratio clip ε at the start of the run."""
    anneal_clip: bool = True
    """Decay ε linearly with the learning rate, as rl-zoo's `lin_0.2`."""
    gamma: float = 0.98
    """Discount factor."""
    gae_lambda: float = 0.8
    """GAE λ."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value-loss coefficient."""
    max_grad_norm: float = 0.5
    """Global L2 gradient-norm clip."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    target_kl: float | None = None
    """Stop a cycle's epochs early once a minibatch's KL exceeds 1.5 x this (SB3's rule)."""
    hidden: int = 64
    """Width of both hidden layers of the actor and of the critic."""
    dtype: str = "float32"
    """Floating-point type of the networks and Adam (float32 as in the PyTorch implementations)."""
    data_mode: str = "mixed"
    """`mixed` (capture <-> train cycles), `rollout` (one capture, then train) or `replay`."""
    replay_manifest: Path | None = None
    """With data_mode `replay`: the manifest of recorded rollouts to train from."""
    record_rollouts: Path | None = None
    """Write every capture to this directory (manifest + .npz) for later replay."""
    run_id: str = "run"
    """The run's id in every record (1-128 chars of [A-Za-z0-9._:-])."""
    enable_telemetry_v1_1: bool = True
    """Publish v1.1 records; False falls back to v1.0 records for consumers that lag."""
    faults: list[Fault] = field(default_factory=list)
    """Training faults to inject (SPEC §8, `producer.faults`); each changes the cycles whose training
    starts at `global_step >= fault.step`. Not with data_mode `replay` (it consumes no environment steps)."""


# Per-environment hyperparameters over the CartPole defaults above.
# Acrobot-v1 and Conflict-v0 have none: they learn with the CartPole defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {},
    # rl-baselines3-zoo's PPO for Pendulum-v1 without its gSDE and VecNormalize: 4 envs x 1024 steps,
    # minibatches of 64, 10 epochs, γ 0.9, λ 0.95, lr 1e-3 and clip 0.2 constant. Seeds 0-2 end 300k
    # steps at a mean return of about -200 (docs/performance.md).
    "Pendulum-v1": {
        "num_envs": 4,
        "num_steps": 1024,
        "num_minibatches": 64,
        "update_epochs": 10,
        "gamma": 0.9,
        "gae_lambda": 0.95,
        "learning_rate": 1e-3,
        "anneal_lr": False,
        "anneal_clip": False,
    },
}


def preset_for(env_id: str) -> HarnessConfig:
    """The tuned configuration for `env_id` (the CartPole defaults for an environment without a preset)."""
    return HarnessConfig(env_id=env_id, **PRESETS.get(env_id, {}))


@dataclass
class CycleData:
    """One cycle's dataset and its capture's metadata. The dataset-level statistics of its records are
    computed by whoever reads the packed rows (`producer.records.RowBatch`), outside the training loop."""

    dataset: Dataset
    meta: DatasetMeta
    cycle_id: int

    @property
    def mean_episode_return(self) -> float | None:
        """Mean return of the episodes that finished in the dataset's capture (None when none did)."""
        return mean_or_none(self.meta.episode_returns)


@dataclass
class EpisodeLog:
    """Finished episodes of the run: (global_step at the end, return, length).

    Typed arrays, not lists: a long run finishes millions of episodes, at 8 bytes a value instead of a
    Python object each.
    """

    steps: array = field(default_factory=lambda: array("q"))
    returns: array = field(default_factory=lambda: array("d"))
    lengths: array = field(default_factory=lambda: array("q"))


Publish = Callable[[dict[str, Any]], None]


class TrainingHarness:
    """Runs PPO and reports every minibatch and epoch to an `EpochRecorder` (`producer.recorder`), which
    hands each epoch's record to `publish` (a sink's publish method) or, as packed rows
    (`producer.records.RowBatch`), to `publish_rows` (a publisher in another process); with neither,
    nothing is recorded. Records are handed over in batches: when an epoch ends and the previous batch
    is more than `max_publish_delay` seconds old, and when the run ends (or stops); `flush` (optional)
    is called after each batch. Records reach readers within about a second of their epoch, and
    batching keeps telemetry's cost to about 1% of training time on CartPole (docs/performance.md).
    """

    def __init__(
        self,
        config: HarnessConfig,
        publish: Publish | None = None,
        flush: Callable[[], None] | None = None,
        publish_rows: Callable[[RowBatch], None] | None = None,
    ) -> None:
        if config.data_mode not in DATA_MODES:
            raise HarnessError(f"data_mode must be one of {', '.join(DATA_MODES)}, got {config.data_mode!r}")
        if config.data_mode == "replay" and config.replay_manifest is None:
            raise HarnessError("data_mode replay needs a replay manifest")
        if config.faults and config.data_mode == "replay":
            raise HarnessError("faults start at an environment step; data_mode replay consumes none")
        check_fault_steps(config.faults, config.total_steps)
        self.config = config
        self.recorder: EpochRecorder | None = None
        """Where the epochs are recorded (None: not published)."""
        if publish is not None or publish_rows is not None:
            self.recorder = EpochRecorder(
                config.run_id, publish=publish, publish_rows=publish_rows, flush=flush,
                telemetry_version="1.1" if config.enable_telemetry_v1_1 else "1.0", data_mode=config.data_mode,
            )
        self.envs = self._make_envs(config)
        obs_space, act_space = self.envs.single_observation_space, self.envs.single_action_space
        self.continuous = isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1
        """Box actions: a diagonal Gaussian policy, samples clipped to the bounds at the environment."""
        try:
            self._check_spaces(config, obs_space, act_space)
        except HarnessError:
            self.envs.close()  # a rejected run leaves no environment open
            raise
        self.obs_shape = tuple(obs_space.shape)
        self.n_actions = int(act_space.shape[0]) if self.continuous else int(act_space.n)
        """The number of Discrete actions, or the dimension of a Box action."""
        self.action_shape: tuple[int, ...] = (self.n_actions,) if self.continuous else ()
        self._action_bounds = (act_space.low, act_space.high) if self.continuous else None
        dtype = np.dtype(config.dtype)
        self.agent = ActorCritic(
            int(np.prod(self.obs_shape)), self.n_actions, config.hidden, config.seed, dtype, continuous=self.continuous
        )
        self.optimizer = Adam(self.agent.params.size, config.learning_rate, dtype=dtype)
        self.rng = np.random.default_rng(config.seed)
        self.faults = FaultSchedule(config.faults, config.seed)
        """The injected faults (SPEC §8): which are active and what they make of each training knob."""
        self.global_step = 0
        self.epoch = 0
        self.cycle_id = 0
        self.episodes = EpisodeLog()
        self.stop_requested = False
        self._lr = config.learning_rate
        self._clip = config.clip_range
        self._obs: np.ndarray | None = None
        self._ep_return = np.zeros(config.num_envs)
        self._ep_length = np.zeros(config.num_envs, dtype=np.int64)
        self._recorder = None
        if config.record_rollouts is not None:
            from .replay import RolloutRecorder

            self._recorder = RolloutRecorder(config.record_rollouts, config.env_id, self.obs_shape, self.n_actions)

    def _check_spaces(self, config: HarnessConfig, obs_space: gym.Space, act_space: gym.Space) -> None:
        if not (self.continuous or isinstance(act_space, gym.spaces.Discrete)) or not isinstance(obs_space, gym.spaces.Box):
            raise HarnessError(f"{config.env_id}: PPO here needs Discrete or 1-D Box actions and Box observations")
        if self.continuous and (config.data_mode == "replay" or config.record_rollouts is not None):
            raise HarnessError(f"{config.env_id}: recorded rollouts (record, replay) support Discrete actions only")

    @staticmethod
    def _make_envs(config: HarnessConfig) -> gym.vector.SyncVectorEnv:
        try:
            gym.spec(config.env_id)
        except gym.error.Error as exc:
            raise HarnessError(f"unknown environment {config.env_id!r}: {exc}") from exc
        try:
            return gym.vector.SyncVectorEnv(
                [lambda: gym.make(config.env_id) for _ in range(config.num_envs)],
                autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
            )
        except gym.error.DependencyNotInstalled as exc:  # e.g. LunarLander-v3 without Box2D
            raise HarnessError(f"{config.env_id} needs a package that is not installed: {exc}") from exc

    # ------------------------------------------------------------------------------------- rollouts

    def capture_rollout(self, num_steps: int | None = None) -> CycleData:
        """Step the environments with the current policy; returns the next cycle's dataset."""
        cfg = self.config
        steps = num_steps or cfg.num_steps
        if self._obs is None:
            self._obs, _ = self.envs.reset(seed=cfg.seed)
        self.cycle_id += 1
        buffer = RolloutBuffer(
            steps, cfg.num_envs, self.obs_shape, self.action_shape, np.float64 if self.continuous else np.int64
        )
        obs = self._obs
        agent, rng, envs = self.agent, self.rng, self.envs
        for _ in range(steps):
            flat_obs = obs.reshape(cfg.num_envs, -1).astype(agent.dtype, copy=False)
            actions, logprobs, values = agent.policy(flat_obs, rng)
            next_obs, rewards, terminated, truncated, infos = envs.step(self._env_actions(actions))
            buffer.add(flat_obs, actions, logprobs, values, rewards, terminated, truncated)
            self.global_step += cfg.num_envs
            self._ep_return += rewards
            self._ep_length += 1
            done = terminated | truncated
            if done.any():
                cut = np.flatnonzero(truncated & ~terminated)
                if cut.size:  # bootstrap truncated episodes from their true last observation
                    final = np.stack([infos["final_obs"][i] for i in cut]).reshape(cut.size, -1)
                    buffer.add_truncation_values(cut, agent.value(final))
                for i in np.flatnonzero(done):
                    buffer.finish_episode(self._ep_return[i], self._ep_length[i])
                    self.episodes.steps.append(self.global_step)
                    self.episodes.returns.append(float(self._ep_return[i]))
                    self.episodes.lengths.append(int(self._ep_length[i]))
                self._ep_return[done] = 0.0
                self._ep_length[done] = 0
            obs = next_obs
        self._obs = obs
        last_values = agent.value(obs.reshape(cfg.num_envs, -1).astype(agent.dtype, copy=False))
        if self._recorder is not None:
            self._recorder.record(buffer, last_values, self.cycle_id)
        # SPEC §8: a fault changes every cycle whose training starts at global_step >= its STEP; the
        # reward faults act before GAE, advantage_sign on the dataset the trainer (and telemetry) reads
        self.faults.activate(self.global_step, self.cycle_id)
        self.faults.change_rewards(buffer.rewards)
        dataset, meta = buffer.build_dataset(cfg.gamma, cfg.gae_lambda, last_values)
        return CycleData(self.faults.change_dataset(dataset), meta, self.cycle_id)

    def _env_actions(self, actions: np.ndarray) -> np.ndarray:
        """The actions the environments get: Gaussian samples clipped to the Box bounds (the buffer
        keeps them unclipped, so their log-probabilities stay those of the policy, as in CleanRL)."""
        if self._action_bounds is None:
            return actions
        return np.clip(actions, *self._action_bounds)

    # ------------------------------------------------------------------------------------- training

    def train_epochs(self, cycle: CycleData, data_mode: str) -> int:
        """PPO epochs on one cycle's dataset, one record per epoch to the recorder; returns epochs run."""
        cfg = self.config
        data = cycle.dataset
        n = len(data)
        batch = max(1, n // cfg.num_minibatches)
        agent, optimizer, faults, recorder = self.agent, self.optimizer, self.faults, self.recorder
        # the knobs in use for this cycle: the healthy ones unless an active fault changes them
        faults.reset_critic_if_due(agent, optimizer)
        optimizer.lr = faults.learning_rate(self._lr)
        clip_range, ent_coef = faults.clip_range(self._clip), faults.ent_coef(cfg.ent_coef)
        max_grad_norm = faults.max_grad_norm(cfg.max_grad_norm)
        if recorder is not None:
            recorder.begin_cycle(
                data.rewards, data.advantages, data.returns, data.values, global_step=self.global_step,
                learning_rate=optimizer.lr, episode_returns=cycle.meta.episode_returns,
                rollout_ticks=cycle.meta.rollout_ticks, data_mode=data_mode, cycle_id=cycle.cycle_id,
            )
        epochs_run = 0
        for _ in range(cfg.update_epochs):
            stop = False
            order = self.rng.permutation(n)
            for start in range(0, n - batch + 1, batch):
                idx = order[start : start + batch]
                adv = data.advantages[idx]
                if cfg.norm_adv and batch > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                result = agent.loss_and_grad(
                    data.obs[idx], data.actions[idx], data.logprobs[idx], adv, data.returns[idx],
                    clip_range, ent_coef, cfg.vf_coef,
                )
                if max_grad_norm is not None and result.grad_norm > max_grad_norm:
                    agent.grad *= max_grad_norm / (result.grad_norm + 1e-6)
                optimizer.step(agent.params, agent.grad)
                if recorder is not None:
                    recorder.minibatch(
                        result.pg_loss, result.v_loss, result.entropy, result.approx_kl, result.grad_norm,
                        result.clipped / len(idx), len(idx),
                    )
                if cfg.target_kl is not None and result.approx_kl > 1.5 * cfg.target_kl:
                    stop = True
                    break
            self.epoch += 1
            epochs_run += 1
            if recorder is not None:
                recorder.end_epoch()
            if stop or self.stop_requested:
                break
        if recorder is not None:
            recorder.end_cycle()
        return epochs_run

    @property
    def telemetry_seconds(self) -> float:
        """Time spent recording epochs and handing them to the sink: telemetry's cost to training."""
        return 0.0 if self.recorder is None else self.recorder.seconds

    def publish_pending(self) -> None:
        """Publish (and flush) the records of the epochs finished since the last batch."""
        if self.recorder is not None:
            self.recorder.flush()

    @property
    def max_publish_delay(self) -> float:
        """Seconds between record batches (a record waits at most about this long to be published)."""
        return 1.0 if self.recorder is None else self.recorder.max_publish_delay

    @max_publish_delay.setter
    def max_publish_delay(self, seconds: float) -> None:
        if self.recorder is not None:
            self.recorder.max_publish_delay = seconds

    def _anneal(self, progress: float) -> None:
        """Linear decay of the learning rate (and clip range) with the share of the run done."""
        cfg = self.config
        frac = 1.0 - progress
        if cfg.anneal_lr:
            self._lr = cfg.learning_rate * frac
            self.optimizer.lr = self._lr
        if cfg.anneal_clip:
            self._clip = cfg.clip_range * frac

    def mixed_cycle(self, progress: float) -> int:
        """One capture-then-train cycle of the `mixed` mode, `progress` (0..1) of the run done; returns
        the epochs run. `run_ppo` loops over these; a benchmark can interleave two harnesses with it."""
        self._anneal(progress)
        return self.train_epochs(self.capture_rollout(), "mixed")

    def run_ppo(self) -> None:
        """Train for the configured data mode until done or `stop_requested`."""
        # The matrices are tiny (64 wide): BLAS threads only add hand-over cost, and on a busy
        # 2-core machine they made an update 30x slower.
        try:
            with threadpool_limits(limits=1, user_api="blas"):
                self._run()
        finally:
            self.publish_pending()

    def _run(self) -> None:
        cfg = self.config
        if cfg.data_mode == "mixed":
            per_cycle = cfg.num_envs * cfg.num_steps
            cycles = math.ceil(cfg.total_steps / per_cycle)
            for cycle_index in range(cycles):
                if self.stop_requested:
                    break
                self.mixed_cycle(cycle_index / cycles)
        elif cfg.data_mode == "rollout":
            cycle = self.capture_rollout(math.ceil(cfg.total_steps / cfg.num_envs))
            self.train_epochs(cycle, "rollout")
        else:
            from .replay import load_manifest

            recorded = load_manifest(cfg.replay_manifest)
            if recorded.env_id != cfg.env_id or recorded.obs_shape != self.obs_shape or recorded.n_actions != self.n_actions:
                raise HarnessError(
                    f"replay manifest was recorded on {recorded.env_id} {recorded.obs_shape}/{recorded.n_actions} "
                    f"actions, not {cfg.env_id} {self.obs_shape}/{self.n_actions}"
                )
            for index, rollout in enumerate(recorded.iter_rollouts()):
                if self.stop_requested:
                    break
                self._anneal(index / len(recorded))
                dataset, meta = rollout.build_dataset(cfg.gamma, cfg.gae_lambda)
                # replayed data consumed no environment ticks in this run: rollout_ticks and cycle_id are 0
                self.train_epochs(CycleData(dataset, DatasetMeta(0, meta.episode_returns, meta.episode_lengths), 0), "replay")

    def close(self) -> None:
        """Close the environments."""
        self.envs.close()
