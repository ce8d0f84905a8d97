"""An epoch's record, from the compact rows the training loop packs.

The training loop keeps no records, only bytes: per cycle, a block of a fixed-size header (the cycle's
own fields), the four dataset arrays the dataset-level statistics come from (returns, values, rewards,
advantages, as float64), then one fixed-size row of plain numbers per epoch (`pack_epoch`). A batch
of such blocks (`RowBatch`) is what crosses to the publisher process, which computes explained variance
and the reward/advantage correlation (`producer.stats.dataset_statistics`, once per block) and builds
the records. Iterating a batch gives each epoch's row as a tuple in `ROW_FIELDS` order; `build_record`
turns a row into the `EpochSummary` dict of SPEC §1.

Why bytes: a pending row kept as a tuple holds two dozen Python objects until its batch is published,
and a second's worth of retained objects measurably slowed the training loop around it; the
statistics' numpy reductions cost the training process ~40 µs a cycle, copying the arrays ~2 µs.
A block may instead carry the statistics themselves (no arrays): `RowBatch.from_rows`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from avro_schemas.fields import FIELDS, VERSION_FIELDS, struct_format
from avro_schemas.models import V1_1_ADDED_FIELDS

from .stats import dataset_statistics

__all__ = [
    "DATA_MODE_NAMES", "ROW_FIELDS", "RowBatch", "build_record", "cycle_header", "dataset_arrays",
    "pack_epoch",
]

# data_mode travels as an index into these (the order is the row format's, not the schema's)
DATA_MODE_NAMES = ("mixed", "rollout", "replay")
assert set(DATA_MODE_NAMES) == set(FIELDS["data_mode"].valid_symbols)

# An unpacked row: the record's fields in schema order, less telemetry_version, run_id and
# log_stream_offset, with data_mode as an index into DATA_MODE_NAMES.
_NOT_IN_ROWS = ("telemetry_version", "run_id", "log_stream_offset")
ROW_FIELDS = tuple(name for name in VERSION_FIELDS["1.1"] if name not in _NOT_IN_ROWS)

# Which fields an epoch's row holds and which its cycle's header holds is the layout's choice; their
# struct codes come from the field table (avro_schemas.fields).
_EPOCH_FIELDS = (
    "epoch", "global_step", "timestamp_ms", "policy_loss", "value_loss", "kl_divergence", "clip_fraction",
    "learning_rate", "num_minibatches", "epoch_duration_sec", "batch_entropy_mean", "batch_entropy_std",
    "grad_norm_max", "kl_divergence_max",
)
_EPOCH = struct.Struct(struct_format(_EPOCH_FIELDS))
# the nullable fields first: a null is a flag bit in the header, its slot then holds 0.0
_NULLABLE = tuple(name for name in ROW_FIELDS if FIELDS[name].nullable)
_COUNTS = ("num_samples", "cycle_id", "rollout_ticks")
_CYCLE_FIELDS = _NULLABLE + ("data_mode",) + _COUNTS
# a block's header: epochs in the block, samples per array (0: no arrays, the statistics are given),
# the null flags (bit i: _NULLABLE[i] is null), then the cycle's fields (data_mode as its index)
_HEADER = struct.Struct("<IqB" + struct_format(_NULLABLE, "") + "q" + struct_format(_COUNTS, ""))
_EXPLAINED_VARIANCE = _CYCLE_FIELDS.index("explained_variance")
_CORRELATION = _CYCLE_FIELDS.index("reward_advantage_corr")
_TAKE = tuple((_EPOCH_FIELDS + _CYCLE_FIELDS).index(name) for name in ROW_FIELDS)
assert sorted(_EPOCH_FIELDS + _CYCLE_FIELDS) == sorted(ROW_FIELDS)
_F64 = np.dtype("<f8")

pack_epoch = _EPOCH.pack
"""pack_epoch(epoch, global_step, timestamp_ms, policy_loss, value_loss, kl_divergence, clip_fraction,
learning_rate, num_minibatches, epoch_duration_sec, batch_entropy_mean, batch_entropy_std, grad_norm_max,
kl_divergence_max) -> bytes: one epoch's row within its cycle's block."""


def _header(epochs: int, samples: int, cycle: tuple) -> bytes:
    """A header for `cycle`, the values of `_CYCLE_FIELDS` in order."""
    nullable = cycle[: len(_NULLABLE)]
    nulls = sum(1 << i for i, value in enumerate(nullable) if value is None)
    return _HEADER.pack(epochs, samples, nulls, *(0.0 if value is None else value for value in nullable), *cycle[len(_NULLABLE):])


def cycle_header(
    epochs: int, samples: int, mean_episode_return: float | None, data_mode: int, cycle_id: int, rollout_ticks: int
) -> bytes:
    """A block's header: `epochs` rows follow the dataset's arrays (`dataset_arrays`) of `samples` values each."""
    values = {"mean_episode_return": mean_episode_return, "num_samples": samples, "data_mode": data_mode,
              "cycle_id": cycle_id, "rollout_ticks": rollout_ticks}  # the statistics: computed by the reader
    return _header(epochs, samples, tuple(values.get(name) for name in _CYCLE_FIELDS))


def dataset_arrays(arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> bytes:
    """The four dataset arrays (returns, values, rewards, advantages) as a block carries them: float64,
    flattened, one after the other. A copy: the caller may reuse its arrays at once."""
    return b"".join(np.ascontiguousarray(array, dtype=_F64).tobytes() for array in arrays)


class RowBatch:
    """Packed blocks of rows; iterating gives each row as a tuple in `ROW_FIELDS` order (None where null)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    @classmethod
    def from_rows(cls, rows: Iterable[tuple]) -> RowBatch:
        """The batch of unpacked rows (as iteration gives them), statistics as given."""
        out = bytearray()
        for row in rows:
            named = dict(zip(ROW_FIELDS, row, strict=True))
            out += _header(1, 0, tuple(named[name] for name in _CYCLE_FIELDS))
            out += pack_epoch(*(named[name] for name in _EPOCH_FIELDS))
        return cls(bytes(out))

    def __len__(self) -> int:
        return sum(1 for _ in self._blocks())

    def _blocks(self) -> Iterator[tuple[tuple, bytes]]:
        """Each row's epoch values and its block's cycle values, statistics computed."""
        data, offset, end = self.data, 0, len(self.data)
        while offset < end:
            if end - offset < _HEADER.size:
                raise ValueError(f"a row batch ends inside a block header at byte {offset}")
            epochs, samples, nulls, *cycle = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            for bit in range(len(_NULLABLE)):
                if nulls >> bit & 1:
                    cycle[bit] = None
            if samples:
                size = samples * _F64.itemsize
                if end - offset < 4 * size:
                    raise ValueError(f"a row batch ends inside a block's arrays at byte {offset}")
                arrays = [np.frombuffer(data, _F64, samples, offset + i * size) for i in range(4)]
                cycle[_EXPLAINED_VARIANCE], cycle[_CORRELATION] = dataset_statistics(*arrays)
                offset += 4 * size
            if end - offset < epochs * _EPOCH.size:
                raise ValueError(f"a row batch ends inside a block's rows at byte {offset}")
            cycle_values = tuple(cycle)
            for _ in range(epochs):
                yield _EPOCH.unpack_from(data, offset), cycle_values
                offset += _EPOCH.size

    def __iter__(self) -> Iterator[tuple]:
        take = _TAKE
        for epoch_values, cycle_values in self._blocks():
            values = epoch_values + cycle_values
            yield tuple(values[i] for i in take)


_DATA_MODE = ROW_FIELDS.index("data_mode")
assert VERSION_FIELDS["1.1"] == ("telemetry_version", "run_id", *ROW_FIELDS, "log_stream_offset")


def build_record(row: tuple, run_id: str, v1_1: bool) -> dict[str, Any]:
    """The record of one epoch row, fields in schema order: v1.1 (with `log_stream_offset` None, for the
    writer, which numbers records) or v1.0."""
    record: dict[str, Any] = {"telemetry_version": "1.1", "run_id": run_id}
    record.update(zip(ROW_FIELDS, row))
    record["data_mode"] = DATA_MODE_NAMES[row[_DATA_MODE]]
    record["log_stream_offset"] = None
    if not v1_1:
        record["telemetry_version"] = "1.0"
        for name in V1_1_ADDED_FIELDS:
            del record[name]
    return record
