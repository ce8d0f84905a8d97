"""The error hierarchy: one root, small subclasses named after the failure."""

from __future__ import annotations

__all__ = [
    "TelemetryError",
    "SchemaLoadError",
    "DecodeError",
    "EmptyMessageError",
    "WrongHeaderError",
    "TruncatedMessageError",
    "UnknownSchemaError",
    "UnknownSchemaIdError",
    "EncodeError",
    "CompatibilityError",
]


class TelemetryError(Exception):
    """Root of every error this project raises on purpose; its message is one line a user can read."""


class SchemaLoadError(TelemetryError):
    """An `.avsc` file (or a schema fetched from the schema topic) is missing or not a valid Avro schema."""


class DecodeError(TelemetryError):
    """Bytes that are not a decodable Avro message (single-object or Confluent-framed); `reason` says why in one
    line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# The kinds of decode failure a reader tells apart (the DLQ's `error.rule`), by type rather than by text.


class EmptyMessageError(DecodeError):
    """No bytes at all: a null value or an empty one."""


class WrongHeaderError(DecodeError):
    """Neither wire format: no `C3 01` marker and no Confluent `00` magic byte (or not bytes)."""


class TruncatedMessageError(DecodeError):
    """A message cut short, in its header or its body."""


class UnknownSchemaError(DecodeError):
    """A well-formed header naming a writer schema the reader does not know (yet)."""


class UnknownSchemaIdError(UnknownSchemaError):
    """A Confluent-framed message whose schema id the reader has not (yet) fetched from a Schema Registry."""

    def __init__(self, reason: str, schema_id: int) -> None:
        super().__init__(reason)
        self.schema_id = schema_id


class EncodeError(TelemetryError):
    """A record that cannot be written with its version's writer schema."""


class CompatibilityError(TelemetryError):
    """Two schema versions that cannot read each other's data; the message names the field."""
