"""The static FULL_TRANSITIVE check, cross-checked against what fastavro actually does at read time."""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.read import SchemaResolutionError

from avro_schemas.compatibility import (
    Incompatibility,
    assert_compatible,
    can_read,
    check_all,
    check_family,
    check_pair,
)
from avro_schemas.errors import CompatibilityError, SchemaLoadError
from avro_schemas.registry import load_family, schema_from_json

INCOMPATIBLE_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "incompatible"

PRIMITIVES = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]
PROMOTIONS = {
    ("int", "long"),
    ("int", "float"),
    ("int", "double"),
    ("long", "float"),
    ("long", "double"),
    ("float", "double"),
    ("string", "bytes"),
    ("bytes", "string"),
}
# Values outside the narrower type's range, so a wrong union-branch guess by the writer shows up.
SAMPLE_VALUES: dict[str, Any] = {
    "null": None,
    "boolean": True,
    "int": 7,
    "long": 2**40,
    "float": 1.5,
    "double": 2.25,
    "bytes": b"\x01\x02",
    "string": "s",
}
VARIANTS = 6  # enough to visit every union branch and enum symbol used below


def record(name: str, *fields: dict[str, Any], namespace: str = "test.compat", **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": namespace, "fields": list(fields), **extra}


def field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def sample(schema: Any, names: dict[str, Any], variant: int, depth: int = 0) -> Any:
    """A datum for a fastavro-parsed schema; `variant` picks union branches and enum symbols."""
    if isinstance(schema, str):
        return sample(names[schema], names, variant, depth) if schema in names else SAMPLE_VALUES[schema]
    if isinstance(schema, list):
        if depth > 4 and "null" in schema:
            return None  # ends recursive types
        return sample(schema[variant % len(schema)], names, variant, depth + 1)
    kind = schema["type"]
    if kind in SAMPLE_VALUES:
        return SAMPLE_VALUES[kind]
    if kind == "record":
        return {f["name"]: sample(f["type"], names, variant, depth + 1) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][variant % len(schema["symbols"])]
    if kind == "fixed":
        return bytes(schema["size"])
    if kind == "array":
        return [sample(schema["items"], names, variant, depth + 1)] if depth <= 4 else []
    if kind == "map":
        return {"k": sample(schema["values"], names, variant, depth + 1)} if depth <= 4 else {}
    raise AssertionError(f"no sample for {schema!r}")


def fastavro_reads(reader: Any, writer: Any) -> bool:
    """Whether fastavro reads every sample written with `writer` using `reader`."""
    names: dict[str, Any] = {}
    parsed_writer = fastavro.parse_schema(writer, named_schemas=names)
    for variant in range(VARIANTS):
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, parsed_writer, sample(parsed_writer, names, variant))
        buffer.seek(0)
        try:
            fastavro.schemaless_reader(buffer, writer, reader)
        except SchemaResolutionError:
            return False
    return True


def resolve(reader: Any, writer: Any) -> list[Incompatibility]:
    """`can_read`, asserting that fastavro reaches the same verdict on real data."""
    problems = can_read(reader, writer)
    assert (not problems) == fastavro_reads(reader, writer), problems
    return problems


def only_problem(problems: list[Incompatibility]) -> Incompatibility:
    assert len(problems) == 1, problems
    return problems[0]


# --- the shipped schemas ---------------------------------------------------------------------------


def test_shipped_epoch_summary_versions_are_full_transitive_compatible() -> None:
    versions = load_family("epoch_summary")
    assert [v.version for v in versions][:2] == ["1.0", "1.1"]
    assert check_family(versions) == []
    for old, new in itertools.combinations(versions, 2):
        assert resolve(new.schema, old.schema) == []
        assert resolve(old.schema, new.schema) == []


def test_check_all_on_the_repo_reports_every_shipped_family_clean() -> None:
    assert check_all() == {"alert": [], "drift_record": [], "epoch_summary": []}
    assert_compatible()


def test_v1_1_reader_fills_v1_0_data_with_null_defaults() -> None:
    old, new = load_family("epoch_summary")[:2]
    names: dict[str, Any] = {}
    parsed = fastavro.parse_schema(old.schema, named_schemas=names)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, sample(parsed, names, 1))
    buffer.seek(0)
    read = fastavro.schemaless_reader(buffer, old.schema, new.schema)
    assert read["cycle_id"] is None and read["data_mode"] is None


# --- fields ----------------------------------------------------------------------------------------


def test_evolution_add_field_with_default_is_compatible() -> None:
    old = record("R", field("a", "int"))
    new = record("R", field("a", "int"), field("b", ["null", "long"], default=None))
    assert resolve(new, old) == []
    assert resolve(old, new) == []


def test_new_field_without_default_is_rejected_naming_field() -> None:
    old = record("R", field("a", "int"))
    new = record("R", field("a", "int"), field("cycle_id", "long"))
    problem = only_problem(resolve(new, old))
    assert problem == Incompatibility(
        "R.cycle_id", "cycle_id", "reader field 'cycle_id' has no default and is missing from the writer"
    )
    # Writer fields the reader does not know are skipped.
    assert resolve(old, new) == []


def test_changed_type_is_rejected_naming_field() -> None:
    old = record("R", field("epoch", "int"))
    new = record("R", field("epoch", "string"))
    problem = only_problem(resolve(new, old))
    assert problem.field == "epoch"
    assert problem.message == "field 'epoch': writer type 'int' cannot be read as 'string'"
    assert only_problem(resolve(old, new)).field == "epoch"


def test_field_alias_lets_reader_accept_renamed_field() -> None:
    old = record("R", field("steps", "long"))
    new = record("R", field("global_step", "long", aliases=["steps"]))
    assert resolve(new, old) == []
    assert only_problem(can_read(old, new)).field == "steps"


def test_reader_default_that_is_not_a_value_of_the_field_type_is_rejected() -> None:
    old = record("R", field("a", "int"))
    # Avro 1.11: a union default belongs to the first branch, so null here is not a valid default.
    new = record("R", field("a", "int"), field("b", ["long", "null"], default=None))
    problem = only_problem(can_read(new, old))
    assert problem.field == "b"
    assert "default None is not a valid 'long'" in problem.message


# --- primitives and promotions ---------------------------------------------------------------------


@pytest.mark.parametrize(("writer", "reader"), list(itertools.product(PRIMITIVES, PRIMITIVES)))
def test_primitive_resolution_allows_exactly_the_spec_promotions(writer: str, reader: str) -> None:
    problems = resolve(record("R", field("x", reader)), record("R", field("x", writer)))
    readable = writer == reader or (writer, reader) in PROMOTIONS
    assert (problems == []) == readable
    if not readable:
        assert only_problem(problems).message == f"field 'x': writer type '{writer}' cannot be read as '{reader}'"


def test_int_to_long_promotion_is_backward_compatible_but_not_forward() -> None:
    old = record("R", field("epoch", "int"))
    new = record("R", field("epoch", "long"))
    assert resolve(new, old) == []
    problem = only_problem(resolve(old, new))
    assert problem.message == "field 'epoch': writer type 'long' cannot be read as 'int'"
    versions = [schema_from_json(old, "r", "1.0"), schema_from_json(new, "r", "1.1")]
    assert check_family(versions) == [
        "r v1.0 -> v1.1 (forward): field 'epoch': writer type 'long' cannot be read as 'int' (at R.epoch)"
    ]


def test_string_and_bytes_read_each_other() -> None:
    as_string = record("R", field("blob", "string"))
    as_bytes = record("R", field("blob", "bytes"))
    assert resolve(as_string, as_bytes) == []
    assert resolve(as_bytes, as_string) == []


def test_logical_type_resolves_as_its_underlying_type() -> None:
    old = record("R", field("ts", {"type": "long", "logicalType": "timestamp-millis"}))
    new = record("R", field("ts", "long"))
    assert can_read(new, old) == [] and can_read(old, new) == []


# --- enums -----------------------------------------------------------------------------------------


def enum(symbols: list[str], **extra: Any) -> dict[str, Any]:
    return {"type": "enum", "name": "DataMode", "symbols": symbols, **extra}


def test_enum_symbol_removal_without_reader_default_is_rejected_naming_field() -> None:
    old = record("R", field("data_mode", enum(["replay", "rollout", "mixed"])))
    new = record("R", field("data_mode", enum(["replay", "rollout"])))
    problem = only_problem(resolve(new, old))
    assert problem.field == "data_mode"
    assert "'mixed' missing from reader enum 'test.compat.DataMode'" in problem.message
    assert resolve(old, new) == []


def test_enum_symbol_removal_with_reader_default_is_compatible() -> None:
    old = record("R", field("data_mode", enum(["replay", "rollout", "mixed", "unknown"])))
    new = record("R", field("data_mode", enum(["replay", "rollout", "unknown"], default="unknown")))
    assert resolve(new, old) == []


def test_enum_symbol_addition_is_backward_compatible_only_with_old_default() -> None:
    old = record("R", field("data_mode", enum(["replay", "rollout"])))
    new = record("R", field("data_mode", enum(["replay", "rollout", "mixed"])))
    assert resolve(new, old) == []
    assert only_problem(resolve(old, new)).field == "data_mode"


def test_enum_with_different_name_is_rejected() -> None:
    old = record("R", field("mode", enum(["a"])))
    new = record("R", field("mode", {"type": "enum", "name": "Mode", "symbols": ["a"]}))
    problem = only_problem(resolve(new, old))
    assert "writer enum 'test.compat.DataMode' cannot be read as enum 'test.compat.Mode'" in problem.message


# --- unions ----------------------------------------------------------------------------------------


def test_union_widening_is_backward_compatible_and_not_forward() -> None:
    old = record("R", field("x", ["null", "long"]))
    new = record("R", field("x", ["null", "long", "string"]))
    assert resolve(new, old) == []
    problem = only_problem(resolve(old, new))
    assert problem.message == "field 'x': writer union branch 'string' matches no branch of 'union[null, long]'"


def test_union_narrowing_to_its_non_null_branch_rejects_the_null_branch() -> None:
    old = record("R", field("x", ["null", "double"]))
    new = record("R", field("x", "double"))
    problem = only_problem(resolve(new, old))
    assert problem.message == "field 'x': writer union branch 'null' cannot be read as 'double'"
    assert resolve(old, new) == []


def test_plain_writer_type_is_read_through_a_promoting_reader_union_branch() -> None:
    assert resolve(record("R", field("x", ["null", "double"])), record("R", field("x", "int"))) == []
    problem = only_problem(resolve(record("R", field("x", ["null", "int"])), record("R", field("x", "string"))))
    assert problem.message == "field 'x': writer type 'string' matches no branch of 'union[null, int]'"


def test_record_in_reader_union_reports_the_inner_field_problem() -> None:
    inner_old = record("Stats", field("n", "int"))
    inner_new = record("Stats", field("n", "int"), field("m", "int"))
    problem = only_problem(
        resolve(record("R", field("stats", ["null", inner_new])), record("R", field("stats", inner_old)))
    )
    assert problem.path == "R.stats.m" and problem.field == "m"


# --- nested types ----------------------------------------------------------------------------------


def test_nested_record_field_change_is_reported_at_its_path() -> None:
    old = record("Outer", field("inner", record("Inner", field("count", "long"))))
    new = record("Outer", field("inner", record("Inner", field("count", "int"))))
    problem = only_problem(resolve(new, old))
    assert problem.path == "Outer.inner.count"
    assert problem.message == "field 'count': writer type 'long' cannot be read as 'int'"
    assert resolve(old, new) == []


def test_array_items_are_resolved_recursively() -> None:
    ints = record("R", field("xs", {"type": "array", "items": "int"}))
    longs = record("R", field("xs", {"type": "array", "items": "long"}))
    assert resolve(longs, ints) == []
    problem = only_problem(resolve(ints, longs))
    assert problem.path == "R.xs[]"
    assert problem.message == "field 'xs': writer type 'long' cannot be read as 'int'"


def test_map_values_are_resolved_recursively() -> None:
    old = record("R", field("by_run", {"type": "map", "values": record("V", field("a", "int"))}))
    new = record("R", field("by_run", {"type": "map", "values": record("V", field("a", "int"), field("b", "int"))}))
    problem = only_problem(resolve(new, old))
    assert problem.path == "R.by_run{}.b" and problem.field == "b"
    assert resolve(old, new) == []


def test_array_cannot_be_read_as_map() -> None:
    problem = only_problem(
        resolve(
            record("R", field("xs", {"type": "map", "values": "int"})),
            record("R", field("xs", {"type": "array", "items": "int"})),
        )
    )
    assert problem.message == "field 'xs': writer type 'array<int>' cannot be read as 'map<int>'"


def test_fixed_size_change_is_rejected() -> None:
    old = record("R", field("digest", {"type": "fixed", "name": "Digest", "size": 16}))
    new = record("R", field("digest", {"type": "fixed", "name": "Digest", "size": 8}))
    assert resolve(old, old) == []
    problem = only_problem(resolve(new, old))
    assert problem.message == "field 'digest': writer fixed 'test.compat.Digest' of size 16 cannot be read with size 8"


# --- names, aliases, namespaces, recursion ---------------------------------------------------------


def test_record_with_different_name_is_rejected() -> None:
    problem = only_problem(resolve(record("New", field("a", "int")), record("Old", field("a", "int"))))
    assert problem.path == "New" and problem.field is None
    assert "writer record 'test.compat.Old' cannot be read as record 'test.compat.New'" in problem.message


def test_record_alias_lets_reader_accept_renamed_writer_type() -> None:
    old = record("Old", field("a", "int"))
    new = record("New", field("a", "int"), aliases=["Old"])
    assert resolve(new, old) == []


def test_namespace_change_is_compatible_by_unqualified_name() -> None:
    old = record("R", field("a", "int"), namespace="ppo.old")
    new = record("R", field("a", "int"), namespace="ppo.new")
    assert resolve(new, old) == [] and resolve(old, new) == []


def test_named_type_references_resolve_in_the_enclosing_namespace() -> None:
    mode = enum(["replay", "rollout"])
    old = record("R", field("now", mode), field("before", "DataMode"))
    new = record("R", field("now", mode), field("before", ["null", "test.compat.DataMode"], default=None))
    assert resolve(new, old) == []
    nested_namespace = record("R", field("inner", record("Inner", field("a", "int"), namespace="other")))
    assert can_read(nested_namespace, nested_namespace) == []


def test_recursive_record_is_checked_once_per_pair_without_looping() -> None:
    def linked_list(value_type: str) -> dict[str, Any]:
        return record("Node", field("value", value_type), field("next", ["null", "Node"]))

    assert resolve(linked_list("long"), linked_list("int")) == []
    problem = only_problem(resolve(linked_list("int"), linked_list("long")))
    assert problem.path == "Node.value"


def test_unknown_type_reference_raises_schema_load_error() -> None:
    with pytest.raises(SchemaLoadError, match="test.compat.Missing"):
        can_read(record("R", field("a", "Missing")), record("R", field("a", "int")))


# --- versions and families -------------------------------------------------------------------------


def test_check_pair_prefixes_each_message_with_versions_and_direction() -> None:
    old = schema_from_json(record("R", field("a", "int")), "demo", "1.0")
    new = schema_from_json(record("R", field("a", "int"), field("x", "long")), "demo", "1.1")
    assert check_pair(old, new) == [
        "demo v1.0 -> v1.1 (backward): reader field 'x' has no default and is missing from the writer (at R.x)"
    ]


@pytest.mark.parametrize(
    ("family", "field_name", "direction"),
    [
        ("added_field_no_default", "cycle_id", "backward"),
        ("changed_type", "epoch", "backward"),
        ("changed_type", "epoch", "forward"),
        ("removed_enum_symbol", "data_mode", "backward"),
        ("narrowed_union", "mean_episode_return", "backward"),
        ("transitive_removal", "grad_norm_max", "forward"),
    ],
)
def test_incompatible_fixture_family_is_rejected_naming_field(family: str, field_name: str, direction: str) -> None:
    versions = load_family(family, INCOMPATIBLE_DIR)
    messages = check_family(versions)
    assert any(f"({direction}): " in m and f"'{field_name}'" in m for m in messages), messages
    # fastavro fails on real data for the same pair and direction.
    first, last = versions[0], versions[-1]
    reader, writer = (last, first) if direction == "backward" else (first, last)
    assert can_read(reader.schema, writer.schema)
    assert not fastavro_reads(reader.schema, writer.schema)


def test_check_family_compares_every_pair_not_only_neighbours() -> None:
    v10, v11, v12 = load_family("transitive_removal", INCOMPATIBLE_DIR)
    assert check_pair(v10, v11) == [] and check_pair(v11, v12) == []
    assert check_family([v10, v11, v12]) == [
        "transitive_removal v1.0 -> v1.2 (forward): reader field 'grad_norm_max' has no default "
        "and is missing from the writer (at EpochSummary.grad_norm_max)"
    ]


def test_check_all_reports_every_incompatible_fixture_family() -> None:
    results = check_all(INCOMPATIBLE_DIR)
    assert sorted(results) == [
        "added_field_no_default",
        "changed_type",
        "narrowed_union",
        "removed_enum_symbol",
        "transitive_removal",
    ]
    assert all(results.values())


def test_assert_compatible_raises_with_the_first_message() -> None:
    with pytest.raises(CompatibilityError) as raised:
        assert_compatible(INCOMPATIBLE_DIR)
    text = str(raised.value)
    assert text.startswith("added_field_no_default v1.0 -> v1.1 (backward): reader field 'cycle_id'")
    assert "\n" not in text and "more)" in text
