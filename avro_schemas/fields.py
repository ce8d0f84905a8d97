"""The one description of each `EpochSummary` field (SPEC §1): the field table.

Names, Avro types and the version that added each field are read from the `.avsc` files. What the
schemas cannot say is written here once, as data: each field's meaning, its range, whether a valid
record may hold null in it, `run_id`'s pattern, the valid `data_mode` symbols, an example value, and
the cross-field rules. Everything else that describes a field is derived from this table: the models'
field lists (`avro_schemas.models`), the validator's full check and its compiled fast path
(`consumers.validator`), the test fixtures, and the docs table (`python -m avro_schemas.fields`).

A row layout (e.g. `struct.pack` of an epoch's numbers) takes each numeric field's `Field.struct_code`;
`struct_format` joins them.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .registry import load_family

__all__ = [
    "FieldType",
    "Range",
    "Pattern",
    "Field",
    "Comparison",
    "ZeroExactlyInMode",
    "CrossFieldRule",
    "FIELDS",
    "CROSS_FIELD_RULES",
    "SUPPORTED_VERSIONS",
    "LATEST_VERSION",
    "VERSION_FIELDS",
    "NULLABLE_FIELDS",
    "AVRO_INT_BOUNDS",
    "RUN_ID_PATTERN",
    "is_valid_run_id",
    "example_record",
    "struct_format",
    "markdown_table",
]

# The inclusive range of each Avro integer type: a value outside it cannot be encoded.
AVRO_INT_BOUNDS: dict[str, tuple[int, int]] = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}

_STRUCT_CODES = {"int": "q", "long": "q", "double": "d"}


@dataclass(frozen=True, slots=True)
class FieldType:
    """A record field's Avro type reduced to what validation needs."""

    avro_type: str
    """"string", "int", "long", "double" or "enum"."""
    nullable: bool
    """The Avro type is a union with null (which is not the same as a valid record allowing null)."""
    symbols: tuple[str, ...] = ()
    """An enum's symbols, in schema order."""


def _field_type(avro: Any) -> FieldType:
    nullable = False
    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        nullable = len(branches) < len(avro)
        (avro,) = branches
    if isinstance(avro, dict):
        if avro["type"] == "enum":
            return FieldType("enum", nullable, tuple(avro["symbols"]))
        avro = avro["type"]
    return FieldType(avro, nullable)


def _number(value: float) -> str:
    """A bound as SPEC §1 writes it: `0`, `1`, `-1`, `1e-09`."""
    return f"{value:g}"


@dataclass(frozen=True, slots=True)
class Range:
    """The interval a numeric field's value must lie in; None for an open side.

    Doubles are also finite (SPEC §2 forbids NaN and ±Infinity everywhere), and integers lie within
    their Avro type's range (`AVRO_INT_BOUNDS`); neither is repeated here.
    """

    min: float | None = None
    max: float | None = None
    min_inclusive: bool = True
    max_inclusive: bool = True

    def contains(self, value: float) -> bool:
        """True when the finite `value` lies in the range."""
        if self.min is not None and not (value >= self.min if self.min_inclusive else value > self.min):
            return False
        return self.max is None or (value <= self.max if self.max_inclusive else value < self.max)

    def describe(self) -> str:
        """The range as the validator's messages and SPEC §1 say it: `≥ 0`, `> 0`, `≤ 1`, `in [0, 1]`."""
        if self.min is not None and self.max is not None:
            opening, closing = "[" if self.min_inclusive else "(", "]" if self.max_inclusive else ")"
            return f"in {opening}{_number(self.min)}, {_number(self.max)}{closing}"
        if self.min is not None:
            return f"{'≥' if self.min_inclusive else '>'} {_number(self.min)}"
        if self.max is not None:
            return f"{'≤' if self.max_inclusive else '<'} {_number(self.max)}"
        return "any value"


@dataclass(frozen=True, slots=True)
class Pattern:
    """The text a string field must match in full, and how a person says it."""

    regex: re.Pattern[str]
    description: str

    def matches(self, value: str) -> bool:
        """True when all of `value` matches."""
        return self.regex.fullmatch(value) is not None


RUN_ID_PATTERN = Pattern(re.compile(r"[A-Za-z0-9._:-]{1,128}"), "1-128 chars of [A-Za-z0-9._:-]")


def is_valid_run_id(run_id: Any) -> bool:
    """True for 1-128 chars of [A-Za-z0-9._:-] (SPEC §1)."""
    return isinstance(run_id, str) and RUN_ID_PATTERN.matches(run_id)


@dataclass(frozen=True, slots=True)
class Field:
    """One row of the field table: what the schema says of a field, and the rules SPEC §1 adds."""

    name: str
    type: FieldType
    """The Avro type, from the `.avsc`."""
    since: str
    """The telemetry version that added the field."""
    meaning: str
    """One line: what the value is (SPEC §1)."""
    example: Any
    """A valid value; the examples of all fields together make a valid record (`example_record`)."""
    nullable: bool = False
    """A valid record may hold null here (v1.1 fields are `["null", T]` only for schema evolution)."""
    range: Range | None = None
    pattern: Pattern | None = None
    valid_symbols: tuple[str, ...] = ()
    """For an enum, the symbols a valid record may carry (a subset of `type.symbols`)."""

    @property
    def avro_type(self) -> str:
        """"string", "int", "long", "double" or "enum"."""
        return self.type.avro_type

    @property
    def struct_code(self) -> str | None:
        """The `struct` format code of a numeric field (`q` for int and long, `d` for double); else None."""
        return _STRUCT_CODES.get(self.type.avro_type)

    def rule_text(self) -> str:
        """The field's own rules in words, for the docs table (cross-field rules are not included)."""
        parts = []
        if self.avro_type == "double":
            parts.append("finite")
        if self.range is not None:
            parts.append(self.range.describe())
        if self.pattern is not None:
            parts.append(self.pattern.description)
        if self.valid_symbols:
            parts.append("one of " + ", ".join(self.valid_symbols))
        if self.nullable:
            parts.append("null allowed")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Comparison:
    """`field` must be ≤ or ≥ `other`, give or take `tolerance`: one error, on `field`, named `rule`."""

    rule: str
    field: str
    op: str
    """"≤" or "≥"."""
    other: str
    tolerance: float = 0.0

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields the rule reads."""
        return (self.field, self.other)

    @property
    def rules(self) -> tuple[str, ...]:
        """The rule names it reports."""
        return (self.rule,)

    def holds(self, value: float, other_value: float) -> bool:
        """True when `value` (of `field`) and `other_value` (of `other`) meet the rule."""
        # no `+ 0.0` when exact: it would turn a large int into an inexact float
        if self.op == "≤":
            return value <= (other_value + self.tolerance if self.tolerance else other_value)
        return value >= (other_value - self.tolerance if self.tolerance else other_value)

    def violations(self, values: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
        """(field, rule, message) for the rule broken by `values` (each field present has passed its own
        checks); nothing when it holds or when either field is absent."""
        if self.field in values and self.other in values:
            value, other_value = values[self.field], values[self.other]
            if not self.holds(value, other_value):
                yield self.field, self.rule, f"{self.field} ({value}) must be {self.op} {self.other} ({other_value})"

    def python_condition(self) -> str:
        """The rule as a Python expression over variables named after the fields."""
        op = "<=" if self.op == "≤" else ">="
        sign = "+" if self.op == "≤" else "-"
        bound = f"{self.other} {sign} {self.tolerance!r}" if self.tolerance else self.other
        return f"{self.field} {op} {bound}"

    def describe(self) -> str:
        """The rule in words, for the docs."""
        tolerance = f" {'+' if self.op == '≤' else '−'} {_number(self.tolerance)}" if self.tolerance else ""
        return f"`{self.field}` {self.op} `{self.other}`{tolerance}"


@dataclass(frozen=True, slots=True)
class ZeroExactlyInMode:
    """Each of `counters` is 0 exactly when `mode_field` is `zero_mode`, and ≥ 1 under any other valid mode."""

    mode_field: str
    zero_mode: str
    counters: tuple[str, ...]
    zero_rule: str
    """The rule broken by a non-zero counter under `zero_mode`."""
    positive_rule: str
    """The rule broken by a counter below 1 under another mode."""

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields the rule reads."""
        return (self.mode_field, *self.counters)

    @property
    def rules(self) -> tuple[str, ...]:
        """The rule names it reports."""
        return (self.zero_rule, self.positive_rule)

    def holds(self, mode: str, counter: int) -> bool:
        """True when `counter` suits `mode` (a valid symbol)."""
        return counter == 0 if mode == self.zero_mode else counter >= 1

    def violations(self, values: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
        """(field, rule, message) for each counter in `values` that does not suit the mode in `values`."""
        mode = values.get(self.mode_field)
        if mode is None:
            return
        for name in self.counters:
            if name not in values or self.holds(mode, values[name]):
                continue
            value = values[name]
            if mode == self.zero_mode:
                yield name, self.zero_rule, f"{name} must be 0 when {self.mode_field} is {mode}, got {value}"
            else:
                yield name, self.positive_rule, f"{name} must be ≥ 1 when {self.mode_field} is {mode}, got {value}"

    def python_condition(self) -> str:
        """The rule as a Python expression over variables named after the fields (the mode already valid)."""
        mode, zero_mode = self.mode_field, repr(self.zero_mode)
        zero = " and ".join(f"{name} == 0" for name in self.counters)
        positive = " and ".join(f"{name} >= 1" for name in self.counters)
        return f"(({mode} == {zero_mode} and {zero}) or ({mode} != {zero_mode} and {positive}))"

    def describe(self) -> str:
        """The rule in words, for the docs."""
        names = " and ".join(f"`{name}`" for name in self.counters)
        return f"{names}: 0 exactly when `{self.mode_field}` is `{self.zero_mode}`, ≥ 1 otherwise"


CrossFieldRule = Comparison | ZeroExactlyInMode

# --- the schemas ---------------------------------------------------------------------------------

_EPOCH_SUMMARY = load_family("epoch_summary")

SUPPORTED_VERSIONS: tuple[str, ...] = tuple(v.version for v in _EPOCH_SUMMARY)
LATEST_VERSION: str = SUPPORTED_VERSIONS[-1]
# Interned: `EpochSummary.from_dict` passes these names as keyword arguments, and interned keys match
# the dataclass's parameters by identity (from_dict takes ~5 µs instead of ~7.5 µs).
VERSION_FIELDS: dict[str, tuple[str, ...]] = {
    v.version: tuple(sys.intern(name) for name in v.field_names) for v in _EPOCH_SUMMARY
}


# --- SPEC §1, written once ----------------------------------------------------------------------

_AT_LEAST_0 = Range(min=0)
_AT_LEAST_1 = Range(min=1)
_ABOVE_0 = Range(min=0, min_inclusive=False)


def _row(meaning: str, example: Any, **rules: Any) -> dict[str, Any]:
    return {"meaning": meaning, "example": example, **rules}


# Per field: meaning, a valid example, and the rules the .avsc cannot carry. The examples make a valid,
# healthy-looking record (the consumer tests build on it: no default alert rule trips on it).
_SPEC_ROWS: dict[str, dict[str, Any]] = {
    "telemetry_version": _row(
        "the record's schema version: " + " or ".join(f'"{v}"' for v in SUPPORTED_VERSIONS) + " exactly", LATEST_VERSION
    ),
    "run_id": _row("the training run the record belongs to", "run", pattern=RUN_ID_PATTERN),
    "epoch": _row("counts epochs within the run", 0, range=_AT_LEAST_0),
    "global_step": _row("environment ticks consumed by the run so far", 100, range=_AT_LEAST_0),
    "timestamp_ms": _row("Unix milliseconds at the end of the epoch", 1_700_000_000_000, range=_ABOVE_0),
    "policy_loss": _row("clipped-surrogate loss, mean over minibatches", 0.1),
    "value_loss": _row("value-function loss, mean over minibatches", 0.5, range=_AT_LEAST_0),
    "kl_divergence": _row(
        "mean over minibatches of the k3 estimator mean((ratio-1) - log ratio)", 0.01, range=_AT_LEAST_0
    ),
    "clip_fraction": _row("share of samples with abs(ratio-1) > clip_range", 0.1, range=Range(min=0, max=1)),
    "explained_variance": _row(
        "1 - Var(returns - values)/Var(returns); null when Var(returns) = 0", 0.5, range=Range(max=1), nullable=True
    ),
    "learning_rate": _row("the optimizer's learning rate in the epoch", 3e-4, range=_ABOVE_0),
    "mean_episode_return": _row(
        "mean return of episodes finished in the data feeding the epoch; null when none finished", 10.0, nullable=True
    ),
    "num_samples": _row("samples in the epoch's dataset", 64, range=_AT_LEAST_1),
    "num_minibatches": _row("minibatches the epoch's dataset was split into", 4, range=_AT_LEAST_1),
    "epoch_duration_sec": _row("wall-clock seconds of the epoch", 1.0, range=_AT_LEAST_0),
    "data_mode": _row(
        "replay: dataset from a replay manifest; rollout: one capture from the in-memory rollout buffer; "
        "mixed: alternating rollout/train cycles",
        "rollout",
        valid_symbols=("replay", "rollout", "mixed"),  # `unknown` exists only for Avro enum evolution
    ),
    "cycle_id": _row("incremented each time capture_rollout runs before training", 1, range=_AT_LEAST_0),
    "batch_entropy_mean": _row("mean over minibatches of the minibatch's mean policy entropy (nats)", 1.0),
    "batch_entropy_std": _row("population std of the same per-minibatch entropy means", 0.1, range=_AT_LEAST_0),
    "grad_norm_max": _row(
        "max over minibatches of the global L2 gradient norm before clipping", 1.0, range=_AT_LEAST_0
    ),
    "kl_divergence_max": _row("max over minibatches of the same KL estimator", 0.02, range=_AT_LEAST_0),
    "reward_advantage_corr": _row(
        "Pearson correlation of per-sample rewards and advantages over the epoch's dataset; "
        "null when either variance is zero",
        0.5,
        range=Range(min=-1, max=1),
        nullable=True,
    ),
    "rollout_ticks": _row("environment ticks captured for the dataset feeding the epoch", 64, range=_AT_LEAST_0),
    "log_stream_offset": _row(
        "global count of records written by the stream writer; never resets on rotation", 0, range=_AT_LEAST_0
    ),
}

CROSS_FIELD_RULES: tuple[CrossFieldRule, ...] = (
    Comparison("num_minibatches_le_num_samples", "num_minibatches", "≤", "num_samples"),
    Comparison("kl_divergence_max_ge_mean", "kl_divergence_max", "≥", "kl_divergence", tolerance=1e-9),
    ZeroExactlyInMode("data_mode", "replay", ("cycle_id", "rollout_ticks"), "replay_zero", "rollout_positive"),
)
"""Rules between fields, in the order the validator reports them."""

# --- the table: the .avsc files joined with the rows above --------------------------------------


def _build_table() -> dict[str, Field]:
    avro_types = {f["name"]: _field_type(f["type"]) for v in _EPOCH_SUMMARY for f in v.schema["fields"]}
    since = {}
    for version in SUPPORTED_VERSIONS:
        for name in VERSION_FIELDS[version]:
            since.setdefault(name, version)
    names = VERSION_FIELDS[LATEST_VERSION]
    if set(names) != set(_SPEC_ROWS):
        raise AssertionError(f"field table and schema differ: {sorted(set(names) ^ set(_SPEC_ROWS))}")
    return {name: Field(name, avro_types[name], since[name], **_SPEC_ROWS[name]) for name in names}


FIELDS: dict[str, Field] = _build_table()
"""Every field of the latest version, in schema order."""

NULLABLE_FIELDS: frozenset[str] = frozenset(f.name for f in FIELDS.values() if f.nullable)
"""Fields that may be null in a valid record; every other field must carry a value."""


def _check_table() -> None:
    """The written rules must fit the schema they describe; a mismatch is a bug in this module."""
    for field in FIELDS.values():
        assert not field.nullable or field.type.nullable, f"{field.name}: null allowed but the Avro type has no null"
        # SPEC §1 makes a first-version field nullable exactly where its Avro type is
        first_version = field.since == SUPPORTED_VERSIONS[0]
        assert not first_version or field.nullable == field.type.nullable, f"{field.name}: nullability"
        assert set(field.valid_symbols) <= set(field.type.symbols), f"{field.name}: symbols not in the schema"
        assert bool(field.valid_symbols) == (field.avro_type == "enum"), f"{field.name}: valid symbols"
        assert field.range is None or field.struct_code is not None, f"{field.name}: a range on a non-numeric field"
        assert field.pattern is None or field.avro_type == "string", f"{field.name}: a pattern on a non-string field"
    for rule in CROSS_FIELD_RULES:
        assert set(rule.fields) <= set(FIELDS), f"{rule}: unknown field"


_check_table()


def example_record(version: str = LATEST_VERSION) -> dict[str, Any]:
    """A valid record of `version` made of the table's examples (a new dict each call)."""
    record = {name: FIELDS[name].example for name in VERSION_FIELDS[version]}
    record["telemetry_version"] = version
    return record


def struct_format(names: Iterable[str], byte_order: str = "<") -> str:
    """The `struct` format of a row holding the numeric fields `names` in that order, e.g. `<qqd`."""
    codes = []
    for name in names:
        code = FIELDS[name].struct_code
        if code is None:
            raise ValueError(f"{name} is not a numeric field; it has no struct code")
        codes.append(code)
    return byte_order + "".join(codes)


def markdown_table() -> str:
    """The field table as Markdown: name, Avro type, version added, rules, meaning; then the cross-field rules."""
    lines = ["| field | Avro type | since | rule | meaning |", "|---|---|---|---|---|"]
    for field in FIELDS.values():
        avro = field.avro_type if field.avro_type != "enum" else "enum {" + ", ".join(field.type.symbols) + "}"
        if field.type.nullable:
            avro = f'["null", {avro}]'
        lines.append(f"| `{field.name}` | {avro} | {field.since} | {field.rule_text()} | {field.meaning} |")
    lines += ["", "Cross-field rules:", ""]
    lines += [f"- {' / '.join(f'`{name}`' for name in rule.rules)}: {rule.describe()}" for rule in CROSS_FIELD_RULES]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
