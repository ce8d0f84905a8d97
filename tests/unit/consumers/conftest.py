"""Shared fixtures of the consumer core tests: a factory of valid `EpochSummary` records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from avro_schemas.fields import example_record
from avro_schemas.models import DataMode, EpochSummary


def epoch_summary(run_id: str = "run", epoch: int = 0, version: str = "1.1", **overrides: Any) -> EpochSummary:
    """A valid record of `version`: the field table's example values (every metric non-null and non-zero,
    and no default alert rule tripped), at epoch `epoch` of run `run_id`.

    v1.1 fields stay None in a v1.0 record; `global_step` is 100 per epoch, `log_stream_offset` the epoch.
    """
    values: dict[str, Any] = example_record(version)
    values.update(run_id=run_id, epoch=epoch, global_step=100 * (epoch + 1), timestamp_ms=1_700_000_000_000 + epoch)
    if version == "1.1":
        values.update(log_stream_offset=epoch)
    values.update(overrides)
    if isinstance(values.get("data_mode"), str):
        values["data_mode"] = DataMode(values["data_mode"])
    return EpochSummary(**values)


@pytest.fixture
def make_record() -> Callable[..., EpochSummary]:
    """The record factory: `make_record(run_id="run", epoch=0, version="1.1", **field_overrides)`."""
    return epoch_summary
