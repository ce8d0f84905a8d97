"""Packed epoch rows: what the training loop packs is what the publisher unpacks, nulls and NaN included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from producer.records import ROW_FIELDS, RowBatch, build_record, data_block, dataset_arrays


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


def reported(epoch: int, minibatches: int) -> tuple:
    """An epoch's row as the recorder packs it: epoch, global_step, timestamp_ms, learning_rate,
    num_minibatches, epoch_duration_sec."""
    return (epoch, 2048, 1_764_000_000_123, 3e-4, minibatches, 0.0123)


def test_a_block_carries_the_data_of_its_cycles_and_the_reader_computes_the_statistics():
    rng = np.random.default_rng(3)
    returns, values, rewards, advantages = rng.normal(size=(4, 64))
    # (policy_loss, value_loss, entropy, kl, grad_norm, clipped samples, samples) per minibatch
    minibatches = [(-0.5, 2.0, 0.7, 0.01, 1.5, 8.0, 32), (0.25, 1.0, 0.5, 0.03, 2.5, 0.0, 32), (0.1, 0.4, 0.6, 0.02, 0.5, 4.0, 16)]
    cycles = [(2, 64, None, 0, 5, 64), (1, 64, 2.5, 1, 6, 64)]  # epochs, samples, mean return, mode, id, ticks
    arrays = [dataset_arrays((returns, values, rewards, advantages)),
              dataset_arrays((returns, values, np.ones(64, dtype=np.float32), advantages))]
    out = data_block(cycles, arrays, [reported(7, 2), reported(8, 1), reported(9, 1)], minibatches + minibatches[:1])
    out += data_block(cycles[1:], arrays[1:], [reported(10, 1)], minibatches[2:])  # a second block
    first, second, third, fourth = (dict(zip(ROW_FIELDS, r)) for r in RowBatch(out))
    assert [r["epoch"] for r in (first, second, third, fourth)] == [7, 8, 9, 10]
    assert first["explained_variance"] == pytest.approx(1 - np.var(returns - values) / np.var(returns), rel=1e-12)
    assert first["reward_advantage_corr"] == pytest.approx(np.corrcoef(rewards, advantages)[0, 1], rel=1e-12)
    assert first["mean_episode_return"] is None and first["num_samples"] == 64 and first["cycle_id"] == 5
    assert (first["policy_loss"], first["value_loss"], first["kl_divergence"]) == (-0.125, 1.5, 0.02)
    assert (first["kl_divergence_max"], first["grad_norm_max"], first["clip_fraction"]) == (0.03, 2.5, 0.125)
    assert (first["batch_entropy_mean"], first["batch_entropy_std"], first["num_minibatches"]) == (0.6, pytest.approx(0.1), 2)
    assert (second["policy_loss"], second["clip_fraction"], second["batch_entropy_std"]) == (0.1, 0.25, 0.0)
    assert (second["num_minibatches"], second["learning_rate"], second["timestamp_ms"]) == (1, 3e-4, 1_764_000_000_123)
    assert second["cycle_id"] == 5
    assert third["reward_advantage_corr"] is None  # constant rewards: the zero-variance guard
    assert (third["mean_episode_return"], third["data_mode"], third["cycle_id"]) == (2.5, 1, 6)
    assert third["policy_loss"] == -0.5 and fourth["policy_loss"] == 0.1 and fourth["cycle_id"] == 6
    assert build_record(tuple(third.values()), "r", True)["data_mode"] == "rollout"


def test_a_nan_minibatch_value_reaches_its_record():
    arrays = [dataset_arrays(tuple(np.arange(4.0) for _ in range(4)))]
    out = data_block([(1, 4, None, 0, 1, 4)], arrays, [reported(0, 1)], [(math.nan, 1.0, 0.5, 0.0, 1.0, 0.0, 4)])
    (unpacked,) = RowBatch(out)
    assert math.isnan(dict(zip(ROW_FIELDS, unpacked))["policy_loss"])


# a minibatch 56 bytes, an epoch's row 48, the arrays 4 x 8 x 64, a cycle header 69, the block's start 5:
# cut into each, and just after each
@pytest.mark.parametrize("cut", [1, 56, 57, 104, 105, 2152, 2153, 2221, 2222])
def test_a_torn_batch_is_refused(cut):
    arrays = [dataset_arrays(tuple(np.arange(64.0) for _ in range(4)))]
    out = data_block([(1, 64, 1.0, 0, 1, 64)], arrays, [reported(0, 1)], [(0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 64)])
    assert len(out) == 2226
    assert len(list(RowBatch(out))) == 1
    with pytest.raises(ValueError, match="ends inside"):
        list(RowBatch(out[:-cut]))
    assert len(RowBatch(b"")) == 0 and list(RowBatch(b"")) == []


def test_a_torn_batch_of_given_rows_is_refused():
    out = RowBatch.from_rows([row(), row(epoch=8)]).data
    for cut in (1, 113, 200):
        with pytest.raises(ValueError, match="ends inside"):
            list(RowBatch(out[:-cut]))
