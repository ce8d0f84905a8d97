"""A compiled Avro binary reader for flat record schemas: the codec's hot path.

fastavro's `schemaless_reader` spends most of its time per union branch (about 0.4 µs each; an
EpochSummary v1.1 has twelve). For a record whose fields are primitives, enums and unions of those
(every schema in this package), we generate one straight-line Python function per writer schema: inline
zig-zag varints, consecutive doubles read with one `struct` call, a dict literal at the end. Schemas with
anything else (nested records, arrays, maps, fixed) get no compiled reader and stay with fastavro.

The compiled reader is stricter than the Avro spec requires, never looser: varints longer than 10 bytes,
int values outside 32 bits, booleans other than 0/1, negative lengths and out-of-range union or enum
indexes are errors. Tests check it against fastavro on valid data and on arbitrary bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

__all__ = ["FlatReaderError", "compile_flat_reader", "flat_reader_source"]

FlatReader = Callable[[bytes, int], tuple[dict[str, Any], int]]

_PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "string", "bytes")
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


class FlatReaderError(ValueError):
    """Bytes the compiled reader refuses (bad varint, index, boolean or length)."""


def _varint_tail(buf: bytes, pos: int, first: int) -> tuple[int, int]:
    """The rest of a multi-byte varint whose first byte was `first`; returns (raw value, next position)."""
    value = first & 0x7F
    shift = 7
    while True:
        byte = buf[pos]  # IndexError at end of buffer: a truncated body
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise FlatReaderError("varint longer than 10 bytes")


def _kind(avro: Any) -> str | None:
    """The primitive or 'enum' kind of a non-union type, or None when it is not flat."""
    if isinstance(avro, str):
        return avro if avro in _PRIMITIVES else None
    if isinstance(avro, dict):
        if avro.get("type") == "enum":
            return "enum"
        if avro.get("type") in _PRIMITIVES and "logicalType" not in avro:
            return avro["type"]
    return None


class _Source:
    """Accumulates generated lines and the constants they refer to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self._counter = 0

    def name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def const(self, value: Any, prefix: str = "_c") -> str:
        name = self.name(prefix)
        self.consts[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def varint(self, indent: int, target: str) -> None:
        """Emit code reading one zig-zag varint into `target`."""
        self.emit(indent, "b = buf[pos]; pos += 1")
        self.emit(indent, "if b & 0x80:")
        self.emit(indent + 1, "b, pos = _varint_tail(buf, pos, b)")
        self.emit(indent, f"{target} = (b >> 1) ^ -(b & 1)")

    def value(self, indent: int, kind: str, target: str, avro: Any) -> None:
        """Emit code reading one value of a flat kind into `target`."""
        if kind == "null":
            self.emit(indent, f"{target} = None")
        elif kind == "boolean":
            self.emit(indent, "b = buf[pos]; pos += 1")
            self.emit(indent, "if b > 1: raise _Err('boolean byte other than 0 or 1')")
            self.emit(indent, f"{target} = b == 1")
        elif kind in ("int", "long"):
            low, high = _INT32 if kind == "int" else _INT64
            self.varint(indent, target)
            self.emit(indent, f"if not {low} <= {target} <= {high}: raise _Err('{kind} out of range')")
        elif kind in ("float", "double"):
            unpack = self.const(struct.Struct("<f" if kind == "float" else "<d").unpack_from, "_unpack")
            self.emit(indent, f"{target}, = {unpack}(buf, pos); pos += {4 if kind == 'float' else 8}")
        elif kind in ("string", "bytes"):
            self.varint(indent, "n")
            self.emit(indent, "end = pos + n")
            self.emit(indent, "if n < 0 or end > size: raise _Err('length beyond the message')")
            if kind == "string":
                self.emit(indent, f"{target} = buf[pos:end].decode('utf-8'); pos = end")
            else:
                self.emit(indent, f"{target} = bytes(buf[pos:end]); pos = end")
        elif kind == "enum":
            symbols = self.const(tuple(avro["symbols"]), "_symbols")
            self.varint(indent, "i")
            self.emit(indent, f"if not 0 <= i < {len(avro['symbols'])}: raise _Err('enum index out of range')")
            self.emit(indent, f"{target} = {symbols}[i]")
        else:  # pragma: no cover - _kind filters everything else out
            raise AssertionError(kind)


def flat_reader_source(schema: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The generated source and its constants for a flat record schema, or None if it is not flat."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    fields = schema.get("fields", [])
    src = _Source()
    src.emit(0, "def read(buf, pos):")
    src.emit(1, "size = len(buf)")
    targets = []
    pending_doubles: list[str] = []

    def flush_doubles() -> None:
        if not pending_doubles:
            return
        if len(pending_doubles) == 1:
            src.value(1, "double", pending_doubles[0], "double")
        else:
            unpack = src.const(struct.Struct(f"<{len(pending_doubles)}d").unpack_from, "_unpack")
            src.emit(1, f"{', '.join(pending_doubles)} = {unpack}(buf, pos); pos += {8 * len(pending_doubles)}")
        pending_doubles.clear()

    for index, field in enumerate(fields):
        target = f"v{index}"
        targets.append((field["name"], target))
        avro = field["type"]
        if isinstance(avro, list):
            kinds = [_kind(branch) for branch in avro]
            if None in kinds:
                return None
            flush_doubles()
            src.varint(1, "u")
            keyword = "if"
            for branch_index, (kind, branch) in enumerate(zip(kinds, avro)):
                src.emit(1, f"{keyword} u == {branch_index}:")
                src.value(2, kind, target, branch)
                keyword = "elif"
            src.emit(1, "else:")
            src.emit(2, "raise _Err('union index out of range')")
            continue
        kind = _kind(avro)
        if kind is None:
            return None
        if kind == "double":
            pending_doubles.append(target)
            continue
        flush_doubles()
        src.value(1, kind, target, avro)
    flush_doubles()
    items = ", ".join(f"{name!r}: {target}" for name, target in targets)
    src.emit(1, f"return {{{items}}}, pos")
    return "\n".join(src.lines) + "\n", src.consts


def compile_flat_reader(schema: dict[str, Any]) -> FlatReader | None:
    """A function `read(buf, pos) -> (record, end)` for a flat record schema (JSON form), or None.

    The function raises `FlatReaderError`, `IndexError`, `struct.error` or `UnicodeDecodeError` on bytes it
    cannot read; the codec turns all of them into `DecodeError`.
    """
    generated = flat_reader_source(schema)
    if generated is None:
        return None
    source, consts = generated
    namespace: dict[str, Any] = {"_varint_tail": _varint_tail, "_Err": FlatReaderError, **consts}
    exec(compile(source, f"<flat reader {schema.get('name', '?')}>", "exec"), namespace)
    return namespace["read"]
