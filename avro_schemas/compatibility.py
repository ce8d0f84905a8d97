"""FULL_TRANSITIVE schema compatibility, decided by the Avro 1.11 "Schema Resolution" rules.

`can_read(reader, writer)` answers one question statically: can data written with `writer` be read with
`reader`? It follows the same rules as Java's `org.apache.avro.SchemaCompatibility`: primitive promotions,
records matched by name or alias with fields matched by name or alias (or filled from a default), enums,
fixed, arrays, maps, unions on either side, and recursive named types. Logical types are ignored, as in
Java, because resolution works on the underlying type.

`check_family` applies it in both directions to every pair of versions of a family, which is what
FULL_TRANSITIVE means: any reader version can read data written by any other version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from .errors import CompatibilityError, SchemaLoadError
from .registry import SCHEMA_DIR, SchemaVersion, list_families, load_family

__all__ = [
    "Incompatibility",
    "can_read",
    "check_pair",
    "check_family",
    "check_all",
    "assert_compatible",
]

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED_KINDS = frozenset({"record", "error", "enum", "fixed"})

# Writer type -> the reader types it may be promoted to (Avro 1.11, "Schema Resolution").
_PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}

_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class Incompatibility:
    """One reason the reader cannot read the writer's data.

    `path` locates it from the reader's root (`EpochSummary.cycle_id`; `[]` steps into array items and
    `{}` into map values), `field` is the innermost record field involved (None at the root) and
    `message` is one line that names that field.
    """

    path: str
    field: str | None
    message: str


# --- the schema JSON, parsed into typed nodes ------------------------------------------------------
# Every occurrence of a named type, its definition included, becomes a `_Ref`, so recursive schemas are
# finite trees and the checker resolves names the same way wherever a type is used.


@dataclass(frozen=True)
class _Primitive:
    name: str


@dataclass(frozen=True)
class _Ref:
    full_name: str


@dataclass(frozen=True)
class _Array:
    items: _Node


@dataclass(frozen=True)
class _Map:
    values: _Node


@dataclass(frozen=True)
class _Union:
    branches: tuple[_Node, ...]


@dataclass(frozen=True)
class _Field:
    name: str
    aliases: tuple[str, ...]
    type: _Node
    has_default: bool
    default: Any


@dataclass(frozen=True)
class _Record:
    full_name: str
    aliases: frozenset[str]
    fields: tuple[_Field, ...]


@dataclass(frozen=True)
class _Enum:
    full_name: str
    aliases: frozenset[str]
    symbols: tuple[str, ...]
    default: str | None


@dataclass(frozen=True)
class _Fixed:
    full_name: str
    aliases: frozenset[str]
    size: int


_Named: TypeAlias = "_Record | _Enum | _Fixed"
_Node: TypeAlias = "_Primitive | _Ref | _Array | _Map | _Union"


@dataclass(frozen=True)
class _Schema:
    root: _Node
    names: dict[str, _Named]

    def resolve(self, node: _Node) -> _Primitive | _Array | _Map | _Union | _Named:
        if isinstance(node, _Ref):
            return self.names[node.full_name]
        return node


def _full_name(name: str, namespace: str) -> str:
    # A dotted name is already full; otherwise the enclosing (or declared) namespace qualifies it.
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


class _Parser:
    def __init__(self) -> None:
        self.names: dict[str, _Named | None] = {}
        self.references: list[str] = []

    def parse(self, schema: Any) -> _Schema:
        root = self._node(schema, "")
        unknown = sorted({ref for ref in self.references if ref not in self.names})
        if unknown:
            raise SchemaLoadError(f"schema refers to unknown type(s): {', '.join(unknown)}")
        names = {name: named for name, named in self.names.items() if named is not None}
        return _Schema(root, names)

    def _node(self, schema: Any, namespace: str) -> _Node:
        if isinstance(schema, str):
            return _Primitive(schema) if schema in _PRIMITIVES else self._reference(schema, namespace)
        if isinstance(schema, list):
            return _Union(tuple(self._node(branch, namespace) for branch in schema))
        if not isinstance(schema, dict):
            raise SchemaLoadError(f"not an Avro schema: {schema!r}")
        kind = schema.get("type")
        if kind in _PRIMITIVES:
            # {"type": "long", "logicalType": ...} resolves as its underlying type.
            return _Primitive(kind)
        if kind == "array":
            return _Array(self._node(schema.get("items"), namespace))
        if kind == "map":
            return _Map(self._node(schema.get("values"), namespace))
        if kind in _NAMED_KINDS:
            return self._named(schema, kind, namespace)
        if isinstance(kind, (str, list, dict)):
            return self._node(kind, namespace)
        raise SchemaLoadError(f"not an Avro schema: {schema!r}")

    def _reference(self, name: str, namespace: str) -> _Ref:
        qualified = _full_name(name, namespace)
        # An unqualified reference may also name a type in the null namespace.
        if qualified not in self.names and name in self.names:
            qualified = name
        self.references.append(qualified)
        return _Ref(qualified)

    def _named(self, schema: dict[str, Any], kind: str, namespace: str) -> _Ref:
        name = schema.get("name")
        if not isinstance(name, str) or not name:
            raise SchemaLoadError(f"a {kind} schema needs a name: {schema!r}")
        if "." not in name and "namespace" in schema:
            namespace = schema["namespace"] or ""
        full_name = _full_name(name, namespace)
        own_namespace = full_name.rpartition(".")[0]
        if full_name in self.names:
            raise SchemaLoadError(f"type {full_name} is defined twice")
        # Registered before its fields are parsed, so a record may refer to itself.
        self.names[full_name] = None
        aliases = frozenset(_full_name(alias, own_namespace) for alias in schema.get("aliases", ()))
        named: _Named
        if kind in ("record", "error"):
            fields = tuple(self._field(f, own_namespace) for f in schema.get("fields", ()))
            named = _Record(full_name, aliases, fields)
        elif kind == "enum":
            named = _Enum(full_name, aliases, tuple(schema.get("symbols", ())), schema.get("default"))
        else:
            named = _Fixed(full_name, aliases, int(schema.get("size", -1)))
        self.names[full_name] = named
        return _Ref(full_name)

    def _field(self, spec: Any, namespace: str) -> _Field:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or "type" not in spec:
            raise SchemaLoadError(f"not an Avro record field: {spec!r}")
        return _Field(
            name=spec["name"],
            aliases=tuple(spec.get("aliases", ())),
            type=self._node(spec["type"], namespace),
            # A JSON null default is still a default; only an absent key means "none".
            has_default="default" in spec,
            default=spec.get("default"),
        )


def _parse(schema: Any) -> _Schema:
    if isinstance(schema, SchemaVersion):
        schema = schema.schema
    return _Parser().parse(schema)


# --- resolution ------------------------------------------------------------------------------------


def _unqualified(full_name: str) -> str:
    return full_name.rpartition(".")[2]


def _names_match(reader: _Named, writer: _Named) -> bool:
    # The spec matches on the unqualified name, so moving a type to another namespace is compatible;
    # the reader's aliases let it accept a writer type under an old name.
    return _unqualified(reader.full_name) == _unqualified(writer.full_name) or writer.full_name in reader.aliases


class _Resolver:
    """One `can_read` question: the two parsed schemas and the named pairs already (being) checked."""

    def __init__(self, reader: _Schema, writer: _Schema) -> None:
        self.reader = reader
        self.writer = writer
        # None marks a pair under check: meeting it again means recursion, which is assumed to resolve
        # (a recursive type can only fail through a non-recursive part, which is checked anyway).
        self.memo: dict[tuple[str, str], list[Incompatibility] | None] = {}

    def check(
        self, reader_node: _Node, writer_node: _Node, path: str, field: str | None, union_branch: bool = False
    ) -> list[Incompatibility]:
        reader = self.reader.resolve(reader_node)
        writer = self.writer.resolve(writer_node)
        if isinstance(writer, _Union):
            # Any branch may have been written, so every branch must be readable.
            problems: list[Incompatibility] = []
            for branch in writer.branches:
                problems.extend(self.check(reader_node, branch, path, field, union_branch=True))
            return problems
        if isinstance(reader, _Union):
            return self._check_reader_union(reader, writer_node, path, field, union_branch)
        if isinstance(reader, _Primitive) and isinstance(writer, _Primitive):
            if reader.name == writer.name or reader.name in _PROMOTIONS.get(writer.name, ()):
                return []
        elif isinstance(reader, _Array) and isinstance(writer, _Array):
            return self.check(reader.items, writer.items, f"{path}[]", field)
        elif isinstance(reader, _Map) and isinstance(writer, _Map):
            return self.check(reader.values, writer.values, f"{path}{{}}", field)
        elif type(reader) is type(writer) and isinstance(reader, (_Record, _Enum, _Fixed)):
            return self._check_named(reader, writer, path, field)  # type: ignore[arg-type]
        return [self._mismatch(reader, writer, path, field, union_branch)]

    def _check_reader_union(
        self, reader: _Union, writer_node: _Node, path: str, field: str | None, union_branch: bool
    ) -> list[Incompatibility]:
        # Like Java's SchemaCompatibility: readable when any reader branch can read the writer type.
        for branch in reader.branches:
            if not self.check(branch, writer_node, path, field):
                return []
        # Otherwise explain through the branch the writer type was evidently meant for, if one exists.
        writer = self.writer.resolve(writer_node)
        closest = self._closest_branch(reader, writer)
        if closest is not None:
            return self.check(closest, writer_node, path, field, union_branch)
        origin = "writer union branch" if union_branch else "writer type"
        message = f"{origin} {self._describe_writer(writer)!r} matches no branch of {self._describe_reader(reader)!r}"
        return [Incompatibility(path, field, _on_field(field, message))]

    def _closest_branch(self, reader: _Union, writer: Any) -> _Node | None:
        for branch in reader.branches:
            candidate = self.reader.resolve(branch)
            if type(candidate) is not type(writer):
                continue
            if isinstance(candidate, (_Record, _Enum, _Fixed)) and not _names_match(candidate, writer):
                continue
            if isinstance(candidate, _Primitive):
                continue  # a primitive either reads the writer type or is no better a guess than any other
            return branch
        return None

    def _check_named(
        self, reader: _Named, writer: _Named, path: str, field: str | None
    ) -> list[Incompatibility]:
        key = (reader.full_name, writer.full_name)
        if key in self.memo:
            return list(self.memo[key] or ())
        self.memo[key] = None
        problems = self._resolve_named(reader, writer, path, field)
        self.memo[key] = problems
        return list(problems)

    def _resolve_named(
        self, reader: _Named, writer: _Named, path: str, field: str | None
    ) -> list[Incompatibility]:
        kind = _kind(reader)
        if not _names_match(reader, writer):
            message = (
                f"writer {kind} '{writer.full_name}' cannot be read as {kind} '{reader.full_name}': "
                "the names differ and no reader alias names the writer type"
            )
            return [Incompatibility(path, field, _on_field(field, message))]
        if isinstance(reader, _Record) and isinstance(writer, _Record):
            return self._resolve_record(reader, writer, path)
        if isinstance(reader, _Enum) and isinstance(writer, _Enum):
            missing = [symbol for symbol in writer.symbols if symbol not in reader.symbols]
            if missing and reader.default is None:
                symbols = ", ".join(repr(symbol) for symbol in missing)
                message = (
                    f"writer enum symbol(s) {symbols} missing from reader enum '{reader.full_name}', "
                    "which has no default symbol"
                )
                return [Incompatibility(path, field, _on_field(field, message))]
            return []
        if isinstance(reader, _Fixed) and isinstance(writer, _Fixed) and reader.size != writer.size:
            message = f"writer fixed '{writer.full_name}' of size {writer.size} cannot be read with size {reader.size}"
            return [Incompatibility(path, field, _on_field(field, message))]
        return []

    def _resolve_record(self, reader: _Record, writer: _Record, path: str) -> list[Incompatibility]:
        writer_fields = {f.name: f for f in writer.fields}
        problems: list[Incompatibility] = []
        for reader_field in reader.fields:
            field_path = f"{path}.{reader_field.name}"
            writer_field = writer_fields.get(reader_field.name)
            if writer_field is None:
                # A reader field alias accepts the writer's old field name.
                writer_field = next((writer_fields[a] for a in reader_field.aliases if a in writer_fields), None)
            if writer_field is not None:
                problems.extend(self.check(reader_field.type, writer_field.type, field_path, reader_field.name))
            elif not reader_field.has_default:
                message = f"reader field '{reader_field.name}' has no default and is missing from the writer"
                problems.append(Incompatibility(field_path, reader_field.name, message))
            else:
                # The default is what every old record will carry, so it must be a value of the field's type.
                if not _valid_default(reader_field.type, reader_field.default, self.reader):
                    expected = self.reader.resolve(_default_branch(reader_field.type, self.reader))
                    message = (
                        f"reader field '{reader_field.name}' is missing from the writer and its default "
                        f"{reader_field.default!r} is not a valid {self._describe_reader(expected)!r}"
                    )
                    problems.append(Incompatibility(field_path, reader_field.name, message))
        return problems

    def _mismatch(self, reader: Any, writer: Any, path: str, field: str | None, union_branch: bool) -> Incompatibility:
        origin = "writer union branch" if union_branch else "writer type"
        message = f"{origin} {self._describe_writer(writer)!r} cannot be read as {self._describe_reader(reader)!r}"
        return Incompatibility(path, field, _on_field(field, message))

    def _describe_reader(self, node: Any) -> str:
        return _describe(node, self.reader)

    def _describe_writer(self, node: Any) -> str:
        return _describe(node, self.writer)


def _on_field(field: str | None, message: str) -> str:
    return f"field '{field}': {message}" if field is not None else message


def _kind(named: _Named) -> str:
    return {_Record: "record", _Enum: "enum", _Fixed: "fixed"}[type(named)]


def _describe(node: Any, schema: _Schema) -> str:
    """A short type name for messages: `long`, `array<int>`, `union[null, long]`, `enum ppo.DataMode`."""
    if isinstance(node, _Ref):
        node = schema.resolve(node)
    if isinstance(node, _Primitive):
        return node.name
    if isinstance(node, _Array):
        return f"array<{_describe(node.items, schema)}>"
    if isinstance(node, _Map):
        return f"map<{_describe(node.values, schema)}>"
    if isinstance(node, _Union):
        return f"union[{', '.join(_describe(branch, schema) for branch in node.branches)}]"
    return f"{_kind(node)} {node.full_name}"


def _default_branch(node: _Node, schema: _Schema) -> _Node:
    # Avro 1.11: a union field's default is a value of the union's first branch.
    resolved = schema.resolve(node)
    if isinstance(resolved, _Union) and resolved.branches:
        return resolved.branches[0]
    return node


def _valid_default(node: _Node, value: Any, schema: _Schema) -> bool:
    """Whether `value` (JSON, as in the .avsc) is a valid default for the type `node`."""
    resolved = schema.resolve(_default_branch(node, schema))
    if isinstance(resolved, _Union):
        return False  # an empty union has no values
    if isinstance(resolved, _Primitive):
        return _valid_primitive_default(resolved.name, value)
    if isinstance(resolved, _Array):
        return isinstance(value, list) and all(_valid_default(resolved.items, v, schema) for v in value)
    if isinstance(resolved, _Map):
        return isinstance(value, dict) and all(_valid_default(resolved.values, v, schema) for v in value.values())
    if isinstance(resolved, _Enum):
        return value in resolved.symbols
    if isinstance(resolved, _Fixed):
        return isinstance(value, str) and len(value) == resolved.size
    if not isinstance(value, dict):
        return False
    return all(
        _valid_default(f.type, value[f.name], schema) if f.name in value else f.has_default for f in resolved.fields
    )


def _valid_primitive_default(name: str, value: Any) -> bool:
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if name in _INT_RANGE:
        low, high = _INT_RANGE[name]
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if name in ("float", "double"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)  # bytes and string defaults are both JSON strings


def can_read(reader_schema: Any, writer_schema: Any) -> list[Incompatibility]:
    """Why data written with `writer_schema` cannot be read with `reader_schema`; empty when it can.

    Both schemas are Avro schema JSON (the decoded `.avsc`: dicts, lists and strings) or `SchemaVersion`s.
    Raises `SchemaLoadError` when either is not a well-formed schema (for example an unknown type name).
    """
    reader = _parse(reader_schema)
    writer = _parse(writer_schema)
    root = reader.resolve(reader.root)
    path = _unqualified(root.full_name) if isinstance(root, (_Record, _Enum, _Fixed)) else _describe(root, reader)
    problems = _Resolver(reader, writer).check(reader.root, writer.root, path, None)
    # A named type met at several places reports its memoised problems each time; say each once.
    return list(dict.fromkeys(problems))


def check_pair(old: SchemaVersion, new: SchemaVersion) -> list[str]:
    """Both directions between two versions: `new` reading `old` data (backward), `old` reading `new` (forward).

    Each message is one line prefixed with the versions and the direction, for example
    `epoch_summary v1.0 -> v1.1 (backward): reader field 'x' has no default and is missing from the writer`.
    """
    family = new.family or old.family or "schema"
    prefix = f"{family} v{old.version} -> v{new.version}"
    messages = []
    for direction, reader, writer in (("backward", new, old), ("forward", old, new)):
        for problem in can_read(reader.schema, writer.schema):
            messages.append(f"{prefix} ({direction}): {problem.message} (at {problem.path})")
    return messages


def check_family(versions: Sequence[SchemaVersion]) -> list[str]:
    """FULL_TRANSITIVE: every version against every earlier one, in both directions; empty when compatible."""
    messages: list[str] = []
    for index, new in enumerate(versions):
        for old in versions[:index]:
            messages.extend(check_pair(old, new))
    return messages


def check_all(directory: Path = SCHEMA_DIR) -> dict[str, list[str]]:
    """Every schema family in `directory` mapped to its `check_family` messages (empty when compatible)."""
    return {family: check_family(load_family(family, directory)) for family in list_families(directory)}


def assert_compatible(directory: Path = SCHEMA_DIR) -> None:
    """Raise `CompatibilityError` naming the first incompatibility when any family in `directory` has one."""
    messages = [message for family in check_all(directory).values() for message in family]
    if messages:
        more = f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""
        raise CompatibilityError(f"{messages[0]}{more}")
