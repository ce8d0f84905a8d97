"""stable-baselines3: `TelemetryCallback` publishes one v1.1 `EpochSummary` per PPO training epoch (SPEC §9).

    from stable_baselines3 import PPO
    from ppo_telemetry.integrations.sb3 import TelemetryCallback

    PPO("MlpPolicy", "CartPole-v1").learn(100_000, callback=TelemetryCallback(ndjson_dir="telemetry"))

SB3 has no hook inside `PPO.train()`, and this needs neither a fork nor a copy of it. While `learn` runs,
the callback wraps what `train()` calls, and unwraps it at the end:

- the rollout buffer's `get` (an instance attribute over the method): `train()` calls it once per epoch,
  so each call starts an epoch, and its generator ending (exhausted, or closed by `train()`'s `break`)
  ends it; it hands the callback each minibatch (`RolloutBufferSamples`) as `train()` gets it;
- the policy's `evaluate_actions` (likewise): the minibatch's new log-probabilities, entropies and
  values, kept (detached) until the update ends (the next rollout starts, or training ends). Then the
  callback computes from them, for all the update's epochs at once, as `train()` does and with the
  same values bit for bit, each minibatch's clipped surrogate loss (advantages
  normalised per minibatch when `normalize_advantage` and the minibatch has more than one sample),
  value loss (MSE against the returns, with `clip_range_vf` if set), k3 KL
  `mean((ratio - 1) - log ratio)`, share of samples with `|ratio - 1| > clip_range` and mean entropy
  (`-mean(log_prob)` when the distribution has none, as SB3's entropy loss does);
- `torch.nn.utils.clip_grad_norm_`, which `train()` calls as `th.nn.utils.clip_grad_norm_(
  self.policy.parameters(), max_grad_norm)` after each backward pass: while a TelemetryCallback
  trains, that module attribute is a wrapper that calls the function and hands the norm it returns
  (the global L2 norm of the gradients before clipping) to the callback whose policy's parameters it
  clipped: the value `train()` clipped with, at no cost. (A gradient hook could compute the same value
  between the backward pass and the clip, but that costs more than all the rest of the callback.)
  The attribute is restored when the last TelemetryCallback stops training. A `train()` that steps
  without clipping through `torch.nn.utils.clip_grad_norm_` gets a warning, and 0 for those norms.

No extra forward or backward pass, no conversion per minibatch: the statistics of an epoch's
minibatches are computed together and converted once. The wrappers change nothing SB3 computes: a
run with the callback learns the same parameters, bit for bit, as one without.

What a record means under SB3:

- one record per pass of `train()` over the rollout (`n_epochs` per rollout), `cycle_id` counting
  rollouts from 1, `global_step` the model's `num_timesteps` when the rollout ended, `rollout_ticks`
  and `num_samples` `n_steps * n_envs`, `data_mode` `mixed`, `learning_rate` the optimiser's rate in
  that update (SB3 sets it from `lr_schedule` as `train()` begins);
- early stopping by `target_kl`: `train()` evaluates a minibatch, finds its KL above
  `1.5 * target_kl` and leaves without stepping. That epoch's record counts every minibatch evaluated,
  the stopping one included, as SB3's own `train/approx_kl`, `train/clip_fraction` and losses do: its
  `kl_divergence_max` is the KL that stopped the update. The stopping minibatch had no backward pass,
  so its gradient norm counts as 0 (the policy did not move): `grad_norm_max` is the largest norm of
  the minibatches trained on, 0 when the stopping minibatch was the epoch's first. Later epochs of
  that update do not run and have no record;
- `mean_episode_return`: the mean return of the episodes that finished while the rollout was
  collected, as SB3's `Monitor` reports them (`info["episode"]["r"]`). SB3 adds a `Monitor` to the
  environments it wraps itself (an environment id, or a gymnasium env); a `VecEnv` passed in needs
  `VecMonitor` (or `Monitor`-wrapped environments), or no episode is seen and the field is null;
- `rewards` for `reward_advantage_corr` are the rollout buffer's, which at a time-limit truncation
  include SB3's bootstrapped value (`reward += gamma * V(terminal observation)`).

An update whose learning rate is not above 0 (a schedule reaching 0 at the end of training) cannot be
recorded (SPEC §1: `learning_rate` > 0): its epochs are left out, with a warning.

One callback is one run: its `run_id`, epochs and cycles go on across `learn` calls that reuse it
(`reset_num_timesteps=False`). `on_training_end` writes every record and closes the sinks; a `learn`
that ends by an exception skips it, so use the callback as a context manager, or call `close()`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from torch.nn import functional as F

from avro_schemas.errors import TelemetryError
from avro_schemas.fields import RUN_ID_PATTERN, is_valid_run_id
from ppo_telemetry.recorder import EpochRecorder

__all__ = ["TelemetryCallback", "TelemetryCallbackError", "default_run_id"]

_NOT_IN_RUN_ID = re.compile(r"[^A-Za-z0-9.:-]+")
_POLL_EVERY = 64  # environment steps between polls of the recorder while a rollout is collected
_ABSENT = object()  # an attribute the owner did not hold itself (its class's method): removed on restore


class TelemetryCallbackError(TelemetryError):
    """A TelemetryCallback given what it cannot use: no sink, a bad run_id, a model other than PPO."""


@dataclass(slots=True)
class _Rollout:
    """The dataset feeding one update's epochs, as `on_rollout_end` saw it (copied from the buffer, which
    `get` reshapes and the next rollout refills)."""

    cycle_id: int
    global_step: int
    rewards: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray
    values: np.ndarray
    episode_returns: list[float]


class TelemetryCallback(BaseCallback):
    """Publishes one v1.1 `EpochSummary` per PPO training epoch to NDJSON, Kafka or both (see the module).

    `ndjson_dir`, `kafka`, `kafka_config`, `namespace`: the sinks, as `ppo_telemetry.recorder.EpochRecorder`
    takes them (at least one of `ndjson_dir` and `kafka`/`kafka_config`). `run_id`: default
    `sb3-<env id>-<seed or noseed>-<UTC start time>` (`default_run_id`), fixed when training starts.
    The sinks open when training starts, beside the first rollout (a listener that does not fit the
    security settings fails `learn` before the first step; a directory that cannot hold a stream, at
    the first poll after the publisher has answered, within the first rollout); every error is a
    one-line `TelemetryError`, and the model is unwrapped when `learn` fails.
    """

    def __init__(
        self,
        ndjson_dir: str | os.PathLike[str] | None = None,
        kafka: str | None = None,
        run_id: str | None = None,
        kafka_config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        namespace: str | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if ndjson_dir is None and kafka is None and kafka_config is None:
            raise TelemetryCallbackError("a TelemetryCallback needs somewhere to publish: ndjson_dir, kafka or both")
        if run_id is not None and not is_valid_run_id(run_id):
            raise TelemetryCallbackError(f"run_id must be {RUN_ID_PATTERN.description}, got {run_id!r}")
        self.run_id = run_id
        """The records' run_id (set when training starts if not given)."""
        self._sinks: dict[str, Any] = {
            "ndjson_dir": ndjson_dir, "kafka": kafka, "kafka_config": kafka_config, "namespace": namespace,
        }
        self.recorder: EpochRecorder | None = None
        """The recorder of the `learn` call under way (None outside training)."""
        self.records = 0
        """Records published by this callback so far (over all its `learn` calls)."""
        self._epochs = 0  # epochs recorded in earlier learn calls: the run's epoch count goes on
        self._cycles = 0  # rollouts seen, recorded or not: cycle_id
        self._episode_returns: list[float] = []
        self._rollout: _Rollout | None = None  # the dataset of the update to come
        self._recording = False  # the current update's cycle is begun in the recorder
        self._clip_range = 0.0
        self._clip_range_vf: float | None = None
        self._samples: RolloutBufferSamples | None = None  # the minibatch `get` handed out, not yet evaluated
        self._minibatches: list[_Minibatch] = []  # evaluated this epoch
        self._epochs_run: list[_Epoch] = []  # this update's finished epochs, reported when the update ends
        self._epoch_started = 0.0
        self._first_parameter: torch.Tensor | None = None  # of policy.parameters(): whose clip_grad_norm_ calls are ours
        self._warned_no_norm = False
        self._restore: list[tuple[object, str, Any]] = []  # (owner, attribute, its own value or _ABSENT)
        self._original_get: Any = None
        self._original_evaluate_actions: Any = None

    # --------------------------------------------------------------------------------- SB3's calls

    def _init_callback(self) -> None:
        if not isinstance(self.model, PPO):
            raise TelemetryCallbackError(
                f"TelemetryCallback works with PPO only (stable_baselines3.PPO or a subclass), got {type(self.model).__name__}"
            )

    def _on_training_start(self) -> None:
        self.close()  # what a learn() ended by an exception left open
        self._check_not_wrapped()
        if self.run_id is None:
            self.run_id = default_run_id(self.model)
        # the publisher starts beside the first rollout; a sink it cannot open stops learn at a poll
        self.recorder = EpochRecorder(self.run_id, data_mode="mixed", wait_for_start=False, **self._sinks)
        self.recorder.epoch = self._epochs
        self._wrap_model()

    def _on_rollout_start(self) -> None:
        with self._closed_on_failure():
            self._end_update()
        self._episode_returns = []

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            episode = info.get("episode")
            if episode is not None:
                self._episode_returns.append(float(episode["r"]))
        if self.n_calls % _POLL_EVERY == 0:  # hand the last update's records over while collecting
            with self._closed_on_failure():
                self.recorder.poll()
        return True

    @contextlib.contextmanager
    def _closed_on_failure(self) -> Iterator[None]:
        """A sink's failure ends `learn`, and SB3 then skips `on_training_end`: close (unwrap) here."""
        try:
            yield
        except TelemetryError:
            with contextlib.suppress(TelemetryError):
                self.close()
            raise

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        self._cycles += 1
        self._rollout = _Rollout(
            self._cycles, self.model.num_timesteps,
            buffer.rewards.copy(), buffer.advantages.copy(), buffer.returns.copy(), buffer.values.copy(),
            self._episode_returns,
        )
        self._recording = False
        self._episode_returns = []

    def _on_training_end(self) -> None:
        self.close()

    # ------------------------------------------------------------------------------------- closing

    def close(self) -> None:
        """End the open epoch, unwrap the model, write every record and close the sinks. Idempotent;
        `on_training_end` calls it."""
        try:
            self._end_update()
        finally:
            self._unwrap_model()
            recorder, self.recorder = self.recorder, None
            if recorder is not None:
                self._epochs = recorder.epoch
                try:
                    recorder.close()
                finally:
                    self.records += recorder.records

    def __enter__(self) -> TelemetryCallback:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ wrappers

    def _check_not_wrapped(self) -> None:
        for owner, name in ((self.model.policy, "evaluate_actions"), (self.model.rollout_buffer, "get")):
            if isinstance(getattr(vars(owner).get(name), "__self__", None), TelemetryCallback):
                raise TelemetryCallbackError(
                    "the model is wrapped by another TelemetryCallback (whose learn() ended by an exception?): "
                    "close() that one first; one TelemetryCallback publishes to NDJSON and Kafka both"
                )

    def _wrap_model(self) -> None:
        policy: BasePolicy = self.model.policy
        buffer: RolloutBuffer = self.model.rollout_buffer
        self._original_evaluate_actions = policy.evaluate_actions
        self._original_get = buffer.get
        self._first_parameter = next(iter(policy.parameters()), None)
        for owner, name, hook in ((policy, "evaluate_actions", self._evaluate_actions), (buffer, "get", self._epoch_minibatches)):
            self._restore.append((owner, name, vars(owner).get(name, _ABSENT)))
            setattr(owner, name, hook)
        _CLIP_GRAD_NORM.add(self)

    def _unwrap_model(self) -> None:
        _CLIP_GRAD_NORM.remove(self)
        while self._restore:
            owner, name, own_value = self._restore.pop()
            if own_value is _ABSENT:
                vars(owner).pop(name, None)
            else:
                setattr(owner, name, own_value)

    def _epoch_minibatches(self, batch_size: int | None = None) -> Iterator[RolloutBufferSamples]:
        """The rollout buffer's `get` while training: one call per epoch of `train()`."""
        self._end_epoch()
        self._begin_epoch()
        exhausted = False
        try:
            for samples in self._original_get(batch_size):
                if self._recording:
                    self._samples = samples
                yield samples
            exhausted = True
        finally:  # exhausted, or closed by train()'s break at a target-KL stop
            self._samples = None
            self._end_epoch(stopped=not exhausted)

    def _evaluate_actions(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The policy's `evaluate_actions`; the first call after `get` hands out a minibatch is its evaluation."""
        evaluated = self._original_evaluate_actions(*args, **kwargs)
        samples = self._samples
        if samples is not None:
            self._samples = None
            values, log_prob, entropy = evaluated
            self._minibatches.append(_Minibatch(
                log_prob.shape[0], samples.advantages, samples.returns, samples.old_values, samples.old_log_prob,
                values.detach(), log_prob.detach(), None if entropy is None else entropy.detach(),
            ))
        return evaluated

    def _clipped(self, parameters: list[torch.Tensor], total_norm: torch.Tensor) -> None:
        """`clip_grad_norm_` found `total_norm`, the L2 norm of `parameters`' gradients, and clipped them:
        when they are the policy's, that is the unclipped norm of the minibatch evaluated last."""
        minibatches = self._minibatches
        if minibatches and parameters and parameters[0] is self._first_parameter:
            minibatches[-1].grad_norm = total_norm

    # -------------------------------------------------------------------------------------- epochs

    def _begin_epoch(self) -> None:
        """A pass of `train()` over the rollout starts; the update's first also begins its cycle."""
        rollout = self._rollout
        if rollout is not None:  # the update's first epoch: the rate and clip ranges train() set
            self._rollout = None
            model = self.model
            progress = model._current_progress_remaining
            self._clip_range = float(model.clip_range(progress))
            self._clip_range_vf = None if model.clip_range_vf is None else float(model.clip_range_vf(progress))
            self._recording = self._begin_cycle(rollout, model.policy.optimizer.param_groups[0]["lr"])
        self._epoch_started = time.monotonic()

    def _begin_cycle(self, rollout: _Rollout, learning_rate: float) -> bool:
        """Begin the update's cycle in the recorder; False (and a warning) when its rate cannot be recorded."""
        if not (learning_rate > 0.0 and math.isfinite(learning_rate)):
            warnings.warn(
                f"TelemetryCallback: the update at step {rollout.global_step} trains at learning rate "
                f"{learning_rate!r}; a record needs a rate > 0, so its epochs are not recorded",
                stacklevel=1,
            )
            return False
        self.recorder.begin_cycle(
            rollout.rewards, rollout.advantages, rollout.returns, rollout.values,
            global_step=rollout.global_step, learning_rate=learning_rate, episode_returns=rollout.episode_returns,
            cycle_id=rollout.cycle_id,
        )
        return True

    def _end_epoch(self, stopped: bool = True) -> None:
        """Keep the epoch's minibatches and times (nothing if none were evaluated) for `_end_update`.
        `stopped`: `train()` may have left the epoch after evaluating its last minibatch, untrained."""
        minibatches = self._minibatches
        if not minibatches:
            return
        self._minibatches = []
        if self._recording and self.recorder is not None:
            self._epochs_run.append(_Epoch(
                minibatches, time.monotonic() - self._epoch_started, time.time_ns() // 1_000_000, stopped,
            ))

    def _end_update(self) -> None:
        """The update is over (the next rollout starts, or training ends): its epochs' records.

        The statistics of all its minibatches are computed together, once per update rather than once
        per epoch: fewer, larger tensor operations (the values are the same, bit for bit)."""
        self._end_epoch()
        epochs, self._epochs_run = self._epochs_run, []
        if not epochs or self.recorder is None:
            return
        for epoch in epochs:
            self._check_norms(epoch.minibatches, epoch.stopped)
        minibatches = [minibatch for epoch in epochs for minibatch in epoch.minibatches]
        statistics = iter(_minibatch_statistics(minibatches, self._clip_range, self._clip_range_vf, self.model.normalize_advantage))
        trained = [minibatch.grad_norm for minibatch in minibatches if minibatch.grad_norm is not None]
        norms = iter(torch.stack(trained).tolist() if trained else ())
        recorder = self.recorder
        for epoch in epochs:
            for minibatch in epoch.minibatches:
                policy_loss, value_loss, entropy, kl, clip_share = next(statistics)
                grad_norm = 0.0 if minibatch.grad_norm is None else next(norms)
                recorder.minibatch(policy_loss, value_loss, entropy, kl, grad_norm, clip_share, minibatch.size)
            recorder.end_epoch(duration_sec=epoch.duration_sec, timestamp_ms=epoch.timestamp_ms)
        recorder.end_cycle()

    def _check_norms(self, minibatches: list[_Minibatch], stopped: bool) -> None:
        """Warn once if a minibatch was trained on without `torch.nn.utils.clip_grad_norm_` clipping the
        policy's gradients (a `train()` other than SB3's): its gradient norm is recorded as 0."""
        trained = minibatches[:-1] if stopped else minibatches
        if not self._warned_no_norm and any(minibatch.grad_norm is None for minibatch in trained):
            self._warned_no_norm = True
            warnings.warn(
                "TelemetryCallback: train() stepped without torch.nn.utils.clip_grad_norm_ clipping the policy's "
                "gradients, so grad_norm_max is recorded as 0 for those minibatches",
                stacklevel=1,
            )


@dataclass(slots=True)
class _Minibatch:
    """A minibatch `train()` evaluated: what its statistics need, kept (detached) until its epoch ends."""

    size: int
    advantages: torch.Tensor
    returns: torch.Tensor
    old_values: torch.Tensor
    old_log_prob: torch.Tensor
    values: torch.Tensor
    """The new value estimates, as `evaluate_actions` gives them (`train()` flattens them)."""
    log_prob: torch.Tensor
    entropy: torch.Tensor | None
    grad_norm: torch.Tensor | None = None
    """What `clip_grad_norm_` returned for it; None: not trained on (a target-KL stop)."""


@dataclass(slots=True)
class _Epoch:
    """A finished epoch of the current update, its record not yet made."""

    minibatches: list[_Minibatch]
    duration_sec: float
    """From the epoch's `get` to its end (monotonic clock)."""
    timestamp_ms: int
    """Wall clock at its end."""
    stopped: bool
    """`train()` may have left it after evaluating its last minibatch, untrained (a target-KL stop)."""


def _minibatch_statistics(
    minibatches: list[_Minibatch], clip_range: float, clip_range_vf: float | None, normalize_advantage: bool
) -> list[list[float]]:
    """Per minibatch: (policy loss, value loss, entropy mean, k3 KL, clip share), each as `PPO.train()`
    computes it. Minibatches of one size are computed together, one row each: elementwise operations
    give each element what they give it in the row alone (IEEE arithmetic; PyTorch's `exp` computes
    every element alike wherever it sits), and reductions along a row what they give on the row
    alone, so each value equals train()'s bit for bit (the tests hold it to that, uneven sizes too)."""
    statistics: list[list[float]] = [[] for _ in minibatches]
    by_size: dict[int, list[int]] = {}
    for index, minibatch in enumerate(minibatches):
        by_size.setdefault(minibatch.size, []).append(index)
    for size, indices in by_size.items():
        group = [minibatches[index] for index in indices]
        rows = _same_size_statistics(group, size > 1 and normalize_advantage, clip_range, clip_range_vf)
        for index, row in zip(indices, rows.tolist()):
            statistics[index] = row
    return statistics


def _same_size_statistics(
    group: list[_Minibatch], normalize_advantage: bool, clip_range: float, clip_range_vf: float | None
) -> torch.Tensor:
    """`_minibatch_statistics` of minibatches of one size, as a (minibatches, 5) tensor."""
    advantages = torch.stack([minibatch.advantages for minibatch in group])
    if normalize_advantage:
        advantages = (advantages - advantages.mean(dim=1, keepdim=True)) / (advantages.std(dim=1, keepdim=True) + 1e-8)
    log_prob = torch.stack([minibatch.log_prob for minibatch in group])
    log_ratio = log_prob - torch.stack([minibatch.old_log_prob for minibatch in group])
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    policy_loss = -torch.min(advantages * ratio, advantages * clipped_ratio).mean(dim=1)
    ratio_change = ratio - 1
    clip_share = (torch.abs(ratio_change) > clip_range).float().mean(dim=1)
    kl = (ratio_change - log_ratio).mean(dim=1)
    values = torch.stack([minibatch.values for minibatch in group]).view(len(group), -1)
    if clip_range_vf is not None:
        old_values = torch.stack([minibatch.old_values for minibatch in group])
        values = old_values + torch.clamp(values - old_values, -clip_range_vf, clip_range_vf)
    returns = torch.stack([minibatch.returns for minibatch in group])
    value_loss = F.mse_loss(returns, values, reduction="none").mean(dim=1)
    if group[0].entropy is None:  # no analytic entropy: SB3's entropy loss takes -mean(log_prob)
        entropy = (-log_prob).mean(dim=1)
    else:
        entropy = torch.stack([minibatch.entropy for minibatch in group]).mean(dim=1)
    return torch.stack((policy_loss, value_loss, entropy, kl, clip_share), dim=1)


class _ClipGradNormWatch:
    """`torch.nn.utils.clip_grad_norm_`, wrapped while TelemetryCallbacks train: each call's result goes
    to every callback training now, and each keeps those of its own policy's parameters."""

    def __init__(self) -> None:
        self.callbacks: list[TelemetryCallback] = []
        self._replaced: Callable[..., torch.Tensor] | None = None
        self._wrapper: Callable[..., torch.Tensor] | None = None

    def add(self, callback: TelemetryCallback) -> None:
        """Tell `callback` of every call from now on (the first callback wraps the function)."""
        if self._wrapper is None:
            self._wrap()
        if callback not in self.callbacks:
            self.callbacks.append(callback)

    def remove(self, callback: TelemetryCallback) -> None:
        """Stop telling `callback`; after the last, the function is put back, unless it was wrapped again
        since (the wrapper left in that chain only passes calls on)."""
        if callback in self.callbacks:
            self.callbacks.remove(callback)
        if not self.callbacks and self._wrapper is not None:
            if torch.nn.utils.clip_grad_norm_ is self._wrapper:
                torch.nn.utils.clip_grad_norm_ = self._replaced
            self._replaced = self._wrapper = None

    def _wrap(self) -> None:
        clip_grad_norm = torch.nn.utils.clip_grad_norm_
        callbacks = self.callbacks

        @functools.wraps(clip_grad_norm)
        def watched_clip_grad_norm(
            parameters: Any, max_norm: float, norm_type: float = 2.0, *args: Any, **kwargs: Any
        ) -> torch.Tensor:
            if not isinstance(parameters, torch.Tensor):
                parameters = list(parameters)  # what clip_grad_norm_ does first; here the callbacks see them too
            total_norm = clip_grad_norm(parameters, max_norm, norm_type, *args, **kwargs)
            if float(norm_type) == 2.0 and isinstance(parameters, list):
                for callback in callbacks:
                    callback._clipped(parameters, total_norm)
            return total_norm

        self._replaced, self._wrapper = clip_grad_norm, watched_clip_grad_norm
        torch.nn.utils.clip_grad_norm_ = watched_clip_grad_norm


_CLIP_GRAD_NORM = _ClipGradNormWatch()


def default_run_id(model: PPO) -> str:
    """`sb3-<env id>-<seed or noseed>-<UTC time>`, e.g. `sb3-CartPole-v1-7-20250101T120000.123456Z`
    (the env id's characters outside `[A-Za-z0-9.:-]` become `.`)."""
    env = model.get_env()
    spec = None if env is None else env.get_attr("spec", [0])[0]
    env_id = _NOT_IN_RUN_ID.sub(".", spec.id)[:64] if spec is not None else "env"
    seed = "noseed" if model.seed is None else str(model.seed)
    started = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"sb3-{env_id}-{seed}-{started}"
