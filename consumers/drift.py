"""Drift v2 (SPEC §5): does a run behave differently from its baseline runs, beyond seed-to-seed noise?

The pure core, no Kafka, no I/O, no clock. docs/signals.md ("## Drift") explains how to read a verdict;
this docstring says how it is computed.

**Windows.** Runs are aligned by training progress: a record belongs to window `global_step // W`.
`W` (`DriftSettings.window_steps`, or by default the baseline's length / `DriftSettings.windows`
rounded up to whole collection cycles) is fixed by the baseline, so runs with other epoch counts per
cycle or other lengths still compare window by window. A window of the current run is *closed* when a
record of a later window arrives; verdict changes are decided on closed windows only, so they depend
on the records alone, never on timing.

**Levels and noise.** Per window and field the level is the mean of the window's non-null values.
Heavy-tailed positive fields (`FieldSpec.log`) are compared on a log scale: the level is the mean of
`log(value + offset)` (a geometric mean, so one seed's rare spike does not swamp a window). The
baseline's level is the mean of its runs' levels. The noise scale of a window:
- two or more baseline runs: the sample variance of the runs' levels, pooled over the neighbouring
  windows (`DriftSettings.pool_windows` either side: one window of two seeds has one degree of
  freedom) and never below the variance pooled over the whole run (`whole_run_weight`: seeds differ
  for long stretches, so neighbouring windows add little information), times `sqrt(1 + 1/k)` (a new
  run against the mean of k runs);
- one baseline run: the spread of the run's record values within the window (pooled the same way)
  stands in, times `DriftSettings.single_run_inflation`;
the first times `DriftSettings.inflation`, both never below the field's floor
(`FieldSpec.floor + FieldSpec.relative_floor * |level|`), so a constant baseline never divides by ~0.

**Effect and verdict.** The effect of a window is `(current level - baseline level) / noise`. A field
*differs* once its effect stays beyond `DriftSettings.threshold` with one sign for
`DriftSettings.consecutive` compared windows in a row; `first_step` is the first step of that streak's
first window and `direction` its sign. The verdict then stays `differs` (the run did differ from that
step on). `effect` is the largest effect in the verdict's direction (any direction for `same`);
`relative_change` is current / baseline - 1 over the differing windows (the streak and every later
window beyond the threshold in the same direction): of the mean levels, or for a log-scale field of
the geometric means; null for `same` and where the baseline's level there is within
`FieldSpec.zero_level` of zero.

**Skipped fields.** `missing_in_baseline`: no window the current run has holds a baseline value of the
field; `missing_in_current`: the baseline has values there but the current run never does;
`constant`: compared, and every baseline and current value is one and the same number (e.g.
`batch_entropy_std` with one minibatch). `epoch_duration_sec` is not compared at all: it measures the
machine's load, not the training.

State per current run is bounded: the open window's sums and, per field, a few numbers
(`RunDrift.to_state` / `RunDrift.from_state`), never the records.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from avro_schemas.errors import TelemetryError

log = math.log
_LOG_OF_NOTHING = math.log(1e-12)

__all__ = [
    "DRIFT_FIELDS",
    "FIELD_SPECS",
    "SkipReason",
    "Verdict",
    "BaselineError",
    "DriftStateError",
    "DriftSettings",
    "FieldSpec",
    "Baseline",
    "FieldVerdict",
    "RunDriftSummary",
    "VerdictChange",
    "RunDrift",
    "DriftTracker",
]

SkipReason = Literal["missing_in_baseline", "missing_in_current", "constant"]
Verdict = Literal["same", "differs", "skipped"]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """How one field is compared.

    `log`: a window's level is the mean of `log(value + offset)` (heavy-tailed positive fields: a
    seed's rare spikes would otherwise swamp the mean). `floor` and `relative_floor`: the least noise
    scale, on the compared scale, `floor + relative_floor * |baseline level|`. `zero_level`: a baseline
    level (geometric for a log-scale field) within this of zero makes `relative_change` null (a ratio to
    ~0 means nothing); for a linear field it is the floor: "within the field's floor" (SPEC §5).
    `lowest`: levels below it are compared as `lowest` (a number there no longer measures anything).
    `log_if_nonnegative`: on the log scale when no baseline value is negative (entropy: a discrete
    policy's is ≥ 0 and collapses toward 0 by factors, a continuous policy's differential entropy may be
    negative and is compared as is).
    """

    name: str
    log: bool = False
    offset: float = 0.0
    floor: float = 0.0
    relative_floor: float = 0.0
    zero_level: float = 0.0
    lowest: float | None = None
    log_if_nonnegative: bool = False


FIELD_SPECS: tuple[FieldSpec, ...] = (
    FieldSpec("policy_loss", floor=0.005, zero_level=0.005),
    FieldSpec("value_loss", log=True, offset=1e-6, floor=0.25, zero_level=1e-6),
    FieldSpec("kl_divergence", log=True, offset=1e-6, floor=0.25, zero_level=1e-6),
    # in [0, 1]; an unclipped update takes it to exactly 0: compared by factors, 1e-3 the resolution
    FieldSpec("clip_fraction", log=True, offset=1e-3, floor=0.25, zero_level=1e-3),
    # Below 0 the value function explains nothing, and once returns barely vary (a solved task) the
    # number swings to -1 and below between healthy seeds: compared clipped at 0.
    FieldSpec("explained_variance", floor=0.1, zero_level=0.1, lowest=0.0),
    # Identical between seeds: the floor alone decides (5 % on the log scale).
    FieldSpec("learning_rate", log=True, floor=0.05, zero_level=0.0),
    FieldSpec("mean_episode_return", floor=1.0, relative_floor=0.05, zero_level=1.0),
    FieldSpec("batch_entropy_mean", offset=1e-3, floor=0.02, relative_floor=0.02, zero_level=0.02,
              log_if_nonnegative=True),
    FieldSpec("batch_entropy_std", floor=0.005, zero_level=0.005),
    FieldSpec("grad_norm_max", log=True, offset=1e-6, floor=0.2, zero_level=1e-6),
    FieldSpec("kl_divergence_max", log=True, offset=1e-6, floor=0.25, zero_level=1e-6),
    FieldSpec("reward_advantage_corr", floor=0.05, zero_level=0.05),
    FieldSpec("rollout_ticks", log=True, offset=1.0, floor=0.05, zero_level=0.5),
)

DRIFT_FIELDS: tuple[str, ...] = tuple(spec.name for spec in FIELD_SPECS)
"""The compared fields, in record order; `epoch_duration_sec` is left out on purpose (machine load)."""


class BaselineError(TelemetryError):
    """The baseline holds no records, or a named baseline run is not in it."""


class DriftStateError(TelemetryError):
    """A saved per-run drift state that does not fit this baseline or is malformed."""


@dataclass(frozen=True, slots=True)
class DriftSettings:
    """The verdict's knobs; docs/signals.md says why these defaults (chosen on seeds 0-2 of the corpus)."""

    windows: int = 20
    """The baseline's length is cut into this many windows (unless `window_steps` is given)."""
    window_steps: int | None = None
    """Fixed window size in environment steps; None: baseline length / `windows`, in whole cycles."""
    threshold: float = 3.0
    """|effect| beyond which a window counts as different."""
    consecutive: int = 3
    """Compared windows in a row beyond the threshold (one sign) for `differs`."""
    inflation: float = 1.5
    """Noise scale multiplier: seeds differ in more ways than a few windows' spread shows."""
    pool_windows: int = 2
    """Windows either side whose spread is pooled into a window's noise scale."""
    whole_run_weight: float = 1.0
    """With two or more baseline runs, the weight of their spread pooled over every window as a lower
    bound of each window's noise scale."""
    within_weight: float = 0.0
    """With two or more baseline runs, the weight of the within-window record spread as a lower bound of
    the noise scale."""
    single_run_inflation: float = 3.0
    """With one baseline run, the multiplier of its within-window record spread, the noise scale then: a
    run's spread within a window understates how far another seed strays (on seeds 0-2, 7 of 24
    one-seed comparisons flagged something at 1.5, 2 at 3.0)."""

    def __post_init__(self) -> None:
        if self.windows < 1 or (self.window_steps is not None and self.window_steps < 1):
            raise ValueError("windows and window_steps must be ≥ 1")
        if self.consecutive < 1 or not self.threshold > 0 or not self.inflation > 0 or self.pool_windows < 0:
            raise ValueError("consecutive ≥ 1, threshold > 0, inflation > 0, pool_windows ≥ 0")


_SPEC_COUNT = len(FIELD_SPECS)


def _value(spec: FieldSpec, value: float) -> float:
    """A record's value on the compared scale (a window's level is their mean)."""
    if not spec.log:
        return value
    shifted = value + spec.offset
    return log(shifted) if shifted > 0 else _LOG_OF_NOTHING


def _level(spec: FieldSpec, mean: float) -> float:
    """A window's mean of compared values as compared (clipped at `lowest`)."""
    return mean if spec.lowest is None or mean > spec.lowest else spec.lowest


def _pooled(variances: Sequence[float | None], index: int, half_width: int) -> float | None:
    """Mean of the known variances within `half_width` windows of `index` (None when none is known)."""
    known = [v for v in variances[max(0, index - half_width): index + half_width + 1] if v is not None]
    return math.fsum(known) / len(known) if known else None


# ------------------------------------------------------------------------------------------ baseline


@dataclass(frozen=True, slots=True)
class Baseline:
    """The baseline runs reduced to what a comparison needs, per window and field (build with `from_records`).

    `level[i][w]` (the compared level), `raw_level[i][w]` (the same before `FieldSpec.lowest` clips it,
    for `relative_change`) and `noise[i][w]` are None where no baseline run holds field `i` in window
    `w`. `specs` are `FIELD_SPECS` as this baseline compares them (`log_if_nonnegative` decided).
    `constant[i]` is the one value field `i` ever takes in the baseline, or None.
    """

    run_ids: tuple[str, ...]
    settings: DriftSettings
    specs: tuple[FieldSpec, ...]
    window_steps: int
    level: tuple[tuple[float | None, ...], ...]
    raw_level: tuple[tuple[float | None, ...], ...]
    noise: tuple[tuple[float | None, ...], ...]
    has_window: tuple[bool, ...]
    constant: tuple[float | None, ...]

    @property
    def run_id(self) -> str:
        """The baseline's run ids joined by ',' (DriftRecord v1.0's `baseline_run_id`)."""
        return ",".join(self.run_ids)

    @classmethod
    def from_records(
        cls,
        records: Iterable[Mapping[str, Any]],
        run_ids: Sequence[str] | str | None = None,
        settings: DriftSettings | None = None,
    ) -> Baseline:
        """The baseline of the runs in `records` (record dicts or `EpochSummary` models), grouped by run_id.

        `run_ids` picks runs out of them (every run when None). A re-sent record (same run and
        `log_stream_offset`) counts once. Raises `BaselineError` when no records are left or a named
        run is absent.
        """
        settings = settings or DriftSettings()
        by_run = _group_by_run(records)
        if isinstance(run_ids, str):
            run_ids = [run_ids]
        if run_ids:
            missing = [r for r in run_ids if r not in by_run]
            if missing:
                held = ", ".join(by_run) or "no runs"
                raise BaselineError(f"baseline run {missing[0]!r} not found; the baseline holds {held}")
            by_run = {r: by_run[r] for r in dict.fromkeys(run_ids)}
        if not by_run:
            raise BaselineError("baseline holds no records")
        return _build_baseline(by_run, settings)

    @property
    def window_count(self) -> int:
        """Windows from step 0 to the baseline's last step."""
        return len(self.has_window)

    def describe(self) -> dict[str, Any]:
        """What identifies this baseline in a saved run state (a state saved against another is refused)."""
        return {"run_ids": list(self.run_ids), "window_steps": self.window_steps}


def _as_dict(record: Mapping[str, Any] | Any) -> Mapping[str, Any]:
    return record if isinstance(record, Mapping) else record.to_dict()


def _group_by_run(records: Iterable[Mapping[str, Any] | Any]) -> dict[str, list[Mapping[str, Any]]]:
    by_run: dict[str, dict[Any, Mapping[str, Any]]] = {}
    for record in records:
        record = _as_dict(record)
        run = by_run.setdefault(record["run_id"], {})
        offset = record.get("log_stream_offset")
        # v1.0 records have no offset: keyed by epoch, so a re-sent one still replaces its first copy
        run[("offset", offset) if offset is not None else ("epoch", record["epoch"])] = record
    return {run_id: list(run.values()) for run_id, run in by_run.items()}


def _window_steps(by_run: Mapping[str, list[Mapping[str, Any]]], settings: DriftSettings) -> int:
    if settings.window_steps is not None:
        return settings.window_steps
    last = max(r["global_step"] for records in by_run.values() for r in records)
    # at least one collection cycle (the step jump between distinct global_steps), or windows go empty
    cycle = 1
    for records in by_run.values():
        steps = sorted({r["global_step"] for r in records})
        cycle = max([cycle, *(b - a for a, b in zip(steps, steps[1:]))])
    # whole cycles per window, so each window holds the same share of every cycle's epochs
    return cycle * max(1, math.ceil(last / settings.windows / cycle))


def _build_baseline(by_run: dict[str, list[Mapping[str, Any]]], settings: DriftSettings) -> Baseline:
    width = _window_steps(by_run, settings)
    count = max(r["global_step"] for records in by_run.values() for r in records) // width + 1
    names = DRIFT_FIELDS
    # per run, field, window: raw values
    values: list[list[list[list[float]]]] = []
    constant: list[set[float]] = [set() for _ in names]
    for records in by_run.values():
        run = [[[] for _ in range(count)] for _ in names]
        for record in records:
            window = record["global_step"] // width
            for i, name in enumerate(names):
                value = record.get(name)
                if value is not None:
                    run[i][window].append(float(value))
                    constant[i].add(float(value))
        values.append(run)
    k = len(values)
    specs = tuple(_effective(spec, values, i) for i, spec in enumerate(FIELD_SPECS))
    level, raw_level, noise = [], [], []
    for i, spec in enumerate(specs):
        field_level, field_raw, between, within = _field_levels(spec, [run[i] for run in values])
        level.append(tuple(field_level))
        raw_level.append(tuple(field_raw))
        noise.append(tuple(_field_noise(spec, settings, k, field_level, between, within)))
    has_window = tuple(any(any(run[i][w] for i in range(len(names))) for run in values) for w in range(count))
    return Baseline(
        run_ids=tuple(by_run),
        settings=settings,
        specs=specs,
        window_steps=width,
        level=tuple(level),
        raw_level=tuple(raw_level),
        noise=tuple(noise),
        has_window=has_window,
        constant=tuple(next(iter(seen)) if len(seen) == 1 else None for seen in constant),
    )


def _field_levels(spec: FieldSpec, runs: list[list[list[float]]]) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """Per window of one field: the baseline's level, its unclipped level, the variance between the runs'
    levels and the record-to-record variance within the window (each None where unknown)."""
    level: list[float | None] = []
    raw: list[float | None] = []
    between: list[float | None] = []
    within: list[float | None] = []
    for window in range(len(runs[0])):
        means = [math.fsum(_value(spec, x) for x in run[window]) / len(run[window]) for run in runs if run[window]]
        if not means:
            level.append(None)
            raw.append(None)
            between.append(None)
            within.append(None)
            continue
        compared = [_level(spec, mean) for mean in means]
        level.append(math.fsum(compared) / len(compared))
        raw.append(math.fsum(means) / len(means))
        between.append(_variance(compared))
        within.append(_within_variance(spec, [run[window] for run in runs]))
    return level, raw, between, within


def _field_noise(
    spec: FieldSpec,
    settings: DriftSettings,
    k: int,
    level: list[float | None],
    between: list[float | None],
    within: list[float | None],
) -> list[float | None]:
    """Per window of one field, the noise scale an effect is measured in (see the module docstring)."""
    between_scale = settings.inflation * math.sqrt(1 + 1 / k)
    # one run: its within-window spread stands in for the seed-to-seed spread
    within_scale = settings.single_run_inflation if k == 1 else settings.within_weight
    known = [v for v in between if v is not None]
    whole_run = math.sqrt(math.fsum(known) / len(known)) if known and k >= 2 else 0.0
    noise: list[float | None] = []
    for window, window_level in enumerate(level):
        if window_level is None:
            noise.append(None)
            continue
        # the spread pooled over the whole run bounds a window's from below: two seeds that happen to
        # agree for a few windows say little about how far a third may stray
        scales = [spec.floor + spec.relative_floor * abs(window_level), 1e-12,
                  settings.whole_run_weight * between_scale * whole_run]
        pooled_between = _pooled(between, window, settings.pool_windows)
        if pooled_between is not None and k >= 2:
            scales.append(between_scale * math.sqrt(pooled_between))
        pooled_within = _pooled(within, window, settings.pool_windows)
        if pooled_within is not None and within_scale > 0:
            scales.append(within_scale * math.sqrt(pooled_within))
        noise.append(max(scales))
    return noise


def _effective(spec: FieldSpec, values: list[list[list[list[float]]]], i: int) -> FieldSpec:
    """The spec as this baseline compares the field (`log_if_nonnegative` decided on its values)."""
    if not spec.log_if_nonnegative:
        return spec
    nonnegative = all(x >= 0 for run in values for window in run[i] for x in window)
    return replace(spec, log=nonnegative, log_if_nonnegative=False)


def _variance(points: Sequence[float]) -> float | None:
    """The sample variance (None for fewer than two points)."""
    if len(points) < 2:
        return None
    mean = math.fsum(points) / len(points)
    return math.fsum((p - mean) ** 2 for p in points) / (len(points) - 1)


def _within_variance(spec: FieldSpec, runs: Sequence[Sequence[float]]) -> float | None:
    """The record-to-record variance of a window on the compared scale, pooled over the baseline runs."""
    variances = [v for v in (_variance([_value(spec, x) for x in values]) for values in runs) if v is not None]
    return math.fsum(variances) / len(variances) if variances else None


# ------------------------------------------------------------------------------------------ verdicts


@dataclass(frozen=True, slots=True)
class FieldVerdict:
    """One field's verdict over a run (SPEC §5): `first_step` and `relative_change` only for `differs`."""

    verdict: Verdict
    first_step: int | None = None
    direction: Literal["higher", "lower"] | None = None
    effect: float | None = None
    relative_change: float | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The SPEC §7 per-field object, keys in the spec's order."""
        return {
            "verdict": self.verdict,
            "first_step": self.first_step,
            "direction": self.direction,
            "effect": self.effect,
            "relative_change": self.relative_change,
        }


@dataclass(frozen=True, slots=True)
class RunDriftSummary:
    """A current run against the baseline so far: every field's verdict (SPEC §7 `drift` output).

    `fields` holds every field of `DRIFT_FIELDS`, skipped ones with verdict `skipped`;
    `skipped_fields` holds the reason of each skipped one. `epoch`, `global_step` and
    `log_stream_offset` are those of the last record the summary covers.
    """

    run_id: str
    baseline_run_ids: tuple[str, ...]
    windows_compared: int
    fields: dict[str, FieldVerdict]
    skipped_fields: dict[str, SkipReason]
    epoch: int | None = None
    global_step: int | None = None
    log_stream_offset: int | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON object of SPEC §7, keys in the spec's order."""
        return {
            "run_id": self.run_id,
            "baseline_run_ids": list(self.baseline_run_ids),
            "windows_compared": self.windows_compared,
            "fields": {name: verdict.to_json_dict() for name, verdict in self.fields.items()},
            "skipped_fields": dict(self.skipped_fields),
        }

    def to_record_dict(self, kind: Literal["verdict_change", "summary"], changed: Sequence[str] = ()) -> dict[str, Any]:
        """The `ppo.telemetry.DriftRecord` v1.1 of this summary (see avro_schemas/drift_record_v1.1.avsc)."""
        return {
            "run_id": self.run_id,
            "baseline_run_id": ",".join(self.baseline_run_ids),
            "epoch": self.epoch if self.epoch is not None else -1,
            "log_stream_offset": self.log_stream_offset,
            "drifts": {name: v.effect for name, v in self.fields.items() if v.effect is not None},
            "skipped_fields": dict(self.skipped_fields),
            "kind": kind,
            "baseline_run_ids": list(self.baseline_run_ids),
            "global_step": self.global_step,
            "windows_compared": self.windows_compared,
            "fields": {name: verdict.to_json_dict() for name, verdict in self.fields.items()},
            "changed_fields": list(changed),
        }


@dataclass(frozen=True, slots=True)
class VerdictChange:
    """Some fields' verdicts changed when a window closed: the run's verdicts over its closed windows."""

    summary: RunDriftSummary
    changed_fields: tuple[str, ...]

    def to_record_dict(self) -> dict[str, Any]:
        """The DriftRecord (kind `verdict_change`) of this change."""
        return self.summary.to_record_dict("verdict_change", self.changed_fields)


class _FieldState:
    """One field's progress over the closed windows of a run (a handful of numbers, see `RunDrift`)."""

    __slots__ = (
        "compared", "base_seen", "max_up", "max_down", "streak_sign", "streak_length", "streak_start",
        "streak_current", "streak_base", "direction", "first_step", "diff_current", "diff_base", "diff_windows",
        "varied",
    )

    def __init__(self) -> None:
        self.compared = 0  # windows where the baseline and the run both hold the field
        self.base_seen = False  # some window the run has holds a baseline value of the field
        self.max_up = 0.0
        self.max_down = 0.0
        self.streak_sign = 0
        self.streak_length = 0
        self.streak_start = 0
        self.streak_current = 0.0
        self.streak_base = 0.0
        self.direction = 0  # +1 / -1 once the field differs
        self.first_step = 0
        self.diff_current = 0.0  # raw levels summed over the differing windows
        self.diff_base = 0.0
        self.diff_windows = 0
        self.varied = False  # some current value differs from the baseline's constant

    def copy(self) -> _FieldState:
        clone = _FieldState()
        for name in self.__slots__:
            setattr(clone, name, getattr(self, name))
        return clone

    def to_list(self) -> list[Any]:
        return [getattr(self, name) for name in self.__slots__]

    @classmethod
    def from_list(cls, values: Sequence[Any]) -> _FieldState:
        if len(values) != len(cls.__slots__):
            raise DriftStateError(f"a field state has {len(values)} entries, not {len(cls.__slots__)}")
        state = cls()
        for name, value in zip(cls.__slots__, values):
            if type(getattr(state, name)) is bool:
                value = bool(value)
            elif isinstance(getattr(state, name), int):
                value = int(value)
            else:
                value = float(value)
            setattr(state, name, value)
        return state


class RunDrift:
    """One current run against the baseline, record by record (bounded state; see the module docstring)."""

    __slots__ = (
        "run_id", "baseline", "open_window", "sums", "counts", "fields", "windows_compared",
        "epoch", "global_step", "log_stream_offset", "verdicts", "late_records", "closed_summary",
        "_constant_checks", "_width", "_linear", "_logged",
    )

    def __init__(self, run_id: str, baseline: Baseline) -> None:
        """A run with no record yet."""
        self.run_id = run_id
        self.baseline = baseline
        self.open_window = -1  # the window the latest records fall in; -1 before the first
        self.sums = [0.0] * _SPEC_COUNT
        self.counts = [0] * _SPEC_COUNT
        self.fields = [_FieldState() for _ in FIELD_SPECS]
        self.windows_compared = 0
        self.epoch: int | None = None
        self.global_step: int | None = None
        self.log_stream_offset: int | None = None
        self.verdicts: list[str] = [""] * _SPEC_COUNT  # as of the closed windows; "" before the first
        self.late_records = 0  # records of an already closed window (out of step order): not counted
        self.closed_summary: RunDriftSummary | None = None  # made by the last close that changed verdicts
        self._constant_checks = tuple((i, c) for i, c in enumerate(baseline.constant) if c is not None)
        self._width = baseline.window_steps
        self._linear = tuple((i, s.name, s.offset) for i, s in enumerate(baseline.specs) if not s.log)
        self._logged = tuple((i, s.name, s.offset) for i, s in enumerate(baseline.specs) if s.log)

    # ------------------------------------------------------------------------------ records

    def observe(self, record: Mapping[str, Any]) -> list[str] | None:
        """Count one record; when it closes a window that changes verdicts, the changed fields (else None)."""
        window = record["global_step"] // self._width
        changed = None
        if window != self.open_window:
            if window < self.open_window:
                self.late_records += 1
                return None
            if self.open_window >= 0:
                changed = self._close()
            self.open_window = window
        sums, counts = self.sums, self.counts
        get = record.get
        for i, name, offset in self._linear:
            value = get(name)
            if value is not None:
                sums[i] += value
                counts[i] += 1
        for i, name, offset in self._logged:
            value = get(name)
            if value is not None:
                shifted = value + offset
                # a log-scale field can go below 0 only where the baseline never did (an entropy
                # log-compared because the baseline's was ≥ 0): as low as the scale goes
                sums[i] += log(shifted) if shifted > 0 else _LOG_OF_NOTHING
                counts[i] += 1
        for i, value in self._constant_checks:
            current = get(DRIFT_FIELDS[i])
            if current is not None and current != value:
                self.fields[i].varied = True
        self.epoch = record["epoch"]
        self.global_step = record["global_step"]
        self.log_stream_offset = get("log_stream_offset")
        return changed

    def _close(self) -> list[str] | None:
        """Fold the open window into the field states; the fields whose verdict changed, or None."""
        _fold_window(self.baseline, self.open_window, self.sums, self.counts, self.fields, self)
        self.sums = [0.0] * _SPEC_COUNT
        self.counts = [0] * _SPEC_COUNT
        if self.open_window >= self.baseline.window_count or not self.baseline.has_window[self.open_window]:
            return None
        verdicts = [v.verdict for v in _verdicts(self.baseline, self.fields).values()]
        changed = [name for name, old, new in zip(DRIFT_FIELDS, self.verdicts, verdicts) if old != new]
        self.verdicts = verdicts
        if not changed:
            return None
        # before the closing record is counted: the summary ends at the closed window's last record
        self.closed_summary = self.summary(include_open=False)
        return changed

    # ------------------------------------------------------------------------------ summaries

    def summary(self, include_open: bool = True) -> RunDriftSummary:
        """The run's verdicts so far; `include_open`: the open window too (as if the run ended here)."""
        fields = self.fields
        windows = self.windows_compared
        if include_open and self.open_window >= 0:
            fields = [state.copy() for state in fields]
            counter = _Counter(windows)
            _fold_window(self.baseline, self.open_window, self.sums, self.counts, fields, counter)
            windows = counter.windows_compared
        verdicts = _verdicts(self.baseline, fields)
        return RunDriftSummary(
            run_id=self.run_id,
            baseline_run_ids=self.baseline.run_ids,
            windows_compared=windows,
            fields=verdicts,
            skipped_fields={name: _SKIPPED[v] for name, v in _reasons(fields, verdicts).items()},
            epoch=self.epoch,
            global_step=self.global_step,
            log_stream_offset=self.log_stream_offset,
        )

    # ------------------------------------------------------------------------------ state

    def to_state(self) -> dict[str, Any]:
        """A JSON-able snapshot of everything `observe` depends on."""
        return {
            "baseline": self.baseline.describe(),
            "open_window": self.open_window,
            "sums": list(self.sums),
            "counts": list(self.counts),
            "fields": [state.to_list() for state in self.fields],
            "windows_compared": self.windows_compared,
            "last": [self.epoch, self.global_step, self.log_stream_offset],
            "verdicts": list(self.verdicts),
            "late_records": self.late_records,
        }

    @classmethod
    def from_state(cls, run_id: str, baseline: Baseline, state: Mapping[str, Any]) -> RunDrift:
        """The run as `to_state` saved it; `DriftStateError` when it is malformed or of another baseline."""
        try:
            if state["baseline"] != baseline.describe():
                raise DriftStateError(f"saved against baseline {state['baseline']}, not {baseline.describe()}")
            run = cls(run_id, baseline)
            run.open_window = int(state["open_window"])
            run.sums = [float(v) for v in state["sums"]]
            run.counts = [int(v) for v in state["counts"]]
            run.fields = [_FieldState.from_list(values) for values in state["fields"]]
            run.windows_compared = int(state["windows_compared"])
            run.epoch, run.global_step, run.log_stream_offset = state["last"]
            run.verdicts = [str(v) for v in state["verdicts"]]
            run.late_records = int(state["late_records"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DriftStateError(f"malformed drift state of run {run_id}: {exc!r}") from None
        if not (len(run.sums) == len(run.counts) == len(run.fields) == len(run.verdicts) == _SPEC_COUNT):
            raise DriftStateError(f"drift state of run {run_id} is for {len(run.sums)} fields, not {_SPEC_COUNT}")
        return run


class _Counter:
    """Stands in for a `RunDrift` when a summary folds the open window into copies."""

    __slots__ = ("windows_compared",)

    def __init__(self, windows_compared: int) -> None:
        self.windows_compared = windows_compared


_SKIPPED: dict[str, SkipReason] = {
    "missing_in_baseline": "missing_in_baseline", "missing_in_current": "missing_in_current", "constant": "constant",
}


def _fold_window(
    baseline: Baseline, window: int, sums: list[float], counts: list[int], fields: list[_FieldState], counter: Any
) -> None:
    """Compare one finished window of the current run with the baseline and update each field's state."""
    if window >= baseline.window_count or not baseline.has_window[window] or not any(counts):
        return
    counter.windows_compared += 1
    settings = baseline.settings
    threshold, needed = settings.threshold, settings.consecutive
    start_step = window * baseline.window_steps
    for i, spec in enumerate(baseline.specs):
        base_level = baseline.level[i][window]
        if base_level is None:
            continue
        state = fields[i]
        state.base_seen = True
        if not counts[i]:
            continue
        raw = sums[i] / counts[i]
        effect = (_level(spec, raw) - base_level) / baseline.noise[i][window]
        base_raw = baseline.raw_level[i][window]
        state.compared += 1
        if effect > state.max_up:
            state.max_up = effect
        elif effect < state.max_down:
            state.max_down = effect
        beyond = 1 if effect > threshold else -1 if effect < -threshold else 0
        if state.direction:
            if beyond == state.direction:
                state.diff_current += raw
                state.diff_base += base_raw
                state.diff_windows += 1
            continue
        if beyond and beyond == state.streak_sign:
            state.streak_length += 1
            state.streak_current += raw
            state.streak_base += base_raw
        elif beyond:
            state.streak_sign, state.streak_length, state.streak_start = beyond, 1, start_step
            state.streak_current, state.streak_base = raw, base_raw
        else:
            state.streak_sign = state.streak_length = 0
        if state.streak_length >= needed:
            state.direction, state.first_step = state.streak_sign, state.streak_start
            state.diff_current, state.diff_base = state.streak_current, state.streak_base
            state.diff_windows = state.streak_length


def _reasons(fields: list[_FieldState], verdicts: dict[str, FieldVerdict]) -> dict[str, str]:
    """The skip reason of every skipped field."""
    out = {}
    for spec, state in zip(FIELD_SPECS, fields):
        if verdicts[spec.name].verdict == "skipped":
            out[spec.name] = _reason(state)
    return out


def _reason(state: _FieldState) -> str:
    if not state.base_seen:
        return "missing_in_baseline"
    if not state.compared:
        return "missing_in_current"
    return "constant"


def _verdicts(baseline: Baseline, fields: list[_FieldState]) -> dict[str, FieldVerdict]:
    """Each field's verdict from its state (closed windows only, or copies with the open window folded in)."""
    out: dict[str, FieldVerdict] = {}
    for spec, state, constant in zip(baseline.specs, fields, baseline.constant):
        if not state.compared or (constant is not None and not state.varied):
            out[spec.name] = FieldVerdict("skipped")
        elif state.direction:
            up = state.direction > 0
            relative = _relative_change(spec, state)
            out[spec.name] = FieldVerdict(
                "differs",
                first_step=state.first_step,
                direction="higher" if up else "lower",
                effect=state.max_up if up else state.max_down,
                relative_change=relative,
            )
        else:
            effect = state.max_up if state.max_up >= -state.max_down else state.max_down
            out[spec.name] = FieldVerdict("same", effect=effect)
    return out


def _relative_change(spec: FieldSpec, state: _FieldState) -> float | None:
    """current / baseline - 1 over the differing windows: of the mean levels, or for a log-scale field of
    the geometric means (exp of the mean log difference); None where the baseline level is within
    `zero_level` of zero."""
    windows = state.diff_windows
    if not windows:
        return None
    if spec.log:
        if math.exp(state.diff_base / windows) - spec.offset <= spec.zero_level:
            return None
        return math.expm1((state.diff_current - state.diff_base) / windows)
    if abs(state.diff_base) <= spec.zero_level * windows:
        return None
    return state.diff_current / state.diff_base - 1.0


# ------------------------------------------------------------------------------------------ tracker


@dataclass
class DriftTracker:
    """Every current run against one baseline; the baseline's own runs are not compared with themselves."""

    baseline: Baseline
    runs: dict[str, RunDrift] = field(default_factory=dict)

    def observe(self, record: Mapping[str, Any]) -> VerdictChange | None:
        """Count one valid, non-duplicate record (a dict); a `VerdictChange` when it closed a window that
        changed some field's verdict, else None."""
        run_id = record["run_id"]
        if run_id in self.baseline.run_ids:
            return None
        run = self.runs.get(run_id)
        if run is None:
            run = self.runs[run_id] = RunDrift(run_id, self.baseline)
        changed = run.observe(record)
        if changed is None:
            return None
        return VerdictChange(run.closed_summary, tuple(changed))

    def summary(self, run_id: str) -> RunDriftSummary:
        """The run's verdicts over every record so far; `KeyError` for a run never observed."""
        return self.runs[run_id].summary()

    def summaries(self) -> list[RunDriftSummary]:
        """One summary per observed run, in the order the runs were first seen."""
        return [run.summary() for run in self.runs.values()]

    def run_state(self, run_id: str) -> dict[str, Any] | None:
        """The run's JSON-able state (None for a run never observed)."""
        run = self.runs.get(run_id)
        return None if run is None else run.to_state()

    def restore_run(self, run_id: str, state: Mapping[str, Any] | None) -> None:
        """Take back a `run_state` (None: nothing saved, the run starts afresh)."""
        if state is None:
            self.runs.pop(run_id, None)
            return
        if not isinstance(state, Mapping):
            raise DriftStateError(f"drift state of run {run_id} is not an object")
        self.runs[run_id] = RunDrift.from_state(run_id, self.baseline, state)

    def forget_run(self, run_id: str) -> None:
        """Drop a run (its partition went to another instance)."""
        self.runs.pop(run_id, None)
