"""Drift of a run against a baseline run, aligned by epoch (SPEC §5): the pure core, no Kafka, no I/O.

For each field of `DRIFT_FIELDS` the relative drift at an epoch is
`(current - baseline) / abs(baseline)`. It is counted only when both values are non-null and
`abs(baseline) > ZERO_BASELINE_EPSILON`; a v1.0 record holds None for the v1.1 fields, so those are
simply not counted for it.

Skip reasons. A field that no compared epoch counted is skipped, with one reason decided over the
compared epochs (those the baseline and the current run both hold), checked in this order:
`missing_in_baseline` when no compared epoch has a non-null baseline value (this also covers a baseline
that never carries the field, and a run with no compared epoch at all); `missing_in_current` when no
compared epoch that has a baseline value also has a non-null current value; otherwise `zero_baseline`
(some epoch had both values, and every such baseline value was within the epsilon of zero). The same
order decides the reason of a single uncounted field at a single epoch (`EpochDrift.skipped_fields`).

Records are assumed valid and free of duplicate `log_stream_offset`s (see `consumers.validator`). A
re-sent epoch that slips through anyway replaces the earlier one, so it is never counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from avro_schemas.errors import TelemetryError
from avro_schemas.models import EpochSummary

__all__ = [
    "DRIFT_FIELDS",
    "ZERO_BASELINE_EPSILON",
    "SkipReason",
    "BaselineError",
    "Baseline",
    "EpochDrift",
    "FieldDrift",
    "RunDriftSummary",
    "DriftTracker",
]

DRIFT_FIELDS: tuple[str, ...] = (
    "policy_loss",
    "value_loss",
    "kl_divergence",
    "clip_fraction",
    "explained_variance",
    "learning_rate",
    "mean_episode_return",
    "epoch_duration_sec",
    "batch_entropy_mean",
    "batch_entropy_std",
    "grad_norm_max",
    "kl_divergence_max",
    "reward_advantage_corr",
    "rollout_ticks",
)

ZERO_BASELINE_EPSILON = 1e-12
"""A baseline value must exceed this in absolute value for a relative drift to mean anything."""

SkipReason = Literal["missing_in_baseline", "missing_in_current", "zero_baseline"]


class BaselineError(TelemetryError):
    """The baseline records do not pick out exactly one run (empty, several runs, or the named run absent)."""


@dataclass(frozen=True, slots=True)
class Baseline:
    """The baseline run's records by epoch; build it with `Baseline.from_records`."""

    run_id: str
    records: Mapping[int, EpochSummary]

    @classmethod
    def from_records(cls, records: Iterable[EpochSummary], run_id: str | None = None) -> Baseline:
        """Pick the baseline run out of `records`: the only run they hold, or `run_id` when given.

        A later record with the same epoch replaces the earlier one. Raises `BaselineError` when the
        records are empty, hold several runs and no `run_id` is given, or do not hold `run_id`.
        """
        by_run: dict[str, dict[int, EpochSummary]] = {}
        for record in records:
            by_run.setdefault(record.run_id, {})[record.epoch] = record
        if not by_run:
            raise BaselineError("baseline holds no records")
        if run_id is None:
            if len(by_run) > 1:
                raise BaselineError(
                    f"baseline holds {len(by_run)} runs ({', '.join(by_run)}); pick one with --baseline-run"
                )
            (run_id,) = by_run
        elif run_id not in by_run:
            raise BaselineError(f"baseline run {run_id!r} not found; the baseline holds {', '.join(by_run)}")
        return cls(run_id=run_id, records=MappingProxyType(by_run[run_id]))

    def at(self, epoch: int) -> EpochSummary | None:
        """The baseline record of `epoch`, or None when the baseline has no such epoch."""
        return self.records.get(epoch)

    def compare(self, record: EpochSummary) -> EpochDrift | None:
        """The drift of one current record against the baseline's same epoch (None when it has none)."""
        base = self.records.get(record.epoch)
        return None if base is None else _compare_epoch(record, base, self.run_id)


@dataclass(frozen=True, slots=True)
class EpochDrift:
    """One compared epoch of a current run: what the drift consumer publishes (SPEC §4, `ppo.telemetry.drift`).

    `drifts` holds the relative drift of each field counted at this epoch, `skipped_fields` the reason
    for each field that was not; together they cover `DRIFT_FIELDS`, both in its order.
    """

    run_id: str
    baseline_run_id: str
    epoch: int
    log_stream_offset: int | None
    drifts: dict[str, float]
    skipped_fields: dict[str, SkipReason]

    def to_json_dict(self) -> dict[str, Any]:
        """The epoch's drift as a JSON-ready dict."""
        return {
            "run_id": self.run_id,
            "baseline_run_id": self.baseline_run_id,
            "epoch": self.epoch,
            "log_stream_offset": self.log_stream_offset,
            "drifts": dict(self.drifts),
            "skipped_fields": dict(self.skipped_fields),
        }


@dataclass(frozen=True, slots=True)
class FieldDrift:
    """One field's drift over a run: how many epochs counted it, the signed mean and the largest magnitude."""

    compared: int
    mean_relative_drift: float
    max_abs_relative_drift: float


@dataclass(frozen=True, slots=True)
class RunDriftSummary:
    """A current run's drift against the baseline over all compared epochs (SPEC §7 `drift` output)."""

    run_id: str
    baseline_run_id: str
    epochs_compared: int
    fields: dict[str, FieldDrift]
    skipped_fields: dict[str, SkipReason]

    def to_json_dict(self) -> dict[str, Any]:
        """The summary as the JSON object of SPEC §7, keys in the spec's order."""
        return {
            "run_id": self.run_id,
            "baseline_run_id": self.baseline_run_id,
            "epochs_compared": self.epochs_compared,
            "fields": {
                name: {
                    "compared": drift.compared,
                    "mean_relative_drift": drift.mean_relative_drift,
                    "max_abs_relative_drift": drift.max_abs_relative_drift,
                }
                for name, drift in self.fields.items()
            },
            "skipped_fields": dict(self.skipped_fields),
        }


def _compare_epoch(current: EpochSummary, baseline: EpochSummary, baseline_run_id: str) -> EpochDrift:
    drifts: dict[str, float] = {}
    skipped: dict[str, SkipReason] = {}
    for name in DRIFT_FIELDS:
        base = getattr(baseline, name)
        cur = getattr(current, name)
        if base is None:
            skipped[name] = "missing_in_baseline"
        elif cur is None:
            skipped[name] = "missing_in_current"
        elif not abs(base) > ZERO_BASELINE_EPSILON:
            skipped[name] = "zero_baseline"
        else:
            # float() because rollout_ticks is an int and the output promises plain floats.
            drifts[name] = float((cur - base) / abs(base))
    return EpochDrift(
        run_id=current.run_id,
        baseline_run_id=baseline_run_id,
        epoch=current.epoch,
        log_stream_offset=current.log_stream_offset,
        drifts=drifts,
        skipped_fields=skipped,
    )


def _summarise(run_id: str, baseline_run_id: str, epochs: Iterable[EpochDrift]) -> RunDriftSummary:
    epochs = list(epochs)
    fields: dict[str, FieldDrift] = {}
    skipped: dict[str, SkipReason] = {}
    for name in DRIFT_FIELDS:
        values = [e.drifts[name] for e in epochs if name in e.drifts]
        if values:
            fields[name] = FieldDrift(
                compared=len(values),
                mean_relative_drift=math.fsum(values) / len(values),
                max_abs_relative_drift=max(abs(v) for v in values),
            )
            continue
        # Never counted, so every epoch skipped it; the per-epoch reasons carry all the run-level
        # decision needs: an epoch with a baseline value skipped it either for a null current value
        # (missing_in_current) or for a zero baseline with a current value (zero_baseline).
        reasons = {e.skipped_fields[name] for e in epochs}
        if reasons <= {"missing_in_baseline"}:
            skipped[name] = "missing_in_baseline"
        elif "zero_baseline" not in reasons:
            skipped[name] = "missing_in_current"
        else:
            skipped[name] = "zero_baseline"
    return RunDriftSummary(
        run_id=run_id,
        baseline_run_id=baseline_run_id,
        epochs_compared=len(epochs),
        fields=fields,
        skipped_fields=skipped,
    )


class DriftTracker:
    """Compares current-run records with a baseline as they arrive, and sums them up per run."""

    def __init__(self, baseline: Baseline) -> None:
        """Track drift against `baseline`; no run has been seen yet."""
        self._baseline = baseline
        # Per current run (first-seen order), the drift of each compared epoch; keyed by epoch so a
        # re-sent epoch replaces its earlier drift instead of being counted twice.
        self._runs: dict[str, dict[int, EpochDrift]] = {}

    @property
    def baseline(self) -> Baseline:
        """The baseline every run is compared with."""
        return self._baseline

    def observe(self, record: EpochSummary) -> EpochDrift | None:
        """Compare one current record with the baseline's same epoch; None when the baseline lacks it.

        The record's run is remembered either way, so it gets a summary even with no compared epoch.
        """
        epochs = self._runs.setdefault(record.run_id, {})
        drift = self._baseline.compare(record)
        if drift is None:
            return None
        epochs[record.epoch] = drift
        return drift

    def summary(self, run_id: str) -> RunDriftSummary:
        """The drift summary of one observed run; raises `KeyError` for a run never observed."""
        return _summarise(run_id, self._baseline.run_id, self._runs[run_id].values())

    def summaries(self) -> list[RunDriftSummary]:
        """One summary per observed run, in the order the runs were first seen."""
        return [self.summary(run_id) for run_id in self._runs]
