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

What is kept is bytes, not records (`producer.records`): per cycle a header and the four arrays, per
epoch a packed row. About once a second (`max_publish_delay`) the pending bytes go to `publish_rows`
(the publisher process of `producer.publisher`, which builds, numbers and writes the records off the
training process) or, for an in-process sink, `publish` gets each record as a dict. `poll()` lets a
trainer that spends long between epochs (collecting a rollout) hand finished epochs over on time.

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

from .records import DATA_MODE_NAMES, RowBatch, build_record, cycle_header, dataset_arrays, pack_epoch
from .stats import EpochStats, mean_or_none

__all__ = ["EpochRecorder", "RecorderError", "TELEMETRY_VERSIONS", "check_recording"]

TELEMETRY_VERSIONS = ("1.1", "1.0")


class RecorderError(TelemetryError):
    """A recorder called out of order, or with values no record can hold."""


@dataclass(slots=True)
class _Cycle:
    """The dataset feeding the current cycle's epochs, as the records need it."""

    arrays: bytes
    """The four dataset arrays as a block carries them (`records.dataset_arrays`)."""
    samples: int
    mean_episode_return: float | None
    data_mode: int
    cycle_id: int
    rollout_ticks: int
    global_step: int
    learning_rate: float
    finished: list[tuple] = field(default_factory=list)
    """This cycle's finished epochs not yet packed: (EpochStats, epoch, global_step, timestamp_ms,
    learning_rate, duration)."""


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
        """Time spent in the recorder's per-epoch and per-batch work: telemetry's cost to the trainer."""
        self._cycle: _Cycle | None = None
        self._stats: EpochStats | None = None
        self._epoch_started = 0.0
        self._pending = bytearray()  # packed blocks of finished epochs not yet published
        self._pending_rows = 0
        self._pending_since = time.perf_counter()
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
        arrays = tuple(np.ravel(np.asarray(array, dtype=np.float64)) for array in (returns, values, rewards, advantages))
        samples = len(arrays[0])
        if samples == 0:
            raise RecorderError("begin_cycle: the dataset is empty (a record needs num_samples >= 1)")
        if any(len(array) != samples for array in arrays):
            sizes = ", ".join(f"{name} {len(array)}" for name, array in zip(("returns", "values", "rewards", "advantages"), arrays))
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
            dataset_arrays(arrays), samples, mean_or_none([float(value) for value in episode_returns or ()]),
            mode, int(cycle_id), int(rollout_ticks), int(global_step), _learning_rate(learning_rate),
        )
        self._epoch_started = time.monotonic()
        self.seconds += time.perf_counter() - started

    def end_cycle(self) -> None:
        """Pack the cycle's finished epochs; nothing happens when no cycle is open."""
        cycle = self._cycle
        if cycle is None:
            return
        if self._stats is not None:
            raise RecorderError("end_cycle: an epoch is still open (end_epoch first)")
        self._pack(cycle)
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
        stats = self._stats
        if stats is None:
            if self._cycle is None:
                raise RecorderError("minibatch: no cycle begun (begin_cycle first)")
            stats = self._stats = EpochStats()
        if samples < 1:
            raise RecorderError(f"minibatch: samples must be >= 1, got {samples}")
        clip_fraction = float(clip_fraction)
        stats.add(
            float(policy_loss), float(value_loss), float(entropy), float(kl), float(grad_norm),
            clip_fraction * samples, samples,
        )

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
        started = time.perf_counter()
        stats, cycle = self._stats, self._cycle
        if stats is None:
            raise RecorderError("end_epoch: the epoch had no minibatch (a record needs num_minibatches >= 1)")
        self._stats = None
        # kept as it is and packed with the cycle's other epochs in one loop (`_pack`): between two
        # epochs' numpy work, packing a row costs several times what it costs in a tight loop
        cycle.finished.append((
            stats, self.epoch, cycle.global_step if global_step is None else int(global_step),
            time.time_ns() // 1_000_000 if timestamp_ms is None else int(timestamp_ms),
            cycle.learning_rate if learning_rate is None else _learning_rate(learning_rate),
            finished_at - self._epoch_started if duration_sec is None else float(duration_sec),
        ))
        self.epoch += 1
        self._epoch_started = finished_at
        if started - self._pending_since > self.max_publish_delay:
            self._pack(cycle)
            self.publish_pending()
        self.seconds += time.perf_counter() - started

    # ------------------------------------------------------------------------------------ publishing

    def poll(self) -> None:
        """Hand finished epochs to the sink if the oldest has waited `max_publish_delay`; cheap to call often."""
        if self._pending_rows or (self._cycle is not None and self._cycle.finished):
            if time.perf_counter() - self._pending_since > self.max_publish_delay:
                started = time.perf_counter()
                if self._cycle is not None:
                    self._pack(self._cycle)
                self.publish_pending()
                self.seconds += time.perf_counter() - started

    def _pack(self, cycle: _Cycle) -> None:
        """Move the cycle's finished rows into the pending bytes, as one block."""
        finished = cycle.finished
        if not finished:
            return
        pending = self._pending
        pending += cycle_header(len(finished), cycle.samples, cycle.mean_episode_return, cycle.data_mode,
                                cycle.cycle_id, cycle.rollout_ticks)
        pending += cycle.arrays
        for stats, epoch, global_step, timestamp_ms, learning_rate, duration in finished:
            policy_loss, value_loss, kl, kl_max, clip_fraction, entropy_mean, entropy_std, grad_max = stats.values()
            pending += pack_epoch(
                epoch, global_step, timestamp_ms, policy_loss, value_loss, kl, clip_fraction, learning_rate,
                stats.num_minibatches, duration, entropy_mean, entropy_std, grad_max, kl_max,
            )
        self._pending_rows += len(finished)
        cycle.finished = []

    def publish_pending(self) -> None:
        """Hand the packed epochs over to the sink, then flush it (if a flush was given)."""
        rows = RowBatch(self._pending)  # handed over, not copied: a new buffer takes its place
        count = self._pending_rows
        self._pending = bytearray()
        self._pending_rows = 0
        self._pending_since = time.perf_counter()
        if count:
            if self._publish_rows is not None:
                self._publish_rows(rows)
            else:
                v1_1 = self.telemetry_version == "1.1"
                for row in rows:
                    self._publish(build_record(row, self.run_id, v1_1))
            self.records += count
        if self._flush is not None:
            self._flush()

    def flush(self) -> None:
        """Publish every finished epoch now (the open cycle's too) and flush the sink."""
        if self._cycle is not None:
            self._pack(self._cycle)
        self.publish_pending()

    def close(self) -> None:
        """Publish what is left; an epoch still open (no `end_epoch`) is dropped. Idempotent."""
        if self._closed:
            return
        self._stats = None
        if self._cycle is not None:
            self._pack(self._cycle)
            self._cycle = None
        self._closed = True
        self.publish_pending()

    def __enter__(self) -> EpochRecorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RecorderError("the recorder is closed")


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
