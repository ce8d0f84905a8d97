"""Shared fixtures of the consumer core tests: a factory of valid `EpochSummary` records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from avro_schemas.models import DataMode, EpochSummary


def epoch_summary(run_id: str = "run", epoch: int = 0, version: str = "1.1", **overrides: Any) -> EpochSummary:
    """A valid record of `version`; every metric non-null and non-zero, and no default alert rule tripped.

    v1.1 fields stay None in a v1.0 record; `log_stream_offset` defaults to the epoch.
    """
    values: dict[str, Any] = dict(
        telemetry_version=version,
        run_id=run_id,
        epoch=epoch,
        global_step=100 * (epoch + 1),
        timestamp_ms=1_700_000_000_000 + epoch,
        policy_loss=0.1,
        value_loss=0.5,
        kl_divergence=0.01,
        clip_fraction=0.1,
        explained_variance=0.5,
        learning_rate=3e-4,
        mean_episode_return=10.0,
        num_samples=64,
        num_minibatches=4,
    )
    if version == "1.1":
        values.update(
            epoch_duration_sec=1.0,
            data_mode=DataMode.ROLLOUT,
            cycle_id=1,
            batch_entropy_mean=1.0,
            batch_entropy_std=0.1,
            grad_norm_max=1.0,
            kl_divergence_max=0.02,
            reward_advantage_corr=0.5,
            rollout_ticks=64,
            log_stream_offset=epoch,
        )
    values.update(overrides)
    return EpochSummary(**values)


@pytest.fixture
def make_record() -> Callable[..., EpochSummary]:
    """The record factory: `make_record(run_id="run", epoch=0, version="1.1", **field_overrides)`."""
    return epoch_summary
