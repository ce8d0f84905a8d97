"""Packed epoch rows: what the training loop packs is what the publisher unpacks, nulls and NaN included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from producer.records import ROW_FIELDS, RowBatch, build_record, cycle_header, dataset_arrays, pack_epoch


def row(**overrides):
    values = {
        "epoch": 7, "global_step": 2048, "timestamp_ms": 1_764_000_000_123, "policy_loss": -0.0123,
        "value_loss": 0.5, "kl_divergence": 0.004, "clip_fraction": 0.125, "explained_variance": 0.75,
        "learning_rate": 3e-4, "mean_episode_return": 1.5, "num_samples": 256, "num_minibatches": 4,
        "epoch_duration_sec": 0.0123, "data_mode": 2, "cycle_id": 0, "batch_entropy_mean": 0.69,
        "batch_entropy_std": 0.01, "grad_norm_max": 1.7, "kl_divergence_max": 0.009,
        "reward_advantage_corr": -0.25, "rollout_ticks": 0,
    }
    values.update(overrides)
    return tuple(values[name] for name in ROW_FIELDS)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"explained_variance": None},
        {"reward_advantage_corr": None, "mean_episode_return": None},
        {"explained_variance": None, "reward_advantage_corr": None, "mean_episode_return": None},
        {"mean_episode_return": 0.0, "explained_variance": -0.0},  # zero is not null
    ],
)
def test_rows_round_trip_through_a_batch(overrides):
    rows = [row(**overrides), row(epoch=8, global_step=2304)]
    batch = RowBatch.from_rows(rows)
    assert len(batch) == 2
    assert list(batch) == rows
    assert [type(v) for v in next(iter(batch))] == [type(v) for v in rows[0]]


def test_nan_and_infinity_survive_as_values_not_nulls():
    # a diverged run's record must reach the validator as it is, to be rejected there
    (unpacked,) = RowBatch.from_rows([row(policy_loss=math.nan, explained_variance=math.inf)])
    named = dict(zip(ROW_FIELDS, unpacked))
    assert math.isnan(named["policy_loss"]) and named["explained_variance"] == math.inf


def cycle_block(out: bytearray, epochs: int, arrays: tuple, mean_episode_return, data_mode: int, cycle_id: int,
                rollout_ticks: int) -> None:
    """A block's header and arrays, as the recorder writes them; its `epochs` rows must follow."""
    out += cycle_header(epochs, len(arrays[0]), mean_episode_return, data_mode, cycle_id, rollout_ticks)
    out += dataset_arrays(arrays)


def test_a_cycle_block_carries_the_arrays_and_the_publisher_computes_the_statistics():
    rng = np.random.default_rng(3)
    returns, values, rewards, advantages = rng.normal(size=(4, 64))
    named = dict(zip(ROW_FIELDS, row()))
    epoch_fields = (
        "epoch", "global_step", "timestamp_ms", "policy_loss", "value_loss", "kl_divergence", "clip_fraction",
        "learning_rate", "num_minibatches", "epoch_duration_sec", "batch_entropy_mean", "batch_entropy_std",
        "grad_norm_max", "kl_divergence_max",
    )
    out = bytearray()
    cycle_block(out, 2, (returns, values, rewards, advantages), None, 0, 5, 64)
    out += pack_epoch(*(named[n] for n in epoch_fields))
    out += pack_epoch(*(named[n] + 1 if n == "epoch" else named[n] for n in epoch_fields))
    cycle_block(out, 1, (returns, values, np.ones(64, dtype=np.float32), advantages), 2.5, 1, 6, 64)
    out += pack_epoch(*(named[n] for n in epoch_fields))
    first, second, third = (dict(zip(ROW_FIELDS, r)) for r in RowBatch(bytes(out)))
    assert (first["epoch"], second["epoch"]) == (7, 8)
    assert first["explained_variance"] == pytest.approx(1 - np.var(returns - values) / np.var(returns), rel=1e-12)
    assert first["reward_advantage_corr"] == pytest.approx(np.corrcoef(rewards, advantages)[0, 1], rel=1e-12)
    assert first["mean_episode_return"] is None and first["num_samples"] == 64 and first["cycle_id"] == 5
    assert third["reward_advantage_corr"] is None  # constant rewards: the zero-variance guard
    assert (third["mean_episode_return"], third["data_mode"], third["cycle_id"]) == (2.5, 1, 6)
    assert build_record(tuple(third.values()), "r", True)["data_mode"] == "rollout"


@pytest.mark.parametrize("cut", [1, 112, 113, 112 + 4 * 8 * 64, 2220])  # rows, arrays, header
def test_a_torn_batch_is_refused(cut):
    out = bytearray()
    cycle_block(out, 1, tuple(np.arange(64.0) for _ in range(4)), 1.0, 0, 1, 64)
    out += pack_epoch(*dict.fromkeys(range(3), 1).values(), *[0.5] * 5, 1, *[0.5] * 5)
    assert len(list(RowBatch(bytes(out)))) == 1
    with pytest.raises(ValueError, match="ends inside"):
        list(RowBatch(bytes(out[:-cut])))
    assert len(RowBatch(b"")) == 0 and list(RowBatch(b"")) == []
