"""`producer.recorder.EpochRecorder`: records built by SPEC §1 from what a trainer reports, in order."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from consumers.validator import validate_record
from producer.recorder import EpochRecorder, RecorderError
from producer.stats import explained_variance, pearson_or_none

RNG = np.random.default_rng(7)
REWARDS = RNG.normal(size=(16, 4))  # (steps, envs), as a rollout buffer holds them
ADVANTAGES = RNG.normal(size=(16, 4))
RETURNS = RNG.normal(size=(16, 4))
VALUES = RETURNS + RNG.normal(scale=0.5, size=(16, 4))
# policy_loss, value_loss, entropy, kl, grad_norm, clip_fraction, samples
MINIBATCHES = [
    (0.10, 2.0, 0.69, 0.004, 1.5, 0.25, 16),
    (-0.20, 1.0, 0.60, 0.010, 0.4, 0.0, 16),
    (0.05, 4.0, 0.55, 0.001, 2.5, 0.5, 16),
    (0.00, 0.5, 0.40, 0.020, 0.9, 0.125, 16),
]


class Collector:
    """An in-process sink numbering records as the stream writer does."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def publish(self, record: dict) -> None:
        if record["telemetry_version"] == "1.1":
            record["log_stream_offset"] = len(self.records)
        self.records.append(record)


def recorder(**options) -> tuple[EpochRecorder, Collector]:
    collector = Collector()
    return EpochRecorder("unit-run", publish=collector.publish, **options), collector


def one_cycle(rec: EpochRecorder, epochs: int = 2, **cycle_options) -> None:
    options = dict(global_step=64, learning_rate=3e-4, episode_returns=[10.0, 20.0])
    options.update(cycle_options)
    rec.begin_cycle(REWARDS, ADVANTAGES, RETURNS, VALUES, **options)
    for _ in range(epochs):
        for minibatch in MINIBATCHES:
            rec.minibatch(*minibatch)
        rec.end_epoch()


def test_each_epoch_gives_a_valid_v1_1_record_whose_fields_are_section_1_of_the_spec():
    rec, collector = recorder()
    one_cycle(rec)
    rec.close()
    assert len(collector.records) == 2 == rec.records
    columns = np.array([m[:6] for m in MINIBATCHES]).T
    policy, value, entropy, kl, grad, clip = columns
    for epoch, record in enumerate(collector.records):
        assert validate_record(record).status == "valid"
        assert record["epoch"] == epoch and record["global_step"] == 64 and record["cycle_id"] == 1
        assert record["data_mode"] == "mixed" and record["rollout_ticks"] == 64 and record["num_samples"] == 64
        assert record["num_minibatches"] == 4 and record["learning_rate"] == 3e-4
        assert record["policy_loss"] == pytest.approx(policy.mean(), rel=1e-12)
        assert record["value_loss"] == pytest.approx(value.mean(), rel=1e-12)
        assert record["kl_divergence"] == pytest.approx(kl.mean(), rel=1e-12)
        assert record["kl_divergence_max"] == kl.max()
        assert record["grad_norm_max"] == grad.max()
        assert record["clip_fraction"] == pytest.approx((clip * 16).sum() / 64, rel=1e-12)
        assert record["batch_entropy_mean"] == pytest.approx(entropy.mean(), rel=1e-12)
        assert record["batch_entropy_std"] == pytest.approx(entropy.std(ddof=0), rel=1e-12)
        assert record["mean_episode_return"] == 15.0
        assert record["explained_variance"] == pytest.approx(explained_variance(RETURNS.ravel(), VALUES.ravel()), rel=1e-12)
        assert record["reward_advantage_corr"] == pytest.approx(pearson_or_none(REWARDS.ravel(), ADVANTAGES.ravel()), rel=1e-12)
        assert record["epoch_duration_sec"] >= 0.0 and record["timestamp_ms"] > 0


def test_the_dataset_is_copied_so_the_trainer_may_refill_its_buffers_at_once():
    rec, collector = recorder()
    rewards, advantages = REWARDS.copy(), ADVANTAGES.copy()
    rec.begin_cycle(rewards, advantages, RETURNS, VALUES, global_step=64, learning_rate=1e-3)
    rec.minibatch(*MINIBATCHES[0])
    rec.end_epoch()
    rewards[:] = 0.0  # the next rollout overwrites the buffer before the records are published
    advantages[:] = 1.0
    rec.close()
    assert collector.records[0]["reward_advantage_corr"] == pytest.approx(pearson_or_none(REWARDS.ravel(), ADVANTAGES.ravel()))


def test_cycles_are_counted_and_epochs_run_on_across_them():
    rec, collector = recorder()
    one_cycle(rec, epochs=3, global_step=64)
    one_cycle(rec, epochs=1, global_step=128)  # an early stop (target KL): fewer epochs, fewer records
    rec.close()
    assert [(r["epoch"], r["cycle_id"], r["global_step"]) for r in collector.records] == [
        (0, 1, 64), (1, 1, 64), (2, 1, 64), (3, 2, 128),
    ]


def test_replayed_data_has_cycle_id_and_rollout_ticks_zero():
    rec, collector = recorder(data_mode="replay")
    one_cycle(rec, epochs=1)
    rec.close()
    (record,) = collector.records
    assert (record["data_mode"], record["cycle_id"], record["rollout_ticks"]) == ("replay", 0, 0)
    assert validate_record(record).status == "valid"


def test_no_finished_episode_gives_a_null_mean_return_and_constant_rewards_a_null_correlation():
    rec, collector = recorder()
    rec.begin_cycle(np.ones(64), ADVANTAGES, RETURNS, VALUES, global_step=64, learning_rate=1e-3, episode_returns=[])
    rec.minibatch(*MINIBATCHES[0])
    rec.end_epoch()
    rec.close()
    (record,) = collector.records
    assert record["mean_episode_return"] is None and record["reward_advantage_corr"] is None
    assert validate_record(record).status == "valid"


def test_version_1_0_records_have_no_v1_1_fields():
    rec, collector = recorder(telemetry_version="1.0")
    one_cycle(rec, epochs=1)
    rec.close()
    (record,) = collector.records
    assert record["telemetry_version"] == "1.0" and "cycle_id" not in record and "log_stream_offset" not in record
    assert validate_record(record).status == "valid"


def test_numpy_scalars_and_zero_d_arrays_become_plain_floats():
    rec, collector = recorder()
    rec.begin_cycle(REWARDS, ADVANTAGES, RETURNS, VALUES, global_step=np.int64(64), learning_rate=np.float32(1e-3))
    rec.minibatch(np.float32(0.1), np.array(1.0), np.float64(0.5), np.float32(0.01), np.array(0.3, dtype=np.float32), np.float32(0.5), 16)
    rec.end_epoch()
    rec.close()
    (record,) = collector.records
    assert validate_record(record).status == "valid"
    assert all(type(record[name]) is float for name in ("policy_loss", "value_loss", "kl_divergence", "learning_rate"))


def test_a_publish_delay_of_zero_hands_each_epoch_over_as_it_ends():
    rec, collector = recorder(max_publish_delay=0.0)
    one_cycle(rec, epochs=1)
    assert len(collector.records) == 1
    one_cycle(rec, epochs=1)
    assert len(collector.records) == 2
    rec.close()
    assert [r["log_stream_offset"] for r in collector.records] == [0, 1]


def test_poll_hands_over_finished_epochs_once_the_delay_has_passed():
    # a trainer between epochs (collecting its next rollout) polls so that records are not held back
    rec, collector = recorder(max_publish_delay=3600.0)
    one_cycle(rec, epochs=2)
    rec.poll()
    assert collector.records == []
    rec.max_publish_delay = 0.0
    rec.poll()
    assert [r["epoch"] for r in collector.records] == [0, 1]


def test_nothing_is_handed_over_before_the_delay_and_close_publishes_everything():
    rec, collector = recorder(max_publish_delay=3600.0)
    one_cycle(rec, epochs=3)
    rec.poll()
    assert collector.records == []
    rec.close()
    assert len(collector.records) == 3
    rec.close()  # twice is harmless
    assert len(collector.records) == 3


def test_an_epoch_left_open_at_close_is_dropped_not_published_half_done():
    rec, collector = recorder()
    one_cycle(rec, epochs=1)
    rec.minibatch(*MINIBATCHES[0])
    rec.close()
    assert len(collector.records) == 1


@pytest.mark.parametrize(
    ("calls", "message"),
    [
        (lambda rec: rec.minibatch(*MINIBATCHES[0]), "no cycle begun"),
        (lambda rec: rec.end_epoch(), "no minibatch"),
        (lambda rec: (one_cycle(rec, epochs=0), rec.end_epoch()), "no minibatch"),
        (lambda rec: rec.begin_cycle([], [], [], [], global_step=0, learning_rate=1e-3), "empty"),
        (lambda rec: rec.begin_cycle(np.ones(4), np.ones(3), np.ones(4), np.ones(4), global_step=0, learning_rate=1e-3), "differ in length"),
        (lambda rec: rec.begin_cycle(np.ones(4), np.ones(4), np.ones(4), np.ones(4), global_step=0, learning_rate=0.0), "learning_rate"),
        (lambda rec: rec.begin_cycle(np.ones(4), np.ones(4), np.ones(4), np.ones(4), global_step=-1, learning_rate=1e-3), "global_step"),
        (lambda rec: rec.begin_cycle(np.ones(4), np.ones(4), np.ones(4), np.ones(4), global_step=0, learning_rate=1e-3, data_mode="replay", cycle_id=3), "replayed data"),
        (lambda rec: rec.begin_cycle(np.ones(4), np.ones(4), np.ones(4), np.ones(4), global_step=0, learning_rate=1e-3, rollout_ticks=0), "rollout_ticks >= 1"),
        (lambda rec: (one_cycle(rec, epochs=0), rec.minibatch(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)), "samples must be >= 1"),
        (lambda rec: (one_cycle(rec, epochs=0), rec.minibatch(*MINIBATCHES[0]), rec.end_cycle()), "still open"),
        (lambda rec: (rec.close(), one_cycle(rec)), "closed"),
    ],
)
def test_calls_out_of_order_or_values_no_record_can_hold_are_one_line_errors(calls, message):
    rec, collector = recorder()
    with pytest.raises(RecorderError, match=message) as caught:
        calls(rec)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"run_id": "has space"}, "run_id"),
        ({"run_id": "x" * 129}, "run_id"),
        ({"telemetry_version": "2.0"}, "telemetry_version"),
        ({"data_mode": "offline"}, "data_mode"),
    ],
)
def test_a_bad_run_id_version_or_mode_is_refused_at_construction(options, message):
    run_id = options.pop("run_id", "ok-run")
    with pytest.raises(RecorderError, match=message):
        EpochRecorder(run_id, publish=Collector().publish, **options)


def test_exactly_one_sink_is_needed():
    with pytest.raises(RecorderError, match="exactly one"):
        EpochRecorder("run")
    with pytest.raises(RecorderError, match="exactly one"):
        EpochRecorder("run", publish=print, publish_rows=print)


def test_a_nan_loss_reaches_the_sink_as_it_is():
    # a diverging run is shown, not hidden: the NDJSON sink refuses the record, a validator rejects it
    rec, collector = recorder()
    rec.begin_cycle(REWARDS, ADVANTAGES, RETURNS, VALUES, global_step=64, learning_rate=1e-3)
    rec.minibatch(math.nan, 1.0, 0.5, 0.01, 0.3, 0.0, 16)
    rec.end_epoch()
    rec.close()
    assert math.isnan(collector.records[0]["policy_loss"])
    assert validate_record(collector.records[0]).status == "invalid"


def test_an_epoch_reported_after_the_fact_keeps_its_own_duration_and_timestamp():
    rec, collector = recorder()
    rec.begin_cycle(REWARDS, ADVANTAGES, RETURNS, VALUES, global_step=64, learning_rate=1e-3)
    rec.minibatch(*MINIBATCHES[0])
    rec.end_epoch(duration_sec=0.25, timestamp_ms=1_700_000_000_123, learning_rate=5e-4, global_step=70)
    rec.close()
    (record,) = collector.records
    assert (record["epoch_duration_sec"], record["timestamp_ms"]) == (0.25, 1_700_000_000_123)
    assert (record["learning_rate"], record["global_step"]) == (5e-4, 70)


def test_a_hand_over_in_the_middle_of_an_epoch_leaves_its_minibatches_with_it():
    # poll may come between two minibatches (a trainer polling from a step callback): the finished
    # epoch goes, the open one keeps what it has and ends with all of its minibatches
    rec, collector = recorder(max_publish_delay=0.0)
    rec.begin_cycle(REWARDS, ADVANTAGES, RETURNS, VALUES, global_step=64, learning_rate=1e-3)
    rec.minibatch(*MINIBATCHES[0])
    rec.end_epoch()
    rec.minibatch(*MINIBATCHES[1])
    rec.poll()  # nothing new finished since end_epoch's hand-over
    rec.flush()
    assert [r["num_minibatches"] for r in collector.records] == [1]
    rec.minibatch(*MINIBATCHES[2])
    rec.end_epoch()
    rec.close()
    first, second = collector.records
    assert second["num_minibatches"] == 2
    assert second["policy_loss"] == pytest.approx((MINIBATCHES[1][0] + MINIBATCHES[2][0]) / 2, rel=1e-15)
    assert second["grad_norm_max"] == max(MINIBATCHES[1][4], MINIBATCHES[2][4])
    assert first["cycle_id"] == second["cycle_id"] == 1


def test_measured_timestamps_are_the_wall_clock_at_each_epochs_end():
    rec, collector = recorder(max_publish_delay=3600.0)
    before = time.time_ns() // 1_000_000
    one_cycle(rec, epochs=3)
    after = time.time_ns() // 1_000_000
    time.sleep(0.05)  # handed over later: the timestamps are still the epochs' own
    rec.close()
    stamps = [r["timestamp_ms"] for r in collector.records]
    assert before <= stamps[0] <= stamps[1] <= stamps[2] <= after + 1  # +1: clocks read apart by microseconds
    assert all(r["epoch_duration_sec"] >= 0.0 for r in collector.records)
