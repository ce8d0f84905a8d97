"""Alert rules over a run's epochs (SPEC §6): the pure core, no Kafka; the only I/O is reading the rules file.

Each rule is a two-state machine per run: it emits `firing` when its condition becomes true and
`resolved` when it becomes false again, nothing while the state holds, and a null value leaves the
state as it is. Only v1.1 records are evaluated, since every rule reads v1.1 fields. Records are assumed
valid and free of duplicates (see `consumers.validator`).

The state (per run: the first non-null `batch_entropy_mean` and the rules firing) is small and
JSON-serialisable, so the Kafka runner can store it with its commits and resume after a restart
without re-emitting or losing a transition.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from avro_schemas.errors import TelemetryError
from avro_schemas.models import EpochSummary

__all__ = [
    "RULE_NAMES",
    "TransitionState",
    "RulesError",
    "WatchStateError",
    "EntropyCollapseRule",
    "KlSpikeRule",
    "GradExplosionRule",
    "GaeSanityRule",
    "RulesConfig",
    "load_rules",
    "rules_from_mapping",
    "Transition",
    "Watch",
]

RULE_NAMES: tuple[str, ...] = ("entropy_collapse", "kl_spike", "grad_explosion", "gae_sanity")

TransitionState = Literal["firing", "resolved"]

_SNAPSHOT_VERSION = 1


class RulesError(TelemetryError):
    """A rules file that cannot be read or parsed, or names an unknown rule or key, or holds a bad value."""


class WatchStateError(TelemetryError):
    """A state snapshot handed to `Watch.restore` that is not one `Watch.state_snapshot` could have made."""


@dataclass(frozen=True, slots=True)
class EntropyCollapseRule:
    """Fires when `batch_entropy_mean < max(floor, ratio × the run's first batch_entropy_mean)`."""

    enabled: bool = True
    floor: float = 0.01
    ratio: float = 0.1


@dataclass(frozen=True, slots=True)
class KlSpikeRule:
    """Fires when `kl_divergence_max > threshold`."""

    enabled: bool = True
    threshold: float = 0.05


@dataclass(frozen=True, slots=True)
class GradExplosionRule:
    """Fires when `grad_norm_max > threshold`."""

    enabled: bool = True
    threshold: float = 10.0


@dataclass(frozen=True, slots=True)
class GaeSanityRule:
    """Fires when `reward_advantage_corr` is not null and `< threshold`."""

    enabled: bool = True
    threshold: float = 0.0


_Rule = EntropyCollapseRule | KlSpikeRule | GradExplosionRule | GaeSanityRule


@dataclass(frozen=True, slots=True)
class RulesConfig:
    """The settings of every rule; a field per rule, named as in the rules file."""

    entropy_collapse: EntropyCollapseRule = field(default_factory=EntropyCollapseRule)
    kl_spike: KlSpikeRule = field(default_factory=KlSpikeRule)
    grad_explosion: GradExplosionRule = field(default_factory=GradExplosionRule)
    gae_sanity: GaeSanityRule = field(default_factory=GaeSanityRule)

    @classmethod
    def default(cls) -> RulesConfig:
        """Every rule enabled with the defaults of SPEC §6."""
        return cls()


assert tuple(f.name for f in fields(RulesConfig)) == RULE_NAMES, "RulesConfig and RULE_NAMES differ"


def _check_number(value: Any, where: str, key: str) -> float:
    # bool is an int subclass, and `enabled = true` typed into `threshold` must not read as 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RulesError(f"{where} key {key!r} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise RulesError(f"{where} key {key!r} must be finite, got {value!r}")
    if key == "floor" and number < 0:
        raise RulesError(f"{where} key 'floor' must be >= 0, got {value!r}")
    if key == "ratio" and not 0 <= number <= 1:
        raise RulesError(f"{where} key 'ratio' must be in [0, 1], got {value!r}")
    return number


def _rule_from_table(default: _Rule, table: Any, where: str) -> _Rule:
    if not isinstance(table, Mapping):
        raise RulesError(f"{where} must be a table, got {table!r}")
    known = [f.name for f in fields(default)]
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise RulesError(f"{where} has unknown key {key!r} (known: {', '.join(known)})")
        if key == "enabled":
            if not isinstance(value, bool):
                raise RulesError(f"{where} key 'enabled' must be true or false, got {value!r}")
            changes[key] = value
        else:
            changes[key] = _check_number(value, where, key)
    return replace(default, **changes)


def rules_from_mapping(data: Mapping[str, Any], source: str = "<rules>") -> RulesConfig:
    """Build a `RulesConfig` from a parsed rules mapping (one table per rule); unset values keep defaults.

    `source` names the origin in error messages. Raises `RulesError` for an unknown rule or key, a value
    of the wrong type, a non-finite number, `floor < 0` or `ratio` outside [0, 1].
    """
    default = RulesConfig.default()
    rules: dict[str, _Rule] = {}
    for name, table in data.items():
        if name not in RULE_NAMES:
            raise RulesError(f"{source}: unknown rule {name!r} (known: {', '.join(RULE_NAMES)})")
        rules[name] = _rule_from_table(getattr(default, name), table, f"{source}: rule [{name}]")
    return replace(default, **rules)


def load_rules(path: str | os.PathLike[str]) -> RulesConfig:
    """Read a TOML rules file (SPEC §6) into a `RulesConfig`; every problem is a one-line `RulesError`."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise RulesError(f"{source}: cannot read rules file: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        message = " ".join(str(exc).split())
        raise RulesError(f"{source}: invalid TOML: {message}") from exc
    return rules_from_mapping(data, source)


@dataclass(frozen=True, slots=True)
class Transition:
    """A rule of a run changing state at one record (SPEC §7 `watch` output, the `ppo.telemetry.alerts` topic).

    `threshold` is the one the value was compared with; for `entropy_collapse` the computed
    `max(floor, ratio × first batch_entropy_mean)`.
    """

    run_id: str
    rule: str
    state: TransitionState
    epoch: int
    log_stream_offset: int | None
    value: float
    threshold: float

    def to_json_dict(self) -> dict[str, Any]:
        """The transition as the JSON object of SPEC §7, keys in the spec's order."""
        return {
            "run_id": self.run_id,
            "rule": self.rule,
            "state": self.state,
            "epoch": self.epoch,
            "log_stream_offset": self.log_stream_offset,
            "value": self.value,
            "threshold": self.threshold,
        }


@dataclass(slots=True)
class _RunState:
    first_entropy: float | None = None
    firing: set[str] = field(default_factory=set)


# A rule's reading of one record: (value, threshold, condition), or None when the value is null.
_Reading = tuple[float, float, bool] | None


def _read_entropy_collapse(rule: EntropyCollapseRule, record: EpochSummary, run: _RunState) -> _Reading:
    value = record.batch_entropy_mean
    if value is None or run.first_entropy is None:
        return None
    threshold = max(rule.floor, rule.ratio * run.first_entropy)
    return value, threshold, value < threshold


def _read_kl_spike(rule: KlSpikeRule, record: EpochSummary, run: _RunState) -> _Reading:
    value = record.kl_divergence_max
    return None if value is None else (value, rule.threshold, value > rule.threshold)


def _read_grad_explosion(rule: GradExplosionRule, record: EpochSummary, run: _RunState) -> _Reading:
    value = record.grad_norm_max
    return None if value is None else (value, rule.threshold, value > rule.threshold)


def _read_gae_sanity(rule: GaeSanityRule, record: EpochSummary, run: _RunState) -> _Reading:
    value = record.reward_advantage_corr
    return None if value is None else (value, rule.threshold, value < rule.threshold)


_READERS: dict[str, Callable[[Any, EpochSummary, _RunState], _Reading]] = {
    "entropy_collapse": _read_entropy_collapse,
    "kl_spike": _read_kl_spike,
    "grad_explosion": _read_grad_explosion,
    "gae_sanity": _read_gae_sanity,
}


class Watch:
    """Evaluates the alert rules on each record of each run and reports the state transitions."""

    def __init__(self, config: RulesConfig | None = None, state: Mapping[str, Any] | None = None) -> None:
        """Watch with `config` (the defaults when None), resuming from a `state_snapshot()` when given."""
        self._config = config if config is not None else RulesConfig.default()
        self._runs: dict[str, _RunState] = {}
        if state is not None:
            self.restore(state)

    @property
    def config(self) -> RulesConfig:
        """The rules this watch evaluates."""
        return self._config

    def observe(self, record: EpochSummary) -> list[Transition]:
        """Evaluate the enabled rules on one record; the transitions it causes, in rule order.

        A v1.0 record is not evaluated and leaves the state untouched.
        """
        if record.telemetry_version != "1.1":
            return []
        run = self._runs.setdefault(record.run_id, _RunState())
        # Kept whether or not entropy_collapse is enabled, so the rule's reference survives a config change.
        if run.first_entropy is None and record.batch_entropy_mean is not None:
            run.first_entropy = record.batch_entropy_mean
        transitions: list[Transition] = []
        for name in RULE_NAMES:
            rule = getattr(self._config, name)
            if not rule.enabled:
                continue
            reading = _READERS[name](rule, record, run)
            if reading is None:
                continue
            value, threshold, condition = reading
            if condition == (name in run.firing):
                continue
            if condition:
                run.firing.add(name)
            else:
                run.firing.discard(name)
            transitions.append(
                Transition(
                    run_id=record.run_id,
                    rule=name,
                    state="firing" if condition else "resolved",
                    epoch=record.epoch,
                    log_stream_offset=record.log_stream_offset,
                    value=float(value),
                    threshold=float(threshold),
                )
            )
        return transitions

    def state_snapshot(self) -> dict[str, Any]:
        """The rule state of every run as a JSON-serialisable dict, for `restore` after a restart."""
        return {
            "version": _SNAPSHOT_VERSION,
            "runs": {
                run_id: {
                    "first_batch_entropy_mean": run.first_entropy,
                    "firing": [name for name in RULE_NAMES if name in run.firing],
                }
                for run_id, run in self._runs.items()
            },
        }

    def run_state(self, run_id: str) -> dict[str, Any] | None:
        """One run's entry of `state_snapshot()` (None for a run never seen), for per-run persistence."""
        run = self._runs.get(run_id)
        if run is None:
            return None
        return {"first_batch_entropy_mean": run.first_entropy, "firing": [n for n in RULE_NAMES if n in run.firing]}

    def restore_run(self, run_id: str, entry: Mapping[str, Any] | None) -> None:
        """Take back one run's `run_state` (None forgets the run); raises `WatchStateError` if malformed."""
        if entry is None:
            self._runs.pop(run_id, None)
            return
        probe = Watch(self._config)
        probe.restore({"version": _SNAPSHOT_VERSION, "runs": {run_id: entry}})
        self._runs[run_id] = probe._runs[run_id]

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
        restored: dict[str, _RunState] = {}
        for run_id, entry in runs.items():
            if not isinstance(entry, Mapping):
                raise WatchStateError(f"watch state of run {run_id!r} is not an object")
            first = entry.get("first_batch_entropy_mean")
            if first is not None and (isinstance(first, bool) or not isinstance(first, (int, float))):
                raise WatchStateError(f"watch state of run {run_id!r}: first_batch_entropy_mean is {first!r}")
            firing = entry.get("firing", [])
            if not isinstance(firing, list) or any(name not in RULE_NAMES for name in firing):
                raise WatchStateError(f"watch state of run {run_id!r}: firing is {firing!r}")
            restored[run_id] = _RunState(
                first_entropy=None if first is None else float(first), firing=set(firing)
            )
        self._runs = restored
