"""The two wire formats of an Avro message value (SPEC §3, §11), told apart by the first byte.

- **Single-object** (the Avro specification's "single-object encoding", our default): `C3 01`, the 8-byte
  little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form, then the Avro binary
  body. The writer schema is found by fingerprint.
- **Confluent** (what Kafka Connect's `AvroConverter`, Flink's `avro-confluent` and ksqlDB read): the magic
  byte `00`, a 4-byte big-endian schema id given by a Confluent-compatible Schema Registry, then the body.
  The writer schema is found by id, among those the codec's `SchemaRegistry` was told of (the reader
  fetches an unknown id from the registry: `UnknownSchemaIdError` says which).

The decoder reads the body either as written or resolved into a reader schema. Any input bytes give a
record or a `DecodeError`; nothing else escapes.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from .errors import (
    DecodeError, EmptyMessageError, EncodeError, TruncatedMessageError, UnknownSchemaError, UnknownSchemaIdError,
    WrongHeaderError,
)
from .flat_reader import FlatReader, FlatReaderError, compile_flat_reader
from .models import EpochSummary
from .registry import SchemaRegistry, SchemaVersion, load_family

__all__ = [
    "MAGIC",
    "HEADER_SIZE",
    "CONFLUENT_MAGIC",
    "CONFLUENT_HEADER_SIZE",
    "SINGLE_OBJECT",
    "CONFLUENT",
    "WIRE_FORMATS",
    "confluent_header",
    "confluent_schema_id",
    "SingleObjectCodec",
    "epoch_summary_codec",
    "drift_record_codec",
    "alert_codec",
]

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER_SIZE = len(CONFLUENT_MAGIC) + 4
SINGLE_OBJECT = "single-object"
CONFLUENT = "confluent"
WIRE_FORMATS = (SINGLE_OBJECT, CONFLUENT)
_SCHEMA_ID = struct.Struct(">I")


def confluent_header(schema_id: int) -> bytes:
    """The 5 bytes before a Confluent-framed body: `00` and the schema id, big-endian."""
    if not 0 <= schema_id < 2**31:
        raise EncodeError(f"schema id {schema_id} does not fit the Confluent header (0 to 2**31 - 1)")
    return CONFLUENT_MAGIC + _SCHEMA_ID.pack(schema_id)


def confluent_schema_id(data: bytes) -> int | None:
    """The schema id of a Confluent-framed message; None for any other bytes (or too few to hold one)."""
    if type(data) is not bytes or len(data) < CONFLUENT_HEADER_SIZE or data[0] != 0:
        return None
    return _SCHEMA_ID.unpack_from(data, 1)[0]


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

    def encode(
        self, record: dict[str, Any] | EpochSummary, writer: SchemaVersion | None = None, schema_id: int | None = None,
    ) -> bytes:
        """One message holding `record`, written with `writer` (default: `writer_for`): single-object, or
        Confluent-framed when `schema_id` (the registry's id of `writer`) is given."""
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
        if schema_id is None:
            out.write(MAGIC)
            out.write(writer.fingerprint)
        else:
            out.write(confluent_header(schema_id))
        try:
            schemaless_writer(out, writer.parsed, record)
        except Exception as exc:  # fastavro raises ValueError, TypeError, OverflowError, ... per field
            raise EncodeError(f"cannot encode with {writer.family} v{writer.version}: {exc}") from exc
        return out.getvalue()

    def writer_of(self, data: bytes) -> SchemaVersion:
        """The writer schema named by a message's header; `DecodeError` for a bad header or unknown one."""
        return self.header(data)[0]

    def header(self, data: bytes) -> tuple[SchemaVersion, int]:
        """The writer schema named by a message's header, either wire format, and where its body starts."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise WrongHeaderError(f"expected bytes, got {type(data).__name__}")
        if not data:
            raise EmptyMessageError("empty message (0 bytes)")
        if data[0] == 0:
            return self._confluent_writer(data), CONFLUENT_HEADER_SIZE
        if len(data) < HEADER_SIZE:
            if data[:2] != MAGIC[: len(data[:2])]:
                raise WrongHeaderError("wrong header: neither single-object (C3 01) nor Confluent (00)")
            raise TruncatedMessageError(f"truncated header: {len(data)} bytes, a single-object header needs {HEADER_SIZE}")
        if data[:2] != MAGIC:
            raise WrongHeaderError(
                f"wrong header: expected C3 01 (single-object) or 00 (Confluent), got {bytes(data[:2]).hex(' ').upper()}"
            )
        fingerprint = bytes(data[2:HEADER_SIZE])
        writer = self.registry.get(fingerprint)
        if writer is None:
            raise UnknownSchemaError(f"unknown writer schema fingerprint {fingerprint.hex()}")
        return writer, HEADER_SIZE

    def _confluent_writer(self, data: bytes) -> SchemaVersion:
        if len(data) < CONFLUENT_HEADER_SIZE:
            raise TruncatedMessageError(
                f"truncated header: {len(data)} bytes, a Confluent header needs {CONFLUENT_HEADER_SIZE}"
            )
        schema_id = _SCHEMA_ID.unpack_from(bytes(data[1:CONFLUENT_HEADER_SIZE]))[0]
        writer = self.registry.by_id(schema_id)
        if writer is None:
            raise UnknownSchemaIdError(f"unknown schema id {schema_id} (Confluent wire format)", schema_id)
        return writer

    def decode(self, data: bytes, reader: SchemaVersion | None = None) -> dict[str, Any]:
        """The record in `data`, read with its writer schema, or resolved into `reader` when given."""
        writer, start = self.header(data)
        if type(data) is not bytes:  # bytearray / memoryview: the compiled reader slices and decodes bytes
            data = bytes(data)
        if reader is None or reader.fingerprint == writer.fingerprint:
            flat = self._flat_reader(writer)
            if flat is not None:
                try:
                    record, end = flat(data, start)
                except (IndexError, struct.error) as exc:
                    raise TruncatedMessageError("truncated body: ran out of bytes") from exc
                except (FlatReaderError, UnicodeDecodeError) as exc:
                    raise DecodeError(f"undecodable body ({exc})") from exc
                if end != len(data):
                    raise DecodeError(f"{len(data) - end} trailing bytes after the Avro body")
                return record
        buf = BytesIO(data)
        buf.seek(start)
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
