"""`EpochRecorder`: the one implementation of SPEC §1 that every trainer reports to.

A PPO trainer, whatever its framework, tells the recorder three things, in this order:

    recorder.begin_cycle(rewards, advantages, returns, values, global_step=..., learning_rate=...)
    for each epoch:                                  # one EpochSummary each
        for each minibatch:
            recorder.minibatch(policy_loss, value_loss, entropy, kl, grad_norm, clip_fraction, samples)
        recorder.end_epoch()
    recorder.end_cycle()                             # optional: the next begin_cycle or close does it

`begin_cycle` takes the dataset feeding the epochs (numbers or numpy arrays of any shape, flattened; a
torch tensor is the caller's `.detach().cpu().numpy()`) and copies what the record needs from it, so the
trainer may refill its buffers at once. `minibatch` takes numbers a PPO update computes anyway; a
one-element tensor is accepted too (`float()` of it). `end_epoch` closes the epoch's record.

What is kept is the numbers as reported: per cycle a copy of the four arrays, per epoch a tuple, per
minibatch a tuple. About once a second (`max_publish_delay`) the epochs finished since the last
hand-over are packed, in one burst, into bytes (`producer.records.data_block`) and go to `publish_rows`
(the publisher process of `producer.publisher`, which computes the statistics and builds, numbers and
writes the records off the training process) or, for an in-process sink, `publish` gets each record as
a dict. Why so: between two epochs' numpy work (half a millisecond on CartPole), each line of Python
the recorder runs costs several times what it costs in a tight loop, so the per-epoch path does as
little as it can and the rest waits for the burst. `poll()` lets a trainer that spends long between
epochs (collecting a rollout) hand finished epochs over on time.

A call out of order, or a value no record can hold (an empty dataset, arrays of different lengths, no
minibatch in an epoch), raises `RecorderError`, one line. Values are not judged: a NaN loss reaches the
sinks as it is (the NDJSON sink refuses it, a validator rejects it), so a diverging run is not hidden.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avro_schemas.errors import TelemetryError
from avro_schemas.fields import RUN_ID_PATTERN, is_valid_run_id

from .records import DATA_MODE_NAMES, RowBatch, build_record, data_block, dataset_arrays
from .stats import mean_or_none

__all__ = ["EpochRecorder", "RecorderError", "TELEMETRY_VERSIONS", "check_recording"]

TELEMETRY_VERSIONS = ("1.1", "1.0")


class RecorderError(TelemetryError):
    """A recorder called out of order, or with values no record can hold."""


@dataclass(slots=True)
class _Cycle:
    """The dataset feeding the current cycle's epochs, as the records need it."""

    arrays: np.ndarray
    """The four dataset arrays as a block carries them (`records.dataset_arrays`)."""
    samples: int
    episode_returns: list[float]
    """Returns of the episodes that finished in the data (their mean is taken when the cycle is packed)."""
    data_mode: int
    cycle_id: int
    rollout_ticks: int
    global_step: int
    learning_rate: float
    finished: list[tuple] = field(default_factory=list)
    """This cycle's finished epochs not yet packed, as reported: (epoch, global_step, timestamp_ms,
    learning_rate, num_minibatches, duration, monotonic end); None where the cycle's value or the
    measured time is meant."""
    minibatches: list[tuple] = field(default_factory=list)
    """The minibatches of those epochs, then of the open epoch: `EpochStats.add`'s seven numbers each."""
    open_from: int = 0
    """Where the open epoch's minibatches begin in `minibatches`."""


class EpochRecorder:
    """Builds one v1.1 (or v1.0) `EpochSummary` per epoch from what the trainer reports, and publishes it.

    Sinks, one of: `publish_rows(RowBatch)` (a `PublisherProcess.publish_rows`: records built off the
    training process) or `publish(record_dict)` (an in-process sink; records get their
    `log_stream_offset` there). `flush()` (optional) is called after each batch is handed over.
    """

    def __init__(
        self,
        run_id: str,
        *,
        publish_rows: Callable[[RowBatch], None] | None = None,
        publish: Callable[[dict[str, Any]], None] | None = None,
        flush: Callable[[], None] | None = None,
        telemetry_version: str = "1.1",
        data_mode: str = "mixed",
        max_publish_delay: float = 1.0,
    ) -> None:
        if (publish_rows is None) == (publish is None):
            raise RecorderError("an EpochRecorder publishes through publish_rows or publish: give exactly one")
        check_recording(run_id, telemetry_version, data_mode)
        self.data_mode = _data_mode_index(data_mode)
        self.run_id = run_id
        self.telemetry_version = telemetry_version
        self.max_publish_delay = max_publish_delay
        """Seconds a finished epoch's record may wait before it is handed to the sink."""
        self._publish_rows = publish_rows
        self._publish = publish
        self._flush = flush
        self.epoch = 0
        """Epochs recorded so far in the run (the next record's `epoch`)."""
        self.cycle_id = 0
        """The last cycle begun (counted by `begin_cycle` unless it is given)."""
        self.records = 0
        """Records handed to the sink so far."""
        self.seconds = 0.0
        """Time spent in `begin_cycle` and in packing and handing epochs over: telemetry's cost to the
        trainer, less the per-minibatch and per-epoch calls (a tuple appended each; timing them would
        cost about what they do)."""
        self._cycle: _Cycle | None = None
        self._ended: list[_Cycle] = []  # ended cycles whose epochs are not yet handed over
        self._epoch_started = 0.0
        self._pending_since = time.monotonic()  # when the last hand-over was
        self._closed = False

    # ---------------------------------------------------------------------------------------- cycles

    def begin_cycle(
        self,
        rewards: Any,
        advantages: Any,
        returns: Any,
        values: Any,
        *,
        global_step: int,
        learning_rate: float,
        episode_returns: Iterable[float] | None = None,
        rollout_ticks: int | None = None,
        data_mode: str | None = None,
        cycle_id: int | None = None,
    ) -> None:
        """A new dataset feeds the next epochs (ending the previous cycle, if any).

        `rewards`, `advantages`, `returns`, `values`: per sample, the same number of each (any shape,
        flattened), as the update uses them (advantages before per-minibatch normalisation).
        `global_step`: environment ticks consumed by the run so far. `learning_rate`: the rate in use
        (`end_epoch` may give another). `episode_returns`: returns of the episodes that finished in the
        data (None or empty: `mean_episode_return` null). `rollout_ticks`: environment ticks captured
        for this dataset (default: one per sample; 0 for replay). `data_mode`: default the recorder's.
        `cycle_id`: default one more than the last (0 for replay)."""
        started = time.perf_counter()
        self._check_open()
        self.end_cycle()
        arrays = [np.asarray(array) for array in (returns, values, rewards, advantages)]
        samples = arrays[0].size
        if samples == 0:
            raise RecorderError("begin_cycle: the dataset is empty (a record needs num_samples >= 1)")
        if len({array.size for array in arrays}) != 1:
            sizes = ", ".join(f"{name} {array.size}" for name, array in zip(("returns", "values", "rewards", "advantages"), arrays))
            raise RecorderError(f"begin_cycle: the dataset's arrays differ in length ({sizes})")
        mode = self.data_mode if data_mode is None else _data_mode_index(data_mode)
        replay = DATA_MODE_NAMES[mode] == "replay"
        if cycle_id is None:
            cycle_id = 0 if replay else self.cycle_id + 1
        if rollout_ticks is None:
            rollout_ticks = 0 if replay else samples
        _check_cycle_counts(replay, cycle_id, rollout_ticks, global_step)
        self.cycle_id = cycle_id
        self._cycle = _Cycle(
            dataset_arrays(arrays), samples, [float(value) for value in episode_returns] if episode_returns else [],
            mode, int(cycle_id), int(rollout_ticks), int(global_step), _learning_rate(learning_rate),
        )
        self._epoch_started = time.monotonic()
        self.seconds += time.perf_counter() - started

    def end_cycle(self) -> None:
        """The cycle is over (its epochs wait for the next hand-over); nothing happens when none is open."""
        cycle = self._cycle
        if cycle is None:
            return
        if len(cycle.minibatches) > cycle.open_from:
            raise RecorderError("end_cycle: an epoch is still open (end_epoch first)")
        if cycle.finished:
            self._ended.append(cycle)
        self._cycle = None

    # ---------------------------------------------------------------------------------------- epochs

    def begin_epoch(self) -> None:
        """Start timing an epoch here (optional: an epoch otherwise starts when the previous one ended,
        or when its cycle began)."""
        self._epoch_started = time.monotonic()

    def minibatch(
        self,
        policy_loss: float,
        value_loss: float,
        entropy: float,
        kl: float,
        grad_norm: float,
        clip_fraction: float,
        samples: int,
    ) -> None:
        """One minibatch of the current epoch: its mean clipped-surrogate loss and value loss, its mean
        policy entropy (nats), its k3 KL estimate `mean((ratio - 1) - log ratio)`, the global L2 norm of
        its gradient before clipping, the share of its `samples` with `|ratio - 1| > clip_range`."""
        cycle = self._cycle
        if cycle is None:
            raise RecorderError("minibatch: no cycle begun (begin_cycle first)")
        if samples < 1:
            raise RecorderError(f"minibatch: samples must be >= 1, got {samples}")
        # kept as reported; the epoch's statistics are computed where its record is built
        cycle.minibatches.append((
            float(policy_loss), float(value_loss), float(entropy), float(kl), float(grad_norm),
            float(clip_fraction) * samples, samples,
        ))

    def end_epoch(
        self,
        *,
        learning_rate: float | None = None,
        global_step: int | None = None,
        duration_sec: float | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """The epoch is over: its record is built from the minibatches since the last `end_epoch`.

        `learning_rate` and `global_step` default to the cycle's. A trainer that reports an epoch after
        the fact (its values computed later, on a device, or in one batch per update) gives the epoch's
        own `duration_sec` and `timestamp_ms` (Unix milliseconds at its end); by default they are
        measured here (since the previous epoch ended, its cycle began, or `begin_epoch`)."""
        finished_at = time.monotonic()
        cycle = self._cycle
        minibatches = 0 if cycle is None else len(cycle.minibatches) - cycle.open_from
        if minibatches == 0:
            raise RecorderError("end_epoch: the epoch had no minibatch (a record needs num_minibatches >= 1)")
        cycle.open_from += minibatches
        # as reported; the defaults are filled in at the hand-over (`_reported_epochs`)
        cycle.finished.append((
            self.epoch, global_step, timestamp_ms, None if learning_rate is None else _learning_rate(learning_rate),
            minibatches, finished_at - self._epoch_started if duration_sec is None else float(duration_sec),
            finished_at,
        ))
        self.epoch += 1
        self._epoch_started = finished_at
        if finished_at - self._pending_since > self.max_publish_delay:
            self._hand_over()

    # ------------------------------------------------------------------------------------ publishing

    def poll(self) -> None:
        """Hand finished epochs to the sink if the oldest has waited `max_publish_delay`; cheap to call often."""
        waiting = self._ended or (self._cycle is not None and self._cycle.finished)
        if waiting and time.monotonic() - self._pending_since > self.max_publish_delay:
            self._hand_over()

    def flush(self) -> None:
        """Publish every finished epoch now (the open cycle's too) and flush the sink."""
        self._hand_over()

    def close(self) -> None:
        """Publish what is left; an epoch still open (no `end_epoch`) is dropped. Idempotent."""
        if self._closed:
            return
        if self._cycle is not None:
            del self._cycle.minibatches[self._cycle.open_from :]
            self.end_cycle()
        self._closed = True
        self._hand_over()

    def _hand_over(self) -> None:
        """Pack every finished epoch (ended cycles', then the open cycle's) into one block and hand it
        to the sink, then flush the sink (if a flush was given)."""
        started = time.perf_counter()
        # monotonic time -> Unix milliseconds, for the epochs whose end was measured here
        clock_offset_ms = time.time() * 1000.0 - time.monotonic() * 1000.0
        cycles, arrays, epochs, minibatches = [], [], [], []
        for cycle in self._ended + ([self._cycle] if self._cycle is not None else []):
            if cycle.finished:
                cycles.append((
                    len(cycle.finished), cycle.samples, mean_or_none(cycle.episode_returns), cycle.data_mode,
                    cycle.cycle_id, cycle.rollout_ticks,
                ))
                arrays.append(cycle.arrays)
                epochs += _reported_epochs(cycle, clock_offset_ms)
                minibatches += cycle.minibatches[: cycle.open_from]
                cycle.finished = []
                del cycle.minibatches[: cycle.open_from]  # the open epoch's minibatches stay
                cycle.open_from = 0
        self._ended = []
        self._pending_since = time.monotonic()
        if epochs:
            batch = RowBatch(data_block(cycles, arrays, epochs, minibatches))
            if self._publish_rows is not None:
                self._publish_rows(batch)
            else:
                v1_1 = self.telemetry_version == "1.1"
                for row in batch:
                    self._publish(build_record(row, self.run_id, v1_1))
            self.records += len(epochs)
        if self._flush is not None:
            self._flush()
        self.seconds += time.perf_counter() - started

    def __enter__(self) -> EpochRecorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RecorderError("the recorder is closed")


def _reported_epochs(cycle: _Cycle, clock_offset_ms: float) -> list[tuple]:
    """The cycle's finished epochs as a block carries them, the cycle's values and measured times filled in."""
    return [
        (epoch, cycle.global_step if global_step is None else int(global_step),
         int(clock_offset_ms + finished_at * 1000.0) if timestamp_ms is None else int(timestamp_ms),
         cycle.learning_rate if learning_rate is None else learning_rate, minibatches, duration)
        for epoch, global_step, timestamp_ms, learning_rate, minibatches, duration, finished_at in cycle.finished
    ]


def check_recording(run_id: str, telemetry_version: str, data_mode: str) -> None:
    """Raise a one-line `RecorderError` unless a recorder can make records of these."""
    if not is_valid_run_id(run_id):
        raise RecorderError(f"run_id must be {RUN_ID_PATTERN.description}, got {run_id!r}")
    if telemetry_version not in TELEMETRY_VERSIONS:
        raise RecorderError(f"telemetry_version must be 1.1 or 1.0, got {telemetry_version!r}")
    _data_mode_index(data_mode)


def _data_mode_index(data_mode: str) -> int:
    if data_mode not in DATA_MODE_NAMES:
        raise RecorderError(f"data_mode must be one of {', '.join(DATA_MODE_NAMES)}, got {data_mode!r}")
    return DATA_MODE_NAMES.index(data_mode)


def _learning_rate(value: float) -> float:
    rate = float(value)
    if not (rate > 0.0 and math.isfinite(rate)):
        raise RecorderError(f"learning_rate must be finite and > 0, got {value!r}")
    return rate


def _check_cycle_counts(replay: bool, cycle_id: int, rollout_ticks: int, global_step: int) -> None:
    """SPEC §1: replayed data has cycle_id and rollout_ticks 0; captured data both >= 1."""
    if global_step < 0:
        raise RecorderError(f"begin_cycle: global_step must be >= 0, got {global_step}")
    if replay and (cycle_id != 0 or rollout_ticks != 0):
        raise RecorderError("begin_cycle: replayed data has cycle_id 0 and rollout_ticks 0")
    if not replay and (cycle_id < 1 or rollout_ticks < 1):
        raise RecorderError(
            f"begin_cycle: captured data needs cycle_id >= 1 and rollout_ticks >= 1, got {cycle_id} and {rollout_ticks}"
        )
