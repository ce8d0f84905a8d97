"""An epoch's record, from the compact blocks the training loop packs.

The training loop keeps no records, only bytes. What crosses to the publisher process is a batch
(`RowBatch`) of blocks; a block (`data_block`) holds the cycles finished since the last hand-over: a
fixed-size header per cycle (the cycle's own fields), then each cycle's four dataset arrays (returns,
values, rewards, advantages, as float64), then one fixed-size row per epoch (what the trainer said of
the epoch: its number, step, time, learning rate, minibatch count and duration), then every
minibatch's seven numbers as the trainer reported them. The reader computes the statistics,
dataset-level (explained variance, reward/advantage correlation: `producer.stats.dataset_statistics`,
once per cycle) and per epoch (`EpochStats`), and builds the records. Iterating a batch gives each
epoch's row as a tuple in `ROW_FIELDS` order; `build_record` turns a row into the `EpochSummary` dict
of SPEC §1.

Why bytes, and why raw minibatch values: a pending row kept as a tuple holds two dozen Python objects
until its batch is published, and a second's worth of retained objects measurably slowed the training
loop around it; reducing each epoch's minibatches to its statistics in the training process (an
`EpochStats` per epoch, its mean, std and maxima) cost about 1 % of a CartPole run whose epochs take
half a millisecond. The statistics' numpy reductions cost the training process ~40 µs a cycle, copying
the arrays ~2 µs; packing a second's worth of cycles into one block makes a few `struct` calls in all,
not a few per cycle. A block may instead carry the statistics themselves (no arrays, whole epoch rows):
`RowBatch.from_rows`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

import numpy as np

from avro_schemas.fields import FIELDS, VERSION_FIELDS, struct_format
from avro_schemas.models import V1_1_ADDED_FIELDS

from .stats import EPOCH_STAT_FIELDS, EpochStats, dataset_statistics

__all__ = ["DATA_MODE_NAMES", "ROW_FIELDS", "RowBatch", "build_record", "data_block", "dataset_arrays"]

# data_mode travels as an index into these (the order is the row format's, not the schema's)
DATA_MODE_NAMES = ("mixed", "rollout", "replay")
assert set(DATA_MODE_NAMES) == set(FIELDS["data_mode"].valid_symbols)

# An unpacked row: the record's fields in schema order, less telemetry_version, run_id and
# log_stream_offset, with data_mode as an index into DATA_MODE_NAMES.
_NOT_IN_ROWS = ("telemetry_version", "run_id", "log_stream_offset")
ROW_FIELDS = tuple(name for name in VERSION_FIELDS["1.1"] if name not in _NOT_IN_ROWS)

# Which fields an epoch's row holds and which its cycle's header holds is the layout's choice; their
# struct codes come from the field table (avro_schemas.fields). An epoch's row, as the trainer reports it:
_EPOCH_REPORTED = ("epoch", "global_step", "timestamp_ms", "learning_rate", "num_minibatches", "epoch_duration_sec")
_REPORTED = struct.Struct(struct_format(_EPOCH_REPORTED))
_REPORTED_CODES = _REPORTED.format[1:]  # repeated for a block's epochs: "<" + codes * epochs
_MINIBATCHES = _EPOCH_REPORTED.index("num_minibatches")
# a minibatch: the seven numbers `EpochStats.add` takes, as float64
_MINIBATCH = struct.Struct("<7d")
# an epoch's whole row (a block whose statistics are given): what was reported, then its statistics
_EPOCH_FIELDS = _EPOCH_REPORTED + EPOCH_STAT_FIELDS
_EPOCH = struct.Struct(struct_format(_EPOCH_FIELDS))
# the nullable fields first: a null is a flag bit in the header, its slot then holds 0.0
_NULLABLE = tuple(name for name in ROW_FIELDS if FIELDS[name].nullable)
_COUNTS = ("num_samples", "cycle_id", "rollout_ticks")
_CYCLE_FIELDS = _NULLABLE + ("data_mode",) + _COUNTS
# a block: how many cycles, and whether the statistics are given (whole epoch rows, no arrays)
_BLOCK = struct.Struct("<I?")
# a cycle's header: its epochs, samples per array, the null flags (bit i: _NULLABLE[i] is null), then
# the cycle's fields (data_mode as its index)
_HEADER = struct.Struct("<IqB" + struct_format(_NULLABLE, "") + "q" + struct_format(_COUNTS, ""))
_EXPLAINED_VARIANCE = _CYCLE_FIELDS.index("explained_variance")
_CORRELATION = _CYCLE_FIELDS.index("reward_advantage_corr")
_TAKE = tuple((_EPOCH_FIELDS + _CYCLE_FIELDS).index(name) for name in ROW_FIELDS)
assert sorted(_EPOCH_FIELDS + _CYCLE_FIELDS) == sorted(ROW_FIELDS)
_F64 = np.dtype("<f8")


def _header(epochs: int, samples: int, cycle: tuple) -> bytes:
    """A header for `cycle`, the values of `_CYCLE_FIELDS` in order."""
    nullable = cycle[: len(_NULLABLE)]
    nulls = sum(1 << i for i, value in enumerate(nullable) if value is None)
    return _HEADER.pack(epochs, samples, nulls, *(0.0 if value is None else value for value in nullable), *cycle[len(_NULLABLE):])


def data_block(cycles: list[tuple], arrays: list[np.ndarray], epochs: list[tuple], minibatches: list[tuple]) -> bytes:
    """A block of finished cycles: per cycle (epochs, samples, mean_episode_return, data_mode, cycle_id,
    rollout_ticks) and its dataset's arrays (`dataset_arrays`), then all their epochs as reported
    (`_EPOCH_REPORTED` order), in order, then all those epochs' minibatches, in order (each the seven
    numbers of `EpochStats.add`; an epoch's are the next `num_minibatches`)."""
    headers = []
    for epoch_count, samples, mean_episode_return, data_mode, cycle_id, rollout_ticks in cycles:
        values = {"mean_episode_return": mean_episode_return, "num_samples": samples, "data_mode": data_mode,
                  "cycle_id": cycle_id, "rollout_ticks": rollout_ticks}  # the statistics: computed by the reader
        headers.append(_header(epoch_count, samples, tuple(values.get(name) for name in _CYCLE_FIELDS)))
    return b"".join((
        _BLOCK.pack(len(cycles), False),
        *headers,
        *arrays,
        struct.pack("<" + _REPORTED_CODES * len(epochs), *chain.from_iterable(epochs)),
        struct.pack(f"<{len(minibatches) * 7}d", *chain.from_iterable(minibatches)),
    ))


def dataset_arrays(arrays: Iterable[np.ndarray]) -> np.ndarray:
    """The four dataset arrays (returns, values, rewards, advantages; any shape, the same size) as a
    block carries them: little-endian float64, flattened, one after the other. A copy: the caller may
    reuse its arrays at once."""
    return np.concatenate(arrays, axis=None, dtype=_F64)


class RowBatch:
    """Packed blocks of rows; iterating gives each row as a tuple in `ROW_FIELDS` order (None where null)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    @classmethod
    def from_rows(cls, rows: Iterable[tuple]) -> RowBatch:
        """The batch of unpacked rows (as iteration gives them), statistics as given."""
        headers, epochs = [], []
        for row in rows:
            named = dict(zip(ROW_FIELDS, row, strict=True))
            headers.append(_header(1, 0, tuple(named[name] for name in _CYCLE_FIELDS)))
            epochs.append(_EPOCH.pack(*(named[name] for name in _EPOCH_FIELDS)))
        return cls(b"".join((_BLOCK.pack(len(headers), True), *headers, *epochs)))

    def __len__(self) -> int:
        return sum(1 for _ in self._blocks())

    def _blocks(self) -> Iterator[tuple[tuple, tuple]]:
        """Each row's epoch values (`_EPOCH_FIELDS` order) and its cycle's values, statistics computed."""
        data, offset = self.data, 0
        while offset < len(data):
            if len(data) - offset < _BLOCK.size:
                raise ValueError(f"a row batch ends inside a block's start at byte {offset}")
            count, given = _BLOCK.unpack_from(data, offset)
            offset += _BLOCK.size
            if len(data) - offset < count * _HEADER.size:
                raise ValueError(f"a row batch ends inside a block's cycle headers at byte {offset}")
            cycles = []
            for _ in range(count):
                epochs, samples, nulls, *cycle = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                for bit in range(len(_NULLABLE)):
                    if nulls >> bit & 1:
                        cycle[bit] = None
                cycles.append((epochs, samples, cycle))
            rows, offset = (_given_rows if given else _computed_rows)(data, offset, cycles)
            yield from rows

    def __iter__(self) -> Iterator[tuple]:
        take = _TAKE
        for epoch_values, cycle_values in self._blocks():
            values = epoch_values + cycle_values
            yield tuple(values[i] for i in take)


def _given_rows(data: bytes, offset: int, cycles: list[tuple]) -> tuple[list[tuple], int]:
    """A block's whole epoch rows, statistics as given, each with its cycle's values; and the offset
    after them."""
    rows = []
    for epochs, _, cycle in cycles:
        if len(data) - offset < epochs * _EPOCH.size:
            raise ValueError(f"a row batch ends inside a block's rows at byte {offset}")
        cycle_values = tuple(cycle)
        for _ in range(epochs):
            rows.append((_EPOCH.unpack_from(data, offset), cycle_values))
            offset += _EPOCH.size
    return rows, offset


def _computed_rows(data: bytes, offset: int, cycles: list[tuple]) -> tuple[list[tuple], int]:
    """A block's epoch rows with their statistics computed, each with its cycle's values (its dataset's
    statistics computed from its arrays); and the offset after them."""
    for _, samples, cycle in cycles:
        size = samples * _F64.itemsize
        if len(data) - offset < 4 * size:
            raise ValueError(f"a row batch ends inside a block's arrays at byte {offset}")
        arrays = [np.frombuffer(data, _F64, samples, offset + i * size) for i in range(4)]
        cycle[_EXPLAINED_VARIANCE], cycle[_CORRELATION] = dataset_statistics(*arrays)
        offset += 4 * size
    epoch_count = sum(epochs for epochs, _, _ in cycles)
    if len(data) - offset < epoch_count * _REPORTED.size:
        raise ValueError(f"a row batch ends inside a block's epochs at byte {offset}")
    reported = iter([_REPORTED.unpack_from(data, offset + i * _REPORTED.size) for i in range(epoch_count)])
    offset += epoch_count * _REPORTED.size
    rows = []
    for epochs, _, cycle in cycles:
        cycle_values = tuple(cycle)
        rows += [(next(reported), cycle_values) for _ in range(epochs)]
    size = sum(epoch[_MINIBATCHES] for epoch, _ in rows) * _MINIBATCH.size
    if len(data) - offset < size:
        raise ValueError(f"a row batch ends inside a block's minibatches at byte {offset}")
    minibatches = _MINIBATCH.iter_unpack(data[offset : offset + size])
    for index, (epoch, cycle_values) in enumerate(rows):
        stats = EpochStats()
        for _ in range(epoch[_MINIBATCHES]):
            stats.add(*next(minibatches))
        rows[index] = (epoch + stats.values(), cycle_values)
    return rows, offset + size


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
