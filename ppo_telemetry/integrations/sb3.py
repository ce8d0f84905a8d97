"""stable-baselines3: `TelemetryCallback` publishes one v1.1 `EpochSummary` per PPO training epoch (SPEC §9).

    from stable_baselines3 import PPO
    from ppo_telemetry.integrations.sb3 import TelemetryCallback

    PPO("MlpPolicy", "CartPole-v1").learn(100_000, callback=TelemetryCallback(ndjson_dir="telemetry"))

SB3 has no hook inside `PPO.train()`, and this needs neither a fork nor a copy of it. While `learn` runs,
the callback wraps what `train()` calls, and unwraps it at the end:

- the rollout buffer's `get` (an instance attribute over the method): `train()` calls it once per epoch,
  so each call starts an epoch, and its generator ending (exhausted, or closed by `train()`'s `break`)
  ends it; and the buffer's `_get_samples`, which `get` calls for each minibatch: the minibatch's rows
  in the flattened buffer, from which its advantages, returns, old values and old log-probabilities
  are read back when the update ends;
- the policy's `evaluate_actions` (likewise): the minibatch's new log-probabilities, entropies and
  values, stacked when the epoch ends. When the update ends (the next rollout starts, or training
  ends), the callback computes from them, for all the update's minibatches at once and as `train()`
  does, with the same values bit for bit, each minibatch's clipped surrogate loss (advantages
  normalised per minibatch when `normalize_advantage` and the minibatch has more than one sample),
  value loss (MSE against the returns, with `clip_range_vf` if set), k3 KL
  `mean((ratio - 1) - log ratio)`, share of samples with `|ratio - 1| > clip_range` and mean entropy
  (`-mean(log_prob)` when the distribution has none, as SB3's entropy loss does), and the records go
  to the recorder with each epoch's own duration and end time;
- `torch.nn.utils.clip_grad_norm_`, which `train()` calls as `th.nn.utils.clip_grad_norm_(
  self.policy.parameters(), max_grad_norm)` after each backward pass: while a TelemetryCallback
  trains, that module attribute is a wrapper that calls the function and hands the norm it returns
  (the global L2 norm of the gradients before clipping) to the callback whose policy's parameters it
  clipped: the value `train()` clipped with, at no cost. (A gradient hook could compute the same value
  between the backward pass and the clip, but that costs more than all the rest of the callback.)
  The attribute is restored when the last TelemetryCallback stops training. A `train()` that steps
  without clipping through `torch.nn.utils.clip_grad_norm_` gets a warning, and 0 for those norms.

No extra forward or backward pass, no conversion per minibatch: the statistics of an update's
minibatches are computed together and converted once (`bench/sb3_overhead.py` measures the cost).
The wrappers change nothing SB3 computes: a run with the callback learns the same parameters, bit for
bit, as one without.

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

    `ndjson_dir`, `kafka`, `kafka_config`, `namespace`, `wire_format`, `schema_registry`: the sinks, as
    `ppo_telemetry.recorder.EpochRecorder` takes them (at least one of `ndjson_dir` and `kafka`/`kafka_config`). `run_id`: default
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
        wire_format: str = "single-object",
        schema_registry: str | None = None,
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
            "wire_format": wire_format, "schema_registry": schema_registry,
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
        self._batch_indices: np.ndarray | None = None  # the minibatch `get` handed out, not yet evaluated
        self._buffer_arrays: _BufferArrays | None = None  # the flattened rollout buffer this update trains on
        self._minibatches: list[_Minibatch] = []  # evaluated this epoch
        self._epochs_run: list[_Epoch] = []  # this update's finished epochs, recorded when the update ends
        self._epoch_started = 0.0
        self._first_parameter: torch.Tensor | None = None  # of policy.parameters(): whose clip_grad_norm_ calls are ours
        self._warned_no_norm = False
        self._restore: list[tuple[object, str, Any]] = []  # (owner, attribute, its own value or _ABSENT)
        self._original_get: Any = None
        self._original_get_samples: Any = None
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
        for info in self.locals["infos"]:
            if "episode" in info:
                self._episode_returns.append(float(info["episode"]["r"]))
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
        self._original_get_samples = buffer._get_samples
        self._first_parameter = next(iter(policy.parameters()), None)
        hooks = (
            (policy, "evaluate_actions", self._evaluate_actions), (buffer, "get", self._epoch_minibatches),
            (buffer, "_get_samples", self._minibatch_at),
        )
        for owner, name, hook in hooks:
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
            yield from self._original_get(batch_size)
            exhausted = True
        finally:  # exhausted, or closed by train()'s break at a target-KL stop
            self._batch_indices = None
            self._end_epoch(stopped=not exhausted)

    def _minibatch_at(self, batch_indices: np.ndarray, *args: Any, **kwargs: Any) -> RolloutBufferSamples:
        """The rollout buffer's `_get_samples`, which its `get` calls for each minibatch: which samples
        it takes (the minibatch's advantages, returns, old values and log-probabilities are read from the
        buffer by these indices when the update ends, rather than kept as tensors)."""
        if self._recording:
            if self._buffer_arrays is None:  # flattened by `get` before its first minibatch
                self._buffer_arrays = _BufferArrays.of(self.model.rollout_buffer)
            self._batch_indices = batch_indices
        return self._original_get_samples(batch_indices, *args, **kwargs)

    def _evaluate_actions(self, observations: Any, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The policy's `evaluate_actions`; the first call after `get` hands out a minibatch is its evaluation."""
        evaluated = self._original_evaluate_actions(observations, actions)
        batch_indices = self._batch_indices
        if batch_indices is not None:
            self._batch_indices = None
            values, log_prob, entropy = evaluated
            self._minibatches.append(_Minibatch(
                len(batch_indices), batch_indices, values.detach(), log_prob.detach(),
                None if entropy is None else entropy.detach(),
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
        """Keep the epoch's minibatches, stacked, for `_end_update` (nothing if none were evaluated).
        `stopped`: `train()` may have left the epoch after evaluating its last minibatch, untrained.

        Two costs decide where the work goes: torch calls on small tensors cost about the same whatever
        their size, so the statistics are computed once per update on all its epochs; and objects kept
        alive for a whole update reach the garbage collector's oldest generation and make its full
        collections more frequent and slower, so each epoch's minibatches are stacked into a few
        tensors as it ends (measured: keeping every minibatch's tensors for an update cost more in
        collections than the torch calls it saved)."""
        minibatches = self._minibatches
        if not minibatches:
            return
        self._minibatches = []
        if self._recording and self.recorder is not None:
            self._check_norms(minibatches, stopped)
            with torch.no_grad():
                self._epochs_run.append(_Epoch.stack(
                    minibatches, time.monotonic() - self._epoch_started, time.time_ns() // 1_000_000,
                ))

    def _end_update(self) -> None:
        """The update is over (the next rollout starts, or training ends): its epochs' records, with each
        epoch's own duration and end time, and the update's cycle ended in the recorder."""
        self._end_epoch()
        epochs, self._epochs_run = self._epochs_run, []
        if not epochs or self.recorder is None:
            self._buffer_arrays = None
            return
        arrays, self._buffer_arrays = self._buffer_arrays, None
        normalize = self.model.normalize_advantage
        with torch.no_grad():
            rows = _update_statistics(epochs, arrays, normalize, self._clip_range, self._clip_range_vf)
            norms = [epoch.grad_norms for epoch in epochs if epoch.grad_norms is not None]
            trained_norms = iter(torch.cat(norms).tolist() if norms else ())
        recorder = self.recorder
        for epoch, epoch_rows in zip(epochs, rows):
            for (policy_loss, value_loss, entropy, kl, clip_share), size, trained in zip(epoch_rows, epoch.sizes, epoch.trained):
                grad_norm = next(trained_norms) if trained else 0.0
                recorder.minibatch(policy_loss, value_loss, entropy, kl, grad_norm, clip_share, size)
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
    """A minibatch `train()` evaluated: which samples it took and what `evaluate_actions` gave for them
    (detached: kept with its autograd graph until the epoch ends, an output slowed the training around
    it), kept until its epoch ends."""

    size: int
    batch_indices: np.ndarray
    """Its samples' rows in the flattened rollout buffer."""
    values: torch.Tensor
    """The new value estimates, as `evaluate_actions` gives them (`train()` flattens them)."""
    log_prob: torch.Tensor
    entropy: torch.Tensor | None
    grad_norm: torch.Tensor | None = None
    """What `clip_grad_norm_` returned for it; None: not trained on (a target-KL stop)."""


@dataclass(frozen=True, slots=True)
class _BufferArrays:
    """The flattened rollout buffer's arrays an update's minibatches are read from (float32, one row a sample)."""

    advantages: np.ndarray
    returns: np.ndarray
    old_values: np.ndarray
    old_log_prob: np.ndarray

    @classmethod
    def of(cls, buffer: RolloutBuffer) -> _BufferArrays:
        return cls(buffer.advantages, buffer.returns, buffer.values, buffer.log_probs)

    def rows(self, name: str, indices: np.ndarray, size: int) -> torch.Tensor:
        """Field `name` of the samples at `indices`, one row per minibatch of `size` (as `_get_samples`
        gives each minibatch: the same float32 values)."""
        return torch.from_numpy(getattr(self, name)[indices].reshape(-1, size))


@dataclass(slots=True)
class _Stacked:
    """An epoch's minibatches of one size, one row each."""

    batch_indices: np.ndarray
    values: torch.Tensor
    log_prob: torch.Tensor
    entropy: torch.Tensor | None


@dataclass(slots=True)
class _Epoch:
    """A finished epoch of the current update: its minibatches stacked by size, its times."""

    sizes: list[int]
    """Each minibatch's size, in the order `train()` ran them."""
    trained: list[bool]
    """Whether each minibatch was trained on (has a gradient norm); not the one a target-KL stop left."""
    groups: dict[int, _Stacked]
    grad_norms: torch.Tensor | None
    """The norms `clip_grad_norm_` returned for the trained minibatches, in order."""
    duration_sec: float
    timestamp_ms: int

    @classmethod
    def stack(cls, minibatches: list[_Minibatch], duration_sec: float, timestamp_ms: int) -> _Epoch:
        """Stack the epoch's minibatches (call under `torch.no_grad()`)."""
        by_size: dict[int, list[_Minibatch]] = {}
        for minibatch in minibatches:
            by_size.setdefault(minibatch.size, []).append(minibatch)
        groups = {
            size: _Stacked(
                np.concatenate([minibatch.batch_indices for minibatch in group]),
                torch.stack([minibatch.values for minibatch in group]).view(len(group), -1),
                torch.stack([minibatch.log_prob for minibatch in group]),
                None if group[0].entropy is None else torch.stack([minibatch.entropy for minibatch in group]),
            )
            for size, group in by_size.items()
        }
        norms = [minibatch.grad_norm for minibatch in minibatches if minibatch.grad_norm is not None]
        return cls(
            [minibatch.size for minibatch in minibatches], [minibatch.grad_norm is not None for minibatch in minibatches],
            groups, torch.stack(norms) if norms else None, duration_sec, timestamp_ms,
        )


def _update_statistics(
    epochs: list[_Epoch], arrays: _BufferArrays, normalize_advantage: bool, clip_range: float, clip_range_vf: float | None
) -> list[list[list[float]]]:
    """Per epoch, per minibatch in order: (policy loss, value loss, entropy mean, k3 KL, clip share), each
    as `PPO.train()` computes it. All minibatches of one size in the update are computed together, one
    row each: elementwise operations give each element what they give it in the row alone (IEEE
    arithmetic; PyTorch's `exp` computes every element alike wherever it sits), and reductions along a
    row what they give on the row alone, so each value equals train()'s bit for bit (the tests hold it
    to that, uneven sizes too). Call under `torch.no_grad()`."""
    rows_by_size: dict[int, Iterator[list[float]]] = {}
    for size in {size for epoch in epochs for size in epoch.groups}:
        parts = [epoch.groups[size] for epoch in epochs if size in epoch.groups]
        indices = np.concatenate([part.batch_indices for part in parts])
        fields = {name: arrays.rows(name, indices, size) for name in ("advantages", "returns", "old_log_prob")}
        if clip_range_vf is not None:
            fields["old_values"] = arrays.rows("old_values", indices, size)
        fields["values"] = torch.cat([part.values for part in parts])
        fields["log_prob"] = torch.cat([part.log_prob for part in parts])
        if parts[0].entropy is not None:
            fields["entropy"] = torch.cat([part.entropy for part in parts])
        rows = _statistics_rows(fields, size > 1 and normalize_advantage, clip_range, clip_range_vf)
        rows_by_size[size] = iter(rows.tolist())
    return [[next(rows_by_size[size]) for size in epoch.sizes] for epoch in epochs]


def _statistics_rows(
    fields: dict[str, torch.Tensor], normalize_advantage: bool, clip_range: float, clip_range_vf: float | None
) -> torch.Tensor:
    """The statistics of minibatches of one size, one per row of `fields`, as a (minibatches, 5) tensor."""
    advantages = fields["advantages"]
    if normalize_advantage:
        advantages = (advantages - advantages.mean(dim=1, keepdim=True)) / (advantages.std(dim=1, keepdim=True) + 1e-8)
    log_prob = fields["log_prob"]
    log_ratio = log_prob - fields["old_log_prob"]
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    policy_loss = -torch.min(advantages * ratio, advantages * clipped_ratio).mean(dim=1)
    ratio_change = ratio - 1
    clip_share = (torch.abs(ratio_change) > clip_range).float().mean(dim=1)
    kl = (ratio_change - log_ratio).mean(dim=1)
    values = fields["values"]
    if clip_range_vf is not None:
        old_values = fields["old_values"]
        values = old_values + torch.clamp(values - old_values, -clip_range_vf, clip_range_vf)
    value_loss = F.mse_loss(fields["returns"], values, reduction="none").mean(dim=1)
    if "entropy" in fields:
        entropy = fields["entropy"].mean(dim=1)
    else:  # no analytic entropy: SB3's entropy loss takes -mean(log_prob)
        entropy = (-log_prob).mean(dim=1)
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
            if norm_type == 2.0 and isinstance(parameters, list):
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
