"""Avro single-object encoding (Avro specification, "Single-object encoding").

A message is `C3 01`, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing
Canonical Form, then the Avro binary body. The decoder finds the writer schema by fingerprint and reads
the body either as written or resolved into a reader schema. Any input bytes give a record or a
`DecodeError`; nothing else escapes.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from .errors import (
    DecodeError, EmptyMessageError, EncodeError, TruncatedMessageError, UnknownSchemaError, WrongHeaderError,
)
from .flat_reader import FlatReader, FlatReaderError, compile_flat_reader
from .models import EpochSummary
from .registry import SchemaRegistry, SchemaVersion, load_family

__all__ = [
    "MAGIC",
    "HEADER_SIZE",
    "SingleObjectCodec",
    "epoch_summary_codec",
    "drift_record_codec",
    "alert_codec",
]

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8


class SingleObjectCodec:
    """Encode and decode single-object Avro messages of one schema family.

    `versions` are the local versions, oldest first; records are written with the version named by the
    record's `telemetry_version` (or `version_field`), falling back to the newest when the family has no
    such field. `registry` may hold more writer schemas (fetched from the schema topic).
    """

    def __init__(
        self,
        versions: list[SchemaVersion],
        registry: SchemaRegistry | None = None,
        version_field: str | None = "telemetry_version",
    ) -> None:
        if not versions:
            raise ValueError("a codec needs at least one schema version")
        self.versions = {v.version: v for v in versions}
        self.latest = versions[-1]
        self.registry = registry if registry is not None else SchemaRegistry()
        for version in versions:
            self.registry.add(version)
        self._version_field = version_field
        # Compiled readers by writer fingerprint; None marks a schema that stays with fastavro.
        self._flat_readers: dict[bytes, FlatReader | None] = {}
        self._int_field_cache: dict[bytes, tuple[str, ...]] = {}

    def _flat_reader(self, writer: SchemaVersion) -> FlatReader | None:
        try:
            return self._flat_readers[writer.fingerprint]
        except KeyError:
            reader = self._flat_readers[writer.fingerprint] = compile_flat_reader(writer.schema)
            return reader

    def _int_fields(self, writer: SchemaVersion) -> tuple[str, ...]:
        try:
            return self._int_field_cache[writer.fingerprint]
        except KeyError:
            names = tuple(
                f["name"] for f in writer.schema.get("fields", ())
                if f["type"] == "int" or (isinstance(f["type"], list) and "int" in f["type"])
            )
            self._int_field_cache[writer.fingerprint] = names
            return names

    def writer_for(self, record: dict[str, Any]) -> SchemaVersion:
        """The local schema version a record is written with."""
        if self._version_field is None:
            return self.latest
        version = record.get(self._version_field)
        try:
            return self.versions[version]
        except (KeyError, TypeError):
            raise EncodeError(f"no schema for {self._version_field} {version!r}") from None

    def encode(self, record: dict[str, Any] | EpochSummary, writer: SchemaVersion | None = None) -> bytes:
        """One single-object message holding `record`, written with `writer` (default: `writer_for`)."""
        if isinstance(record, EpochSummary):
            record = record.to_dict()
        if writer is None:
            writer = self.writer_for(record)
        for name in self._int_fields(writer):
            value = record.get(name)
            # fastavro writes any Python int as a varint; a reader of an Avro int would refuse it
            if isinstance(value, int) and not -(2**31) <= value < 2**31:
                raise EncodeError(f"cannot encode with {writer.family} v{writer.version}: {name} = {value} is outside the Avro int range")
        out = BytesIO()
        out.write(MAGIC)
        out.write(writer.fingerprint)
        try:
            schemaless_writer(out, writer.parsed, record)
        except Exception as exc:  # fastavro raises ValueError, TypeError, OverflowError, ... per field
            raise EncodeError(f"cannot encode with {writer.family} v{writer.version}: {exc}") from exc
        return out.getvalue()

    def writer_of(self, data: bytes) -> SchemaVersion:
        """The writer schema named by a message's header; `DecodeError` for a bad header or unknown one."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise WrongHeaderError(f"expected bytes, got {type(data).__name__}")
        if not data:
            raise EmptyMessageError("empty message (0 bytes)")
        if len(data) < HEADER_SIZE:
            if data[:2] != MAGIC[: len(data[:2])]:
                raise WrongHeaderError("wrong header: not a single-object Avro message (no C3 01 marker)")
            raise TruncatedMessageError(f"truncated header: {len(data)} bytes, a single-object header needs {HEADER_SIZE}")
        if data[:2] != MAGIC:
            raise WrongHeaderError(f"wrong header: expected C3 01, got {bytes(data[:2]).hex(' ').upper()}")
        fingerprint = bytes(data[2:HEADER_SIZE])
        writer = self.registry.get(fingerprint)
        if writer is None:
            raise UnknownSchemaError(f"unknown writer schema fingerprint {fingerprint.hex()}")
        return writer

    def decode(self, data: bytes, reader: SchemaVersion | None = None) -> dict[str, Any]:
        """The record in `data`, read with its writer schema, or resolved into `reader` when given."""
        writer = self.writer_of(data)
        if type(data) is not bytes:  # bytearray / memoryview: the compiled reader slices and decodes bytes
            data = bytes(data)
        if reader is None or reader.fingerprint == writer.fingerprint:
            flat = self._flat_reader(writer)
            if flat is not None:
                try:
                    record, end = flat(data, HEADER_SIZE)
                except (IndexError, struct.error) as exc:
                    raise TruncatedMessageError("truncated body: ran out of bytes") from exc
                except (FlatReaderError, UnicodeDecodeError) as exc:
                    raise DecodeError(f"undecodable body ({exc})") from exc
                if end != len(data):
                    raise DecodeError(f"{len(data) - end} trailing bytes after the Avro body")
                return record
        buf = BytesIO(data)
        buf.seek(HEADER_SIZE)
        reader_parsed = None if reader is None or reader.fingerprint == writer.fingerprint else reader.parsed
        try:
            record = schemaless_reader(buf, writer.parsed, reader_parsed)
        except EOFError as exc:
            raise TruncatedMessageError(f"truncated body: {exc or 'ran out of bytes'}") from exc
        except Exception as exc:  # any failure inside the body is a decode error, never a crash
            raise DecodeError(f"undecodable body ({type(exc).__name__}: {exc})") from exc
        if buf.tell() != len(data):
            raise DecodeError(f"{len(data) - buf.tell()} trailing bytes after the Avro body")
        if not isinstance(record, dict):
            raise DecodeError("body is not a record")
        return record


def epoch_summary_codec(registry: SchemaRegistry | None = None) -> SingleObjectCodec:
    """A codec for `ppo.telemetry.EpochSummary`, knowing every local version."""
    return SingleObjectCodec(load_family("epoch_summary"), registry)


def drift_record_codec(registry: SchemaRegistry | None = None) -> SingleObjectCodec:
    """A codec for `ppo.telemetry.DriftRecord` (topic `ppo.telemetry.drift`), knowing every local version.

    The record carries no version field, so it is written with the newest local version. Its maps are not
    flat, so it is read by fastavro rather than a compiled reader.
    """
    return SingleObjectCodec(load_family("drift_record"), registry, version_field=None)


def alert_codec(registry: SchemaRegistry | None = None) -> SingleObjectCodec:
    """A codec for `ppo.telemetry.Alert` (topic `ppo.telemetry.alerts`), knowing every local version.

    The record carries no version field, so it is written with the newest local version.
    """
    return SingleObjectCodec(load_family("alert"), registry, version_field=None)
