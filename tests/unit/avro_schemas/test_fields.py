"""The field table (`avro_schemas.fields`): it matches the schemas and SPEC §1, and what is derived from it
(models, the validator's checks and fast path, row layouts, docs) follows it."""

from __future__ import annotations

import itertools
import math
import struct
from typing import Any

import pytest

from avro_schemas.codec import epoch_summary_codec
from avro_schemas.fields import (
    CROSS_FIELD_RULES,
    FIELDS,
    LATEST_VERSION,
    NULLABLE_FIELDS,
    RUN_ID_PATTERN,
    SUPPORTED_VERSIONS,
    VERSION_FIELDS,
    Comparison,
    Range,
    ZeroExactlyInMode,
    example_record,
    is_valid_run_id,
    markdown_table,
    struct_format,
)
from avro_schemas.models import FIELD_TYPES, V1_1_ADDED_FIELDS, EpochSummary
from avro_schemas.registry import load_family
from consumers.validator import RULES, _fast_path_source, _fast_valid_1_1, validate_record

RANGED = [name for name, row in FIELDS.items() if row.range is not None]


def test_table_has_every_schema_field_in_schema_order():
    assert tuple(FIELDS) == VERSION_FIELDS[LATEST_VERSION]
    for version in load_family("epoch_summary"):
        for field in version.schema["fields"]:
            assert FIELDS[field["name"]].type.nullable == (isinstance(field["type"], list) and "null" in field["type"])


def test_since_is_the_first_version_holding_the_field():
    assert [name for name, row in FIELDS.items() if row.since == "1.0"] == list(VERSION_FIELDS["1.0"])
    assert tuple(name for name, row in FIELDS.items() if row.since == "1.1") == V1_1_ADDED_FIELDS
    assert SUPPORTED_VERSIONS == ("1.0", "1.1")


def test_nullable_fields_are_the_spec_ones_and_every_v1_1_field_but_one_is_not_null():
    assert NULLABLE_FIELDS == {"explained_variance", "mean_episode_return", "reward_advantage_corr"}
    assert [name for name in V1_1_ADDED_FIELDS if FIELDS[name].nullable] == ["reward_advantage_corr"]
    assert all(FIELDS[name].type.nullable for name in V1_1_ADDED_FIELDS)  # in Avro, for schema evolution


def test_data_mode_valid_symbols_leave_out_the_evolution_only_unknown():
    row = FIELDS["data_mode"]
    assert row.type.symbols == ("replay", "rollout", "mixed", "unknown")
    assert row.valid_symbols == ("replay", "rollout", "mixed")


def test_every_field_has_a_one_line_meaning():
    for row in FIELDS.values():
        assert row.meaning and "\n" not in row.meaning, row.name


def test_models_field_types_are_the_table_types():
    assert FIELD_TYPES == {name: row.type for name, row in FIELDS.items()}
    assert EpochSummary.__slots__ == VERSION_FIELDS[LATEST_VERSION]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_example_record_is_valid_and_round_trips(version: str):
    record = example_record(version)
    assert tuple(record) == VERSION_FIELDS[version]
    verdict = validate_record(record)
    assert verdict.status == "valid", verdict.errors
    assert verdict.warnings == []
    codec = epoch_summary_codec()
    assert codec.decode(codec.encode(record)) == record
    assert example_record(version) is not example_record(version)  # each call a fresh dict


def test_example_v1_1_record_takes_the_fast_path():
    assert _fast_valid_1_1(example_record("1.1"))


# --- struct codes --------------------------------------------------------------------------------


def test_struct_code_is_q_for_integers_d_for_doubles_none_otherwise():
    codes = {"int": "q", "long": "q", "double": "d", "string": None, "enum": None}
    for row in FIELDS.values():
        assert row.struct_code == codes[row.avro_type], row.name


def test_struct_format_packs_the_example_values_of_numeric_fields():
    names = [name for name, row in FIELDS.items() if row.struct_code is not None and not row.nullable]
    layout = struct.Struct(struct_format(names))
    values = [example_record()[name] for name in names]
    assert layout.unpack(layout.pack(*values)) == tuple(values)
    assert struct_format(["epoch", "policy_loss"]) == "<qd"
    assert struct_format(["epoch"], byte_order="=") == "=q"


@pytest.mark.parametrize("name", ["run_id", "data_mode", "telemetry_version"])
def test_struct_format_refuses_a_field_that_is_not_numeric(name: str):
    with pytest.raises(ValueError, match=f"{name} is not a numeric field"):
        struct_format(["epoch", name])


# --- ranges, pattern ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bounds,text,inside,outside",
    [
        (Range(min=0), "≥ 0", [0, 0.0, 5e-324, 10**30], [-1, -5e-324]),
        (Range(min=0, min_inclusive=False), "> 0", [5e-324, 1], [0, 0.0, -1]),
        (Range(max=1), "≤ 1", [1, 1.0, -1e308], [math.nextafter(1.0, 2.0), 2]),
        (Range(min=0, max=1), "in [0, 1]", [0, 0.5, 1], [-1e-12, 1.0000001]),
        (Range(min=-1, max=1), "in [-1, 1]", [-1.0, 1.0], [-1.5, 1.5]),
        (Range(min=0, max=1, min_inclusive=False, max_inclusive=False), "in (0, 1)", [0.5], [0, 1]),
    ],
)
def test_range_contains_and_describes(bounds: Range, text: str, inside: list[float], outside: list[float]):
    assert bounds.describe() == text
    assert all(bounds.contains(value) for value in inside)
    assert not any(bounds.contains(value) for value in outside)


def test_run_id_pattern_is_1_to_128_chars_of_the_spec_alphabet():
    assert RUN_ID_PATTERN.description == "1-128 chars of [A-Za-z0-9._:-]"
    assert all(is_valid_run_id(run_id) for run_id in ["a", "a" * 128, "Run-1.2:x_y", "0"])
    assert not any(is_valid_run_id(run_id) for run_id in ["", "a" * 129, "a b", "run/1", "é", "a\n", None, 3])


# --- the validator follows the table -------------------------------------------------------------


def _just_outside(bounds: Range, integer: bool) -> list[float]:
    """Values just outside each side of `bounds`."""
    out = []
    for bound, inclusive, direction in ((bounds.min, bounds.min_inclusive, -1), (bounds.max, bounds.max_inclusive, 1)):
        if bound is None:
            continue
        if not inclusive:
            out.append(bound if integer else float(bound))
        else:
            out.append(bound + direction if integer else math.nextafter(float(bound), direction * math.inf))
    return out


@pytest.mark.parametrize("name", RANGED)
def test_validator_reports_a_value_just_outside_a_field_range_with_the_table_description(name: str):
    row = FIELDS[name]
    for value in _just_outside(row.range, row.avro_type != "double"):
        record = {**example_record(), name: value}
        assert not _fast_valid_1_1(record)
        errors = [(e.field, e.rule, e.message) for e in validate_record(record).errors]
        assert (name, "range", f"{name} must be {row.range.describe()}, got {value!r}") in errors, errors


@pytest.mark.parametrize("name", [n for n in VERSION_FIELDS[LATEST_VERSION] if n != "telemetry_version"])
def test_fast_path_source_reads_and_checks_every_field(name: str):
    source = _fast_path_source(LATEST_VERSION)
    assert f"{name} = record[{name!r}]" in source
    assert f"and type({name}) is" in source or f"and ({name} is None or (type({name}) is" in source


def test_cross_field_rules_report_rules_the_validator_names():
    assert {rule_name for rule in CROSS_FIELD_RULES for rule_name in rule.rules} <= set(RULES)


def _condition_holds(rule: Comparison | ZeroExactlyInMode, values: dict[str, Any]) -> bool:
    return eval(rule.python_condition(), {}, dict(values))  # noqa: S307 - the table's own expression


COMPARED_VALUES = [0, 1, 2, 0.0, 0.01, 0.01 - 1e-9, 0.01 - 2e-9, 2**63 - 1, 2**63 - 2]


@pytest.mark.parametrize("rule", [r for r in CROSS_FIELD_RULES if isinstance(r, Comparison)], ids=lambda r: r.rule)
def test_comparison_python_condition_agrees_with_its_violations(rule: Comparison):
    for value, other in itertools.product(COMPARED_VALUES, repeat=2):
        values = {rule.field: value, rule.other: other}
        broken = list(rule.violations(values))
        assert _condition_holds(rule, values) == (not broken), values
        if broken:
            message = f"{rule.field} ({value}) must be {rule.op} {rule.other} ({other})"
            assert broken == [(rule.field, rule.rule, message)]


def test_mode_rule_python_condition_agrees_with_its_violations():
    (rule,) = [r for r in CROSS_FIELD_RULES if isinstance(r, ZeroExactlyInMode)]
    for mode in FIELDS[rule.mode_field].valid_symbols:
        for counts in itertools.product([0, 1, 2], repeat=len(rule.counters)):
            values = {rule.mode_field: mode, **dict(zip(rule.counters, counts))}
            broken = list(rule.violations(values))
            assert _condition_holds(rule, values) == (not broken), values
            for name, rule_name, message in broken:
                assert rule_name == (rule.zero_rule if mode == rule.zero_mode else rule.positive_rule)
                assert message.startswith(f"{name} must be ")


def test_kl_rule_tolerance_is_one_nano():
    (kl_rule,) = [r for r in CROSS_FIELD_RULES if getattr(r, "rule", "") == "kl_divergence_max_ge_mean"]
    assert kl_rule.holds(0.01 - 1e-9, 0.01)
    assert not kl_rule.holds(0.01 - 2e-9, 0.01)


# --- docs ----------------------------------------------------------------------------------------


def test_markdown_table_has_a_row_per_field_and_every_cross_field_rule():
    table = markdown_table()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(FIELDS)
    for row in FIELDS.values():
        assert row.meaning in table
    for rule in CROSS_FIELD_RULES:
        assert all(f"`{name}`" in table for name in rule.rules)
    assert "| `clip_fraction` | double | 1.0 | finite, in [0, 1] |" in table
