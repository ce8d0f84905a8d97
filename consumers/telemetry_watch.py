"""Alert rules over a run's epochs (SPEC §6, alerts v2): the pure core, no Kafka; the only I/O is reading the rules file.

Each rule is a two-state machine per run (`firing`, `resolved`) with hysteresis:

- a rule is *evaluated* on a record when the record carries the values it reads (null values and, for
  rules reading v1.1 fields, v1.0 records leave its state exactly as it is). Per-epoch rules are
  evaluated on every record; per-cycle rules (their values are computed once per rollout and repeat on
  every epoch of the cycle) on the first record of each cycle, a cycle being the records of one
  `global_step` (it advances once per rollout);
- it fires when its condition held on `hold` consecutive evaluations, never in the run's first `warmup`
  cycles (its reference is still being learned) nor within `cooldown` cycles after it resolved; it
  resolves when the condition was false on `clear` consecutive evaluations. `hold` and `clear` count
  evaluations (epochs, or cycles for per-cycle rules); `warmup` and `cooldown` count cycles, so they
  mean the same amount of history whatever the number of epochs per cycle.

Conditions compare with the run's own history where the scale depends on the environment (KL, gradient
norm, value loss: a slow exponential moving average of the logarithm, learned only from evaluations where
the condition is false, so a fault never becomes the new normal) and with natural bounds where they
exist (entropy's start, explained variance ≤ 1, a correlation, the run's best return). docs/signals.md
gives each rule's condition, defaults and the evidence behind them.

The state (per run and rule: the machine and a few reference numbers) is small, bounded and
JSON-serialisable, so the Kafka runner stores it with its commits and resumes after a restart without
re-emitting or losing a transition.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Literal

from avro_schemas.errors import TelemetryError
from avro_schemas.models import EpochSummary
from avro_schemas.toml_file import display_path, read_toml, show

__all__ = [
    "RULE_NAMES",
    "SEVERITIES",
    "TransitionState",
    "Severity",
    "RulesError",
    "WatchStateError",
    "RuleSettings",
    "EpochRuleSettings",
    "EntropyCollapseRule",
    "KlSpikeRule",
    "GradExplosionRule",
    "GaeSanityRule",
    "ValueDivergenceRule",
    "ReturnCollapseRule",
    "ClipInactiveRule",
    "LrJumpRule",
    "ValueLossSpikeRule",
    "EntropyPushdownRule",
    "EntropyDrainRule",
    "RulesConfig",
    "load_rules",
    "rules_from_mapping",
    "Transition",
    "Watch",
]

RULE_NAMES: tuple[str, ...] = (
    "entropy_collapse", "kl_spike", "grad_explosion", "gae_sanity", "value_divergence", "return_collapse",
    "clip_inactive", "lr_jump", "value_loss_spike", "entropy_pushdown",
    "entropy_drain",
)
SEVERITIES: tuple[str, ...] = ("warning", "critical")

TransitionState = Literal["firing", "resolved"]
Severity = Literal["warning", "critical"]

_SNAPSHOT_VERSION = 2
_TINY = 1e-12  # below any meaningful loss, norm or KL: keeps log() finite on exact zeros


class RulesError(TelemetryError):
    """A rules file that cannot be read or parsed, or names an unknown rule or key, or holds a bad value."""


class WatchStateError(TelemetryError):
    """A state snapshot handed to `Watch.restore` that is not one `Watch.state_snapshot` could have made."""


# --- settings -------------------------------------------------------------------------------------
# Each key's allowed range: ("int", low) or ("float", low, high, low_inclusive); checked on rules files.


def _int(default: int, low: int) -> Any:
    return field(default=default, metadata={"range": ("int", low)})


def _float(default: float, low: float, high: float = math.inf, low_inclusive: bool = True) -> Any:
    return field(default=default, metadata={"range": ("float", low, high, low_inclusive)})


@dataclass(frozen=True, slots=True)
class RuleSettings:
    """The keys every rule has. `hold`/`clear`: consecutive evaluations with the condition true to fire,
    false to resolve (epochs for per-epoch rules, cycles for per-cycle ones); `warmup`: the run's first
    cycles, in which the rule learns the run's levels and may not fire; `cooldown`: cycles after
    resolving before it may fire again; `severity`: `warning` or `critical`."""

    enabled: bool = True
    severity: str = "warning"
    hold: int = _int(1, 1)
    clear: int = _int(3, 1)
    cooldown: int = _int(10, 0)
    warmup: int = _int(5, 0)

    per_cycle: ClassVar[bool] = True  # evaluated on the first record of each cycle (else on every record)
    needs_v1_1: ClassVar[bool] = False  # reads v1.1 fields: v1.0 records are not evaluated


@dataclass(frozen=True, slots=True)
class EpochRuleSettings(RuleSettings):
    """A rule evaluated on every epoch's record, from v1.1 fields."""

    hold: int = _int(3, 1)
    clear: int = _int(40, 1)

    per_cycle: ClassVar[bool] = False
    needs_v1_1: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class EntropyCollapseRule(RuleSettings):
    """Fires when `batch_entropy_mean` falls far below the run's own recent level, rollout after rollout
    (per cycle).

    A run whose first entropy is ln k (a k-action categorical policy starts near uniform) compares ratios:
    entropy < `ratio` × its level. Other runs (a Gaussian policy's differential entropy may be negative)
    compare differences: entropy < its level − `drop_nats`. The level is a moving average (rate `rate` per
    cycle; of log entropy for ratios) of the cycles where the condition was false. The rule reads each
    cycle's first record: the entropy over a fresh rollout's states. A late-stage policy is sure in some
    states and not in others, so one rollout's batch can be several times more certain than the next
    (Acrobot: 0.013 to 0.069 nats in consecutive cycles); `hold` cycles in a row tell a policy that
    collapsed from a batch of easy states.
    """

    severity: str = "critical"
    hold: int = _int(2, 1)
    ratio: float = _float(0.3, 0.0, 1.0, False)
    drop_nats: float = _float(1.5, 0.0, low_inclusive=False)
    rate: float = _float(0.1, 0.0, 1.0, False)

    needs_v1_1: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class KlSpikeRule(EpochRuleSettings):
    """Fires when `kl_divergence_max > max(floor, factor × the run's recent level)` (per epoch).

    The level is the geometric moving average (rate `rate` per cycle) of each cycle's largest
    `kl_divergence_max`, over the cycles where the condition did not hold; `floor` (nats) keeps the rule
    quiet on moves too small to matter, whatever the run's level.
    """

    factor: float = _float(10.0, 1.0, low_inclusive=False)
    floor: float = _float(0.1, 0.0)
    rate: float = _float(0.1, 0.0, 1.0, False)


@dataclass(frozen=True, slots=True)
class GradExplosionRule(EpochRuleSettings):
    """Fires when `grad_norm_max > factor × max(the run's recent level, its level at the end of warm-up)`.

    Per epoch. The level is the geometric moving average (rate `rate` per cycle) of each cycle's largest
    `grad_norm_max`, over the cycles where the condition did not hold. The start level stands beside the recent one because a solved task's gradients
    shrink by orders of magnitude and grow back on a single failed episode.
    """

    severity: str = "critical"
    hold: int = _int(10, 1)
    factor: float = _float(30.0, 1.0, low_inclusive=False)
    rate: float = _float(0.1, 0.0, 1.0, False)


@dataclass(frozen=True, slots=True)
class GaeSanityRule(RuleSettings):
    """Fires when `reward_advantage_corr < min(threshold, level − max(drop, drop_spread × spread))` (per cycle).

    Advantages are built from rewards (A = r + γV(s') − V(s) + ...), so a run's correlation settles at a
    level of its own (about +0.3 on Acrobot, about 0 on Pendulum, whose rewards are costs); a fall far
    below that level into negative values means advantages no longer follow rewards: a sign or wiring bug.
    The level and spread are the moving average and mean absolute deviation (rate `rate` per cycle) of the
    cycles where the condition did not hold; a null correlation (constant rewards) is not evaluated.
    """

    hold: int = _int(2, 1)
    threshold: float = _float(-0.1, -1.0, 1.0)
    drop: float = _float(0.4, 0.0, 2.0, False)
    drop_spread: float = _float(4.0, 0.0)
    rate: float = _float(0.2, 0.0, 1.0, False)

    needs_v1_1: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class ValueDivergenceRule(RuleSettings):
    """Fires when the value function stops explaining the returns or its loss blows up (per cycle).

    Condition, either half: `explained_variance < min(ev_max, level − max(ev_drop, ev_spread × spread))`
    while the value loss exceeds `ev_loss_ratio` × its recent level, the level and spread being the moving
    average and mean absolute deviation (rate `rate` per cycle) of the cycles where the condition was
    false; or the cycle's first `value_loss` (the loss on fresh data, before any update on it) above
    `loss_factor` × the larger of its recent geometric level and its level at the end of warm-up.
    """

    hold: int = _int(3, 1)
    ev_drop: float = _float(0.3, 0.0, low_inclusive=False)
    ev_spread: float = _float(8.0, 0.0)
    ev_max: float = _float(0.5, -math.inf, 1.0)
    ev_loss_ratio: float = _float(2.0, 0.0)
    loss_factor: float = _float(5.0, 1.0, low_inclusive=False)
    rate: float = _float(0.1, 0.0, 1.0, False)


@dataclass(frozen=True, slots=True)
class ReturnCollapseRule(RuleSettings):
    """Fires when the mean episode return lost `fraction` of what the run had gained (per cycle).

    Condition: `mean_episode_return < best − fraction × (best − start)`, where `start` is the smoothed
    return at the end of warm-up, `best` the highest smoothed return since (a moving average, rate
    `rate` per cycle, so a lucky cycle is not the best), and the gain `best − start` must exceed
    `min_gain` × the return's own typical deviation (a run that never learned cannot collapse).
    """

    severity: str = "critical"
    hold: int = _int(5, 1)
    fraction: float = _float(0.8, 0.0, 1.0, False)
    min_gain: float = _float(3.0, 0.0)
    rate: float = _float(0.2, 0.0, 1.0, False)


@dataclass(frozen=True, slots=True)
class ClipInactiveRule(EpochRuleSettings):
    """Fires when the policy moved (`kl_divergence_max > kl_min`) yet `clip_fraction` is exactly 0 (per epoch).

    A k3 KL of 0.01 means ratios typically 0.14 away from 1: beyond any usual clip range (0.1-0.3) for some
    samples. None clipped means clipping is off or its range is far too wide.
    """

    kl_min: float = _float(0.01, 0.0, low_inclusive=False)


@dataclass(frozen=True, slots=True)
class LrJumpRule(RuleSettings):
    """Fires when `learning_rate > factor × its recent level` (per cycle).

    Schedules lower the learning rate or keep it; a jump by several times after warm-up is a
    configuration or checkpoint-restore mistake. The level is the moving average (rate `rate` per cycle)
    of the cycles where the condition did not hold.
    """

    factor: float = _float(3.0, 1.0, low_inclusive=False)
    rate: float = _float(0.1, 0.0, 1.0, False)


@dataclass(frozen=True, slots=True)
class ValueLossSpikeRule(RuleSettings):
    """Fires at once when a cycle's first `value_loss` (the loss on fresh data, before any update on it)
    jumps above `factor` × the larger of its recent geometric level and its level at the end of warm-up
    (per cycle).

    `value_divergence` waits for the value function to stay wrong; a critic re-initialised or corrupted
    once may relearn within a cycle or two, so a single large jump is worth saying at once. The start level
    keeps a solved task quiet: its loss falls by orders of magnitude and one failed episode brings it back
    to about where it started.
    """

    clear: int = _int(2, 1)
    factor: float = _float(8.0, 1.0, low_inclusive=False)
    rate: float = _float(0.1, 0.0, 1.0, False)


@dataclass(frozen=True, slots=True)
class EntropyPushdownRule(EpochRuleSettings):
    """Fires when an update lowers the policy's entropy at the expense of its own objective (per epoch).

    Condition: since the cycle's first epoch, `policy_loss` rose by more than `loss_rise` while
    `batch_entropy_mean` fell by more than `drop` (the log of the ratio for a run whose first entropy is
    ln k, as `entropy_collapse` decides; nats otherwise). With advantages normalised, the clipped
    surrogate only falls during a cycle's epochs unless another term of the loss outweighs it; one
    that also drives the entropy down is a negative entropy bonus (or a loss wired to reward certainty).
    """

    loss_rise: float = _float(0.005, 0.0, low_inclusive=False)
    drop: float = _float(0.1, 0.0, low_inclusive=False)


@dataclass(frozen=True, slots=True)
class EntropyDrainRule(EpochRuleSettings):
    """Fires when the updates kept lowering the entropy in nearly every epoch of the last `window` cycles and
    it fell under `ratio` × its level (per epoch).

    A cycle's sustained drop is its epochs' count × the second smallest per-epoch fall of entropy (a drop
    every epoch but one shared; a single large step does not make it); condition: the sum of the sustained
    drops of the last `window` cycles (the current one so far) exceeds `drop`, and the entropy is under
    `ratio` × the level. Entropies compare as logarithms for a run whose first entropy is ln k, in nats
    otherwise (a Gaussian's entropy − ln 2 nats is its volume halved). The level is a moving average (rate
    `rate` per cycle) of each cycle's first entropy, from the cycles where the condition was false. A
    healthy policy's entropy falls within a cycle and comes back with the next rollout, or falls in a few
    large steps; an entropy term of the wrong sign lowers it epoch after epoch, cycle after cycle.
    """

    window: int = _int(4, 1)
    drop: float = _float(0.5, 0.0, low_inclusive=False)
    ratio: float = _float(0.5, 0.0, 1.0, False)
    rate: float = _float(0.1, 0.0, 1.0, False)


_Rule = RuleSettings


@dataclass(frozen=True, slots=True)
class RulesConfig:
    """The settings of every rule; a field per rule, named as in the rules file."""

    entropy_collapse: EntropyCollapseRule = field(default_factory=EntropyCollapseRule)
    kl_spike: KlSpikeRule = field(default_factory=KlSpikeRule)
    grad_explosion: GradExplosionRule = field(default_factory=GradExplosionRule)
    gae_sanity: GaeSanityRule = field(default_factory=GaeSanityRule)
    value_divergence: ValueDivergenceRule = field(default_factory=ValueDivergenceRule)
    return_collapse: ReturnCollapseRule = field(default_factory=ReturnCollapseRule)
    clip_inactive: ClipInactiveRule = field(default_factory=ClipInactiveRule)
    lr_jump: LrJumpRule = field(default_factory=LrJumpRule)
    value_loss_spike: ValueLossSpikeRule = field(default_factory=ValueLossSpikeRule)
    entropy_pushdown: EntropyPushdownRule = field(default_factory=EntropyPushdownRule)
    entropy_drain: EntropyDrainRule = field(default_factory=EntropyDrainRule)

    @classmethod
    def default(cls) -> RulesConfig:
        """Every rule enabled with its defaults (docs/signals.md)."""
        return cls()


assert tuple(f.name for f in fields(RulesConfig)) == RULE_NAMES, "RulesConfig and RULE_NAMES differ"


# --- the rules file -------------------------------------------------------------------------------


def _check_value(value: Any, spec: tuple[Any, ...], where: str, key: str) -> int | float:
    # bool is an int subclass, and `enabled = true` typed into a number must not read as 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RulesError(f"{where} key {key!r} must be a number, got {show(value)}")
    if spec[0] == "int":
        if not isinstance(value, int):
            raise RulesError(f"{where} key {key!r} must be an integer, got {show(value)}")
        if value < spec[1]:
            raise RulesError(f"{where} key {key!r} must be >= {spec[1]}, got {show(value)}")
        return value
    _, low, high, low_inclusive = spec
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any double is beyond every range too
        number = math.nan
    if not math.isfinite(number) and isinstance(value, float):
        raise RulesError(f"{where} key {key!r} must be finite, got {show(value)}")
    if not (low < number <= high or (low_inclusive and number == low)):
        bound = f"{'>=' if low_inclusive else '>'} {low:g}" if high == math.inf else f"in {'[' if low_inclusive else '('}{low:g}, {high:g}]"
        raise RulesError(f"{where} key {key!r} must be {bound}, got {show(value)}")
    return number


def _rule_from_table(default: _Rule, table: Any, where: str) -> _Rule:
    if not isinstance(table, Mapping):
        raise RulesError(f"{where} must be a table, got {show(table)}")
    known = {f.name: f for f in fields(default)}
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise RulesError(f"{where} has unknown key {show(key)} (known: {', '.join(known)})")
        if key == "enabled":
            if not isinstance(value, bool):
                raise RulesError(f"{where} key 'enabled' must be true or false, got {show(value)}")
            changes[key] = value
        elif key == "severity":
            if value not in SEVERITIES:
                raise RulesError(f"{where} key 'severity' must be one of {', '.join(SEVERITIES)}, got {show(value)}")
            changes[key] = value
        else:
            changes[key] = _check_value(value, known[key].metadata["range"], where, key)
    return replace(default, **changes)


def rules_from_mapping(data: Mapping[str, Any], source: str = "<rules>") -> RulesConfig:
    """Build a `RulesConfig` from a parsed rules mapping (one table per rule); unset values keep defaults.

    `source` names the origin in error messages. Raises `RulesError` for an unknown rule or key, a value
    of the wrong type, or a number outside its key's range.
    """
    default = RulesConfig.default()
    rules: dict[str, _Rule] = {}
    for name, table in data.items():
        if name not in RULE_NAMES:
            raise RulesError(f"{source}: unknown rule {show(name)} (known: {', '.join(RULE_NAMES)})")
        rules[name] = _rule_from_table(getattr(default, name), table, f"{source}: rule [{name}]")
    return replace(default, **rules)


def load_rules(path: str | os.PathLike[str]) -> RulesConfig:
    """Read a TOML rules file (SPEC §6) into a `RulesConfig`; every problem is a one-line `RulesError`,
    whatever the file holds (binary, not UTF-8, huge numbers, deep nesting: see `avro_schemas.toml_file`).
    An empty file is valid TOML with no tables: every rule keeps its defaults."""
    data = read_toml(path, RulesError, "rules file")
    return rules_from_mapping(data, display_path(path))


# --- transitions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transition:
    """A rule of a run changing state at one record (SPEC §7 `watch` output, the `ppo.telemetry.alerts` topic).

    `value` is what the rule compared and `reference` what it was compared with (a threshold, or the
    threshold derived from the run's own level); `since_epoch` is the epoch from which the condition held
    (firing) or no longer held (resolved).
    """

    run_id: str
    rule: str
    state: TransitionState
    severity: Severity
    epoch: int
    global_step: int
    log_stream_offset: int | None
    value: float
    reference: float
    since_epoch: int
    summary: str

    def to_json_dict(self) -> dict[str, Any]:
        """The transition as the JSON object of SPEC §7, keys in the spec's order."""
        return {
            "run_id": self.run_id,
            "rule": self.rule,
            "state": self.state,
            "severity": self.severity,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "log_stream_offset": self.log_stream_offset,
            "value": self.value,
            "reference": self.reference,
            "since_epoch": self.since_epoch,
            "summary": self.summary,
        }

    def to_avro_dict(self) -> dict[str, Any]:
        """The `ppo.telemetry.Alert` v1.1 record: the JSON object plus `threshold` (= `reference`), kept
        because v1.0 readers require it."""
        doc = self.to_json_dict()
        doc["threshold"] = self.reference
        return doc


# --- per-run state --------------------------------------------------------------------------------


class _RuleState:
    """One rule's machine and references for one run; every attribute is a JSON number, bool or None."""

    __slots__ = (
        "firing", "streak", "since", "cooldown",
        "level", "start", "best", "spread", "loss_level", "loss_start", "peak", "peak_step", "dirty", "ratio_mode",
        "cycle_loss", "cycle_entropy", "last_entropy", "min_step", "min_step2", "steps", "window",
    )
    _NUMBERS = (
        "level", "start", "best", "spread", "loss_level", "loss_start", "peak", "cycle_loss", "cycle_entropy",
        "last_entropy", "min_step", "min_step2",
    )
    _MAX_WINDOW = 64  # entropy_drain's window of past cycles, whatever the rules file says
    _FLAGS = ("dirty", "ratio_mode")

    def __init__(self) -> None:
        self.firing = False
        self.streak = 0  # consecutive evaluations with the condition true (not firing) or false (firing)
        self.since = 0  # the epoch the current streak began
        self.cooldown = 0  # cycles left before the rule may fire again
        self.level: float | None = None  # the run's recent level (of the log where the rule compares ratios)
        self.start: float | None = None  # the level at the end of warm-up
        self.best: float | None = None  # return_collapse: the best smoothed return
        self.spread: float | None = None  # mean absolute deviation from the level
        self.loss_level: float | None = None  # value_divergence: log value_loss, recent
        self.loss_start: float | None = None  # value_divergence: log value_loss at the end of warm-up
        self.peak: float | None = None  # kl_spike, grad_explosion: the log maximum of the current cycle
        self.peak_step: int | None = None  # the global_step of that cycle
        self.dirty: bool | None = None  # whether that cycle tripped the rule (its peak is not learned from)
        self.ratio_mode: bool | None = None  # entropy_collapse, entropy_pushdown: ratios (categorical start) or differences
        self.cycle_loss: float | None = None  # entropy_pushdown: policy_loss at the first epoch of cycle `peak_step`
        self.cycle_entropy: float | None = None  # entropy_pushdown, entropy_drain: batch_entropy_mean at that epoch
        self.last_entropy: float | None = None  # entropy_drain: the previous epoch's (log) entropy in this cycle
        self.min_step: float | None = None  # entropy_drain: this cycle's smallest per-epoch fall of entropy
        self.min_step2: float | None = None  # entropy_drain: and its second smallest
        self.steps = 0  # entropy_drain: this cycle's per-epoch steps so far
        self.window: list[float] | None = None  # entropy_drain: the sustained drops of the last cycles, oldest first

    def to_json(self) -> dict[str, Any]:
        """The state as a JSON object (only what is set)."""
        out: dict[str, Any] = {"firing": self.firing, "streak": self.streak, "since": self.since, "cooldown": self.cooldown}
        for name in (*self._NUMBERS, "peak_step", *self._FLAGS):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.steps:
            out["steps"] = self.steps
        if self.window is not None:
            out["window"] = list(self.window)
        return out

    @classmethod
    def from_json(cls, entry: Any, where: str) -> _RuleState:
        """The inverse of `to_json`; `WatchStateError` for anything it could not have made."""
        if not isinstance(entry, Mapping):
            raise WatchStateError(f"{where} is not an object")
        unknown = set(entry) - set(cls.__slots__)
        if unknown:
            raise WatchStateError(f"{where}: unknown keys {sorted(unknown)}")
        state = cls()
        for name in ("firing", *cls._FLAGS):
            value = entry.get(name, False if name == "firing" else None)
            if value is not None and not isinstance(value, bool):
                raise WatchStateError(f"{where}: {name} is {value!r}")
            setattr(state, name, value)
        for name in ("streak", "since", "cooldown", "peak_step", "steps"):
            value = entry.get(name, None if name == "peak_step" else 0)
            if value is None and name == "peak_step":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or (value < 0 and name in ("streak", "cooldown", "steps")):
                raise WatchStateError(f"{where}: {name} is {value!r}")
            setattr(state, name, value)
        for name in cls._NUMBERS:
            value = entry.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise WatchStateError(f"{where}: {name} is {value!r}")
            setattr(state, name, float(value))
        window = entry.get("window")
        if window is not None:
            if not isinstance(window, list) or len(window) > cls._MAX_WINDOW or any(
                    isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in window):
                raise WatchStateError(f"{where}: window is {window!r}")
            state.window = [float(v) for v in window]
        return state


class _RunState:
    """One run: the global_step of its current cycle, the cycles seen, and each rule's state."""

    __slots__ = ("cycle_step", "cycles", "rules")

    def __init__(self) -> None:
        self.cycle_step: int | None = None
        self.cycles = 0
        self.rules: dict[str, _RuleState] = {name: _RuleState() for name in RULE_NAMES}


# --- the rules' readings --------------------------------------------------------------------------
# A reading is (value, reference, condition), or None when the record gives the rule nothing to evaluate.
# Readers also learn: they update the run's references from values where the condition is false and the
# rule is not firing (a fault never becomes the new normal, and an alert resolves when the values are back
# where they were before it), and from every value while `warming` (the run's first `warmup` cycles, when
# the rule may not fire yet).

_Reading = tuple[float, float, bool] | None


_WARMUP_RATE = 0.5  # while warming, levels follow the run closely: its first cycles are not its normal


def _ema(level: float | None, value: float, rate: float) -> float:
    return value if level is None else level + rate * (value - level)


def _rate(rate: float, warming: bool) -> float:
    """The moving averages' rate: the rule's own, or faster during warm-up so the untrained first cycles
    (explained variance near 0, losses many times their later level) weigh little once it ends."""
    return max(rate, _WARMUP_RATE) if warming else rate


def _above_levels(factor: float, level: float | None, start: float | None) -> float:
    """`factor` × the larger of a run's recent log level and its log level at the end of warm-up (+inf
    before any level): a solved task's losses shrink by orders of magnitude and one failed episode
    brings them back to about where they started, so the start level stands as a lower bound."""
    if level is None:
        return math.inf
    return factor * math.exp(level if start is None else max(level, start))


def _learn_log_level(
    level: float | None, start: float | None, value: float, rate: float, warming: bool
) -> tuple[float, float | None]:
    """The (recent, start) log levels after learning `value`; the start level follows until warm-up ends."""
    level = _ema(level, math.log(max(value, _TINY)), _rate(rate, warming))
    return level, (level if warming else start)


def _fmt(number: float) -> str:
    return f"{number:.3g}"


def _read_entropy(rule: EntropyCollapseRule, record: EpochSummary, st: _RuleState, warming: bool) -> _Reading:
    value = record.batch_entropy_mean
    if value is None:
        return None
    if _entropy_scale_changed(st, value):
        st.level = None
    if st.ratio_mode:
        reference = 0.0 if st.level is None else rule.ratio * math.exp(st.level)
        condition = value < reference
        if (not condition and not st.firing) or warming:
            st.level = _ema(st.level, math.log(max(value, _TINY)), _rate(rule.rate, warming))
    else:
        reference = -math.inf if st.level is None else st.level - rule.drop_nats
        condition = value < reference
        if (not condition and not st.firing) or warming:
            st.level = _ema(st.level, value, _rate(rule.rate, warming))
    return value, reference, condition


def _entropy_scale_changed(st: _RuleState, entropy: float) -> bool:
    """Decide how the entropy rules compare this run's entropies, and say whether that just changed.

    The first entropy decides: ln k (a k-action categorical starts near uniform) means ratios, anything
    else differences in nats. A negative value later proves the entropy differential after all (the first
    one only looked like ln k): from then on nats, and the caller starts its levels over on that scale. An
    entropy of exactly 0 does not: a categorical policy sure of every action in the batch has it."""
    if st.ratio_mode is None:
        st.ratio_mode = _categorical_start(entropy)
    if st.ratio_mode and entropy < 0:
        st.ratio_mode = False
        return True
    return False


def _categorical_start(entropy: float) -> bool:
    """Whether a first entropy is ln k for an integer k ≥ 2: a categorical policy's start near uniform."""
    if entropy <= 0.5:
        return False
    k = round(math.exp(entropy))
    return k >= 2 and abs(entropy - math.log(k)) <= 0.01 * entropy


def _read_peak(
    value: float | None, global_step: int, factor: float, floor: float, rate: float, warming: bool,
    st: _RuleState, with_start: bool,
) -> _Reading:
    """value > max(floor, factor × level), the level being a geometric moving average of the run's
    per-cycle peaks (KL and gradient norms vary systematically through a cycle's epochs, their peaks
    do not); a cycle whose values tripped the rule does not join the level. With `with_start`, the
    level at the end of warm-up stands as a lower bound (a solved task's values shrink by orders of
    magnitude and a single failed episode brings them back)."""
    if value is None:
        return None
    if st.peak_step != global_step:  # a new cycle: the last one's peak joins the level if it was clean
        if st.peak is not None and not st.dirty:
            st.level = _ema(st.level, st.peak, _rate(rate, warming))
        st.peak, st.peak_step, st.dirty = None, global_step, False
        if with_start and warming:
            st.start = st.level
    if st.level is None:
        reference, condition = (floor if floor else math.inf), False
    else:
        level = st.level if st.start is None else max(st.level, st.start)
        reference = max(floor, factor * math.exp(level))
        condition = value > reference
    if value > 0.0:
        log_value = math.log(value)
        st.peak = log_value if st.peak is None else max(st.peak, log_value)
    if (condition or st.firing) and not warming:
        st.dirty = True
    return value, reference, condition


def _read_kl(rule: KlSpikeRule, record: EpochSummary, st: _RuleState, warming: bool) -> _Reading:
    return _read_peak(record.kl_divergence_max, record.global_step, rule.factor, rule.floor, rule.rate, warming, st, False)


def _read_grad(rule: GradExplosionRule, record: EpochSummary, st: _RuleState, warming: bool) -> _Reading:
    return _read_peak(record.grad_norm_max, record.global_step, rule.factor, 0.0, rule.rate, warming, st, True)


def _read_gae(rule: GaeSanityRule, record: EpochSummary, st: _RuleState, warming: bool) -> _Reading:
    value = record.reward_advantage_corr
    if value is None:
        return None
    if st.level is None:
        reference = rule.threshold
    else:
        reference = min(rule.threshold, st.level - max(rule.drop, rule.drop_spread * (st.spread or 0.0)))
    condition = value < reference
    if (not condition and not st.firing) or warming:
        if st.level is not None:
            st.spread = _ema(st.spread, abs(value - st.level), _rate(rule.rate, warming))
        st.level = _ema(st.level, value, _rate(rule.rate, warming))
    return value, reference, condition


def _read_value(rule: ValueDivergenceRule, record: EpochSummary, st: _RuleState, warming: bool) -> _Reading:
    ev = record.explained_variance
    loss = record.value_loss
    # Two halves, one machine: the explained variance against its level (a drop beyond its usual
    # swings), the loss on fresh data against its recent and start levels.
    loss_reference = _above_levels(rule.loss_factor, st.loss_level, st.loss_start)
    loss_condition = loss > loss_reference
    if ev is None or st.level is None:
        ev_reference, ev_condition = -math.inf, False
    else:
        ev_reference = min(rule.ev_max, st.level - max(rule.ev_drop, rule.ev_spread * (st.spread or 0.0)))
        # A low explained variance with a loss no higher than usual means the returns barely vary (a
        # solved CartPole's), not that the value function got worse: the loss must have risen too.
        loss_risen = st.loss_level is not None and loss > rule.ev_loss_ratio * math.exp(st.loss_level)
        ev_condition = ev < ev_reference and loss_risen
    condition = ev_condition or loss_condition
    if (not condition and not st.firing) or warming:
        if ev is not None:
            if st.level is not None:
                st.spread = _ema(st.spread, abs(ev - st.level), _rate(rule.rate, warming))
            st.level = _ema(st.level, ev, _rate(rule.rate, warming))
        st.loss_level, st.loss_start = _learn_log_level(st.loss_level, st.loss_start, loss, rule.rate, warming)
    if loss_condition and not ev_condition:
        return loss, loss_reference, True
    if ev is None:
        return None  # nothing but a quiet loss to evaluate: the explained variance's state stays as it is
    return ev, ev_reference, condition


def _read_return(rule: ReturnCollapseRule, record: EpochSummary, st: _RuleState, warming: bool) -> _Reading:
    value = record.mean_episode_return
    if value is None:
        return None
    if st.level is None:
        st.level, st.spread = value, 0.0
        if warming:
            st.start = st.best = value
        return value, -math.inf, False
    reference, condition = -math.inf, False
    if st.start is not None and st.best is not None:
        gain = st.best - st.start
        if gain > 0 and gain > rule.min_gain * (st.spread or 0.0):
            reference = st.best - rule.fraction * gain
            condition = value < reference
    if (not condition and not st.firing) or warming:
        st.spread = _ema(st.spread, abs(value - st.level), _rate(rule.rate, warming))
        st.level += _rate(rule.rate, warming) * (value - st.level)
        if warming or st.start is None:
            st.start = st.best = st.level
        elif st.level > st.best:  # type: ignore[operator]
            st.best = st.level
    return value, reference, condition


def _read_clip(rule: ClipInactiveRule, record: EpochSummary, st: _RuleState, warming: bool) -> _Reading:
    kl = record.kl_divergence_max
    if kl is None:
        return None
    return kl, rule.kl_min, record.clip_fraction == 0.0 and kl > rule.kl_min


def _read_lr(rule: LrJumpRule, record: EpochSummary, st: _RuleState, warming: bool) -> _Reading:
    value = record.learning_rate
    reference = math.inf if st.level is None else rule.factor * st.level
    condition = value > reference
    if (not condition and not st.firing) or warming:
        st.level = _ema(st.level, value, _rate(rule.rate, warming))
    return value, reference, condition


def _read_loss_spike(rule: ValueLossSpikeRule, record: EpochSummary, st: _RuleState, warming: bool) -> _Reading:
    value = record.value_loss
    reference = _above_levels(rule.factor, st.level, st.start)
    condition = value > reference
    if (not condition and not st.firing) or warming:
        st.level, st.start = _learn_log_level(st.level, st.start, value, rule.rate, warming)
    return value, reference, condition


def _read_pushdown(rule: EntropyPushdownRule, record: EpochSummary, st: _RuleState, warming: bool) -> _Reading:
    loss, entropy = record.policy_loss, record.batch_entropy_mean
    if entropy is None:
        return None
    _entropy_scale_changed(st, entropy)  # its reference is the cycle's first entropy: nothing to start over
    if st.peak_step != record.global_step or st.cycle_loss is None or st.cycle_entropy is None:
        # The cycle's first epoch: what the later epochs' updates are measured from.
        st.peak_step, st.cycle_loss, st.cycle_entropy = record.global_step, loss, entropy
        return 0.0, rule.loss_rise, False
    rise = loss - st.cycle_loss
    if st.ratio_mode and st.cycle_entropy > 0:
        drop = math.log(st.cycle_entropy) - math.log(max(entropy, _TINY))
    else:
        drop = st.cycle_entropy - entropy
    return rise, rule.loss_rise, rise > rule.loss_rise and drop > rule.drop


def _read_drain(rule: EntropyDrainRule, record: EpochSummary, st: _RuleState, warming: bool) -> _Reading:
    entropy = record.batch_entropy_mean
    if entropy is None:
        return None
    if _entropy_scale_changed(st, entropy):
        st.level, st.window, st.peak_step = None, None, None
    value = math.log(max(entropy, _TINY)) if st.ratio_mode else entropy
    first = st.peak_step != record.global_step or st.last_entropy is None
    if first:
        if st.peak_step is not None and st.steps:  # the last cycle ended: its sustained drop joins the window
            keep = min(rule.window, _RuleState._MAX_WINDOW) - 1
            st.window = ([*(st.window or []), _sustained_drop(st)])[-keep:] if keep else []
        st.peak_step, st.cycle_entropy, st.last_entropy = record.global_step, value, value
        st.min_step = st.min_step2 = None
        st.steps = 0
    else:
        step = st.last_entropy - value  # positive: this epoch lowered the entropy
        st.last_entropy = value
        st.steps += 1
        if st.min_step is None or step < st.min_step:
            st.min_step, st.min_step2 = step, st.min_step
        elif st.min_step2 is None or step < st.min_step2:
            st.min_step2 = step
    fall = math.log(1.0 / rule.ratio)
    sustained = sum(st.window or ()) + _sustained_drop(st)
    condition = st.level is not None and sustained > rule.drop and st.level - value > fall
    if first and ((not condition and not st.firing) or warming):
        st.level = _ema(st.level, value, _rate(rule.rate, warming))
    if st.level is None:
        reference = -math.inf
    else:
        reference = math.exp(st.level - fall) if st.ratio_mode else st.level - fall
    return entropy, reference, condition


def _sustained_drop(st: _RuleState) -> float:
    """The current cycle's steps × its second smallest per-epoch fall (0 before two steps)."""
    if st.steps < 2 or st.min_step2 is None:
        return 0.0
    return st.steps * st.min_step2


_READERS: dict[str, Any] = {
    "value_loss_spike": _read_loss_spike,
    "clip_inactive": _read_clip,
    "lr_jump": _read_lr,
    "entropy_collapse": _read_entropy,
    "kl_spike": _read_kl,
    "grad_explosion": _read_grad,
    "gae_sanity": _read_gae,
    "value_divergence": _read_value,
    "return_collapse": _read_return,
    "entropy_pushdown": _read_pushdown,
    "entropy_drain": _read_drain,
}


# --- summaries: one line a person understands without the docs ------------------------------------


def _level(st: _RuleState, log_scale: bool) -> str:
    if st.level is None:
        return "n/a"
    return _fmt(math.exp(st.level) if log_scale else st.level)


def _summary(name: str, rule: _Rule, st: _RuleState, firing: bool, value: float, reference: float, since: int,
             record: EpochSummary) -> str:
    """One line a person understands without the docs: what, how far from what, since when, what it means."""
    held = f"since epoch {since}"
    v, ref = _fmt(value), _fmt(reference)
    if name == "entropy_collapse":
        usual = f"{_fmt(rule.ratio)}x the run's recent {_level(st, True)}" if st.ratio_mode else f"the run's recent {_level(st, False)} - {_fmt(rule.drop_nats)} nats"
        if firing:
            return f"policy entropy fell fast to {v} nats, under {ref} ({usual}), {held}: the policy is turning deterministic"
        return f"policy entropy {v} nats is back above {ref}, {held}"
    if name == "kl_spike":
        if firing:
            return (f"max KL per update {v} is above {ref} (the larger of {_fmt(rule.floor)} and {_fmt(rule.factor)}x the run's "
                    f"usual per-cycle peak {_level(st, True)}), {held}: updates move the policy too far")
        return f"max KL per update {v} is back under {ref}, {held}"
    if name == "grad_explosion":
        start = "" if st.start is None else f", or its start {_fmt(math.exp(st.start))}"
        if firing:
            return (f"gradient norm before clipping {v} is above {ref} ({_fmt(rule.factor)}x the run's usual per-cycle peak "
                    f"{_level(st, True)}{start}), {held}")
        return f"gradient norm before clipping {v} is back under {ref}, {held}"
    if name == "gae_sanity":
        if firing:
            return (f"rewards and advantages correlate at {v}, under {ref} (the run's usual {_level(st, False)}), {held}: "
                    "advantages no longer follow rewards; check their sign and the reward, value and GAE wiring")
        return f"rewards and advantages correlate at {v} again, above {ref}, {held}"
    if name == "value_divergence":
        loss_half = value == record.value_loss and value != record.explained_variance
        if firing and loss_half:
            return f"value loss on fresh data {v} is above {ref} ({_fmt(rule.loss_factor)}x the run's usual), {held}: the value function diverged or the reward scale changed"
        if firing:
            return (f"explained variance fell to {v}, under {ref} (the run's usual {_level(st, False)}) while the value loss rose, "
                    f"{held}: the value function no longer predicts returns")
        return f"{'value loss' if loss_half else 'explained variance'} {v} is back within {ref}, {held}"
    if name == "return_collapse":
        if firing:
            best = "n/a" if st.best is None else _fmt(st.best)
            return f"mean episode return {v} fell below {ref}, losing most of the run's gain (best {best}), {held}"
        return f"mean episode return {v} is back above {ref}, {held}"
    if name == "clip_inactive":
        if firing:
            return f"no sample was clipped although the policy moved by KL {v} (above {ref}), {held}: is PPO clipping off or its range far too wide?"
        return f"samples are clipped again or the policy moves less (KL {v}), {held}"
    if name == "value_loss_spike":
        if firing:
            start = "" if st.start is None else f", or its start {_fmt(math.exp(st.start))}"
            return (f"value loss on fresh data jumped to {v}, above {ref} ({_fmt(rule.factor)}x the run's usual "
                    f"{_level(st, True)}{start}), {held}: the value network was reset or corrupted, or the reward scale changed")
        return f"value loss on fresh data {v} is back under {ref}, {held}"
    if name == "entropy_drain":
        if firing:
            return (f"policy entropy {v} is under {ref} ({_fmt(rule.ratio)}x the run's usual) after the updates lowered it in nearly every "
                    f"epoch of the last {rule.window} cycles, {held}: a loss term is draining it; check the entropy coefficient's sign")
        return f"policy entropy {v} is back above {ref} or no longer falls epoch after epoch, {held}"
    if name == "entropy_pushdown":
        if firing:
            return (f"this cycle's updates raised the policy loss by {v} (more than {ref}) while lowering the entropy, {held}: "
                    "a loss term is pushing the policy toward determinism; check the entropy coefficient's sign")
        return f"the updates no longer trade the policy loss for lower entropy (rise {v}), {held}"
    if firing:
        return f"learning rate jumped to {v}, above {ref} ({_fmt(rule.factor)}x its recent {_level(st, False)}), {held}: check the optimizer settings"
    return f"learning rate {v} is back under {ref}, {held}"


# --- the watch ------------------------------------------------------------------------------------


class Watch:
    """Evaluates the alert rules on each record of each run and reports the state transitions."""

    def __init__(
        self,
        config: RulesConfig | None = None,
        state: Mapping[str, Any] | None = None,
        on_reading: Callable[[str, EpochSummary, float, float], None] | None = None,
    ) -> None:
        """Watch with `config` (the defaults when None), resuming from a `state_snapshot()` when given.

        `on_reading(rule, record, value, reference)`, when given, sees every evaluation after a rule's
        warm-up, firing or not: how close healthy runs come to firing (`bench/signal_quality.py --margins`).
        """
        self._config = config if config is not None else RulesConfig.default()
        self._on_reading = on_reading
        self._runs: dict[str, _RunState] = {}
        self._enabled = [
            (name, getattr(self._config, name), _READERS[name]) for name in RULE_NAMES if getattr(self._config, name).enabled
        ]
        if state is not None:
            self.restore(state)

    @property
    def config(self) -> RulesConfig:
        """The rules this watch evaluates."""
        return self._config

    def observe(self, record: EpochSummary) -> list[Transition]:
        """Evaluate the enabled rules on one (valid, deduplicated) record; the transitions it causes, in rule order."""
        run = self._runs.get(record.run_id)
        if run is None:
            run = self._runs[record.run_id] = _RunState()
        new_cycle = record.global_step != run.cycle_step
        if new_cycle:
            run.cycle_step = record.global_step
            run.cycles += 1
            for st in run.rules.values():
                if st.cooldown:
                    st.cooldown -= 1
        v1_1 = record.telemetry_version == "1.1"
        transitions: list[Transition] = []
        for name, rule, reader in self._enabled:
            if (rule.per_cycle and not new_cycle) or (rule.needs_v1_1 and not v1_1):
                continue
            st = run.rules[name]
            warming = run.cycles <= rule.warmup
            reading = reader(rule, record, st, warming)
            if reading is None:
                continue
            if self._on_reading is not None and not warming:
                self._on_reading(name, record, reading[0], reading[1])
            changed = self._step(rule, st, reading[2], record.epoch, warming)
            if changed:
                value, reference = float(reading[0]), float(reading[1])
                transitions.append(Transition(
                    run_id=record.run_id, rule=name, state="firing" if st.firing else "resolved",
                    severity=rule.severity, epoch=record.epoch, global_step=record.global_step,
                    log_stream_offset=record.log_stream_offset, value=value, reference=reference,
                    since_epoch=st.since, summary=_summary(name, rule, st, st.firing, value, reference, st.since, record),
                ))
        return transitions

    @staticmethod
    def _step(rule: _Rule, st: _RuleState, condition: bool, epoch: int, warming: bool) -> bool:
        """Advance one rule's machine by one evaluation; True when its state changed."""
        if st.firing:
            if condition:
                st.streak = 0
                return False
            if st.streak == 0:
                st.since = epoch
            st.streak += 1
            if st.streak < rule.clear:
                return False
            st.firing, st.streak, st.cooldown = False, 0, rule.cooldown
            return True
        if not condition:
            st.streak = 0
            return False
        if st.streak == 0:
            st.since = epoch
        st.streak += 1
        if st.streak < rule.hold or st.cooldown or warming:
            return False
        st.firing, st.streak = True, 0
        return True

    def state_snapshot(self) -> dict[str, Any]:
        """The rule state of every run as a JSON-serialisable dict, for `restore` after a restart."""
        return {"version": _SNAPSHOT_VERSION, "runs": {run_id: self.run_state(run_id) for run_id in self._runs}}

    def run_state(self, run_id: str) -> dict[str, Any] | None:
        """One run's entry of `state_snapshot()` (None for a run never seen), for per-run persistence."""
        run = self._runs.get(run_id)
        if run is None:
            return None
        return {
            "cycle_step": run.cycle_step,
            "cycles": run.cycles,
            "rules": {name: st.to_json() for name, st in run.rules.items()},
        }

    def restore_run(self, run_id: str, entry: Mapping[str, Any] | None) -> None:
        """Take back one run's `run_state` (None forgets the run); raises `WatchStateError` if malformed."""
        if entry is None:
            self._runs.pop(run_id, None)
            return
        self._runs[run_id] = self._run_from_json(run_id, entry)

    def forget_run(self, run_id: str) -> None:
        """Drop one run's rule state."""
        self._runs.pop(run_id, None)

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Replace the whole rule state with a `state_snapshot()`; raises `WatchStateError` if malformed."""
        if not isinstance(snapshot, Mapping) or snapshot.get("version") != _SNAPSHOT_VERSION:
            raise WatchStateError(f"watch state snapshot is not version {_SNAPSHOT_VERSION}")
        runs = snapshot.get("runs")
        if not isinstance(runs, Mapping):
            raise WatchStateError("watch state snapshot has no 'runs' object")
        self._runs = {run_id: self._run_from_json(run_id, entry) for run_id, entry in runs.items()}

    @staticmethod
    def _run_from_json(run_id: str, entry: Any) -> _RunState:
        where = f"watch state of run {run_id!r}"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("rules"), Mapping):
            raise WatchStateError(f"{where} is not an object with 'rules'")
        cycle_step = entry.get("cycle_step")
        if cycle_step is not None and (isinstance(cycle_step, bool) or not isinstance(cycle_step, int)):
            raise WatchStateError(f"{where}: cycle_step is {cycle_step!r}")
        unknown = set(entry["rules"]) - set(RULE_NAMES)
        if unknown:
            raise WatchStateError(f"{where}: unknown rules {sorted(unknown)}")
        cycles = entry.get("cycles", 0)
        if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 0:
            raise WatchStateError(f"{where}: cycles is {cycles!r}")
        run = _RunState()
        run.cycle_step, run.cycles = cycle_step, cycles
        for name, rule_entry in entry["rules"].items():
            run.rules[name] = _RuleState.from_json(rule_entry, f"{where}, rule {name}")
        return run
