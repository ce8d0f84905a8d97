"""An epoch's record, from the compact row the training loop captures.

The training loop keeps, per epoch, a flat tuple of plain numbers (`EpochRow`); `build_record` turns one
into the `EpochSummary` dict of SPEC §1. Rows are what crosses to the publisher process (pickled in
batches): a tuple of numbers costs a fraction of a dict to build and to pickle.
"""

from __future__ import annotations

from typing import Any

from avro_schemas.models import V1_1_ADDED_FIELDS, VERSION_FIELDS

__all__ = ["DATA_MODE_NAMES", "ROW_FIELDS", "build_record"]

DATA_MODE_NAMES = ("mixed", "rollout", "replay")

# The row's layout: the record's fields in schema order, less telemetry_version, run_id and
# log_stream_offset, with data_mode as an index into DATA_MODE_NAMES.
ROW_FIELDS = tuple(
    name for name in VERSION_FIELDS["1.1"] if name not in ("telemetry_version", "run_id", "log_stream_offset")
)


def build_record(row: tuple, run_id: str, v1_1: bool) -> dict[str, Any]:
    """The record of one epoch row: v1.1 (with `log_stream_offset` None, for the writer) or v1.0."""
    (epoch, global_step, timestamp_ms, policy_loss, value_loss, kl_divergence, clip_fraction,
     explained_variance, learning_rate, mean_episode_return, num_samples, num_minibatches,
     epoch_duration_sec, data_mode, cycle_id, batch_entropy_mean, batch_entropy_std, grad_norm_max,
     kl_divergence_max, reward_advantage_corr, rollout_ticks) = row
    record: dict[str, Any] = {
        "telemetry_version": "1.1",
        "run_id": run_id,
        "epoch": epoch,
        "global_step": global_step,
        "timestamp_ms": timestamp_ms,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "kl_divergence": kl_divergence,
        "clip_fraction": clip_fraction,
        "explained_variance": explained_variance,
        "learning_rate": learning_rate,
        "mean_episode_return": mean_episode_return,
        "num_samples": num_samples,
        "num_minibatches": num_minibatches,
        "epoch_duration_sec": epoch_duration_sec,
        "data_mode": DATA_MODE_NAMES[data_mode],
        "cycle_id": cycle_id,
        "batch_entropy_mean": batch_entropy_mean,
        "batch_entropy_std": batch_entropy_std,
        "grad_norm_max": grad_norm_max,
        "kl_divergence_max": kl_divergence_max,
        "reward_advantage_corr": reward_advantage_corr,
        "rollout_ticks": rollout_ticks,
        "log_stream_offset": None,  # the stream writer numbers records
    }
    if not v1_1:
        record["telemetry_version"] = "1.0"
        for name in V1_1_ADDED_FIELDS:
            del record[name]
    return record
