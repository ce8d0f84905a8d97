"""The known schema versions: loaded from the `.avsc` files beside this module, indexed by fingerprint.

A schema *family* is the set of files `<family>_v<major>.<minor>.avsc` (for example `epoch_summary_v1.1.avsc`);
its versions are ordered by (major, minor). Writer schemas fetched at run time (from the schema topic) are
added with `SchemaRegistry.register`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastavro.schema import parse_schema, to_parsing_canonical_form

from .errors import SchemaLoadError

__all__ = [
    "SCHEMA_DIR",
    "SchemaVersion",
    "SchemaRegistry",
    "crc64_avro",
    "load_family",
    "list_families",
    "schema_from_json",
]

SCHEMA_DIR = Path(__file__).resolve().parent
_FILE_RE = re.compile(r"^(?P<family>[a-z0-9_]+)_v(?P<major>\d+)\.(?P<minor>\d+)\.avsc$")

_CRC64_EMPTY = 0xC15D213AA4D7A795


def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_CRC64_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO (the Rabin fingerprint of the Avro specification) of `data`, as an unsigned 64-bit int."""
    fp = _CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one schema: its JSON, its parsed form, and its single-object fingerprint."""

    family: str
    version: str
    schema: dict[str, Any] = field(repr=False)
    parsed: dict[str, Any] = field(repr=False, compare=False)
    canonical_form: str = field(repr=False)
    fingerprint: bytes = field(repr=False)
    path: Path | None = None

    @property
    def fingerprint_hex(self) -> str:
        """The 8 fingerprint bytes as they appear on the wire (little-endian), as 16 lowercase hex chars."""
        return self.fingerprint.hex()

    @property
    def full_name(self) -> str:
        """The schema's full name, e.g. `ppo.telemetry.EpochSummary`."""
        return str(self.parsed["name"])

    @property
    def field_names(self) -> tuple[str, ...]:
        """The record's field names in schema order."""
        return tuple(f["name"] for f in self.schema.get("fields", ()))


def schema_from_json(schema: Any, family: str = "", version: str = "", path: Path | None = None) -> SchemaVersion:
    """Parse an Avro schema (a JSON string or its decoded value) into a `SchemaVersion`."""
    if isinstance(schema, (str, bytes)):
        try:
            schema = json.loads(schema)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
            raise SchemaLoadError(f"schema {path or family or '<text>'} is not JSON: {exc}") from exc
    try:
        parsed = parse_schema(schema)
        canonical = to_parsing_canonical_form(schema)
    except Exception as exc:  # fastavro raises several types for a bad schema
        raise SchemaLoadError(f"schema {path or family or '<text>'} is not valid Avro: {exc}") from exc
    fp = crc64_avro(canonical.encode("utf-8")).to_bytes(8, "little")
    return SchemaVersion(family, version, schema, parsed, canonical, fp, path)


def _version_key(version: str) -> tuple[int, int]:
    major, minor = version.split(".")
    return int(major), int(minor)


def list_families(directory: Path = SCHEMA_DIR) -> list[str]:
    """The schema families that have at least one `.avsc` file in `directory`, sorted."""
    found = set()
    for path in directory.glob("*.avsc"):
        match = _FILE_RE.match(path.name)
        if match:
            found.add(match["family"])
    return sorted(found)


def load_family(family: str, directory: Path = SCHEMA_DIR) -> list[SchemaVersion]:
    """Every version of `family` in `directory`, oldest first."""
    versions = []
    for path in directory.glob(f"{family}_v*.avsc"):
        match = _FILE_RE.match(path.name)
        if not match or match["family"] != family:
            continue
        version = f"{int(match['major'])}.{int(match['minor'])}"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SchemaLoadError(f"cannot read {path}: {exc.strerror}") from exc
        versions.append(schema_from_json(text, family, version, path))
    if not versions:
        raise SchemaLoadError(f"no schema files for {family!r} in {directory}")
    versions.sort(key=lambda v: _version_key(v.version))
    return versions


class SchemaRegistry:
    """Writer schemas by fingerprint: every local version, plus any registered at run time; and, for the
    Confluent wire format, by the schema id a Confluent-compatible Schema Registry gave them."""

    def __init__(self, versions: list[SchemaVersion] | None = None) -> None:
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        self._by_id: dict[int, SchemaVersion] = {}
        for version in versions or ():
            self.add(version)

    def add(self, version: SchemaVersion) -> SchemaVersion:
        """Make `version` known; returns the version already known under its fingerprint, if any."""
        return self._by_fingerprint.setdefault(version.fingerprint, version)

    def register(self, schema_json: str | bytes, family: str = "", version: str = "") -> SchemaVersion:
        """Parse and add a writer schema received as JSON text (for example from the schema topic)."""
        return self.add(schema_from_json(schema_json, family, version))

    def add_id(self, schema_id: int, schema_json: str | bytes, family: str = "") -> SchemaVersion:
        """Make a Schema Registry's schema known under its id (the local version when it is one of ours)."""
        version = self.register(schema_json, family)
        self._by_id[schema_id] = version
        return version

    def by_id(self, schema_id: int) -> SchemaVersion | None:
        """The writer schema a Schema Registry gave this id, or None (not fetched yet)."""
        return self._by_id.get(schema_id)

    def get(self, fingerprint: bytes) -> SchemaVersion | None:
        """The schema with this 8-byte fingerprint, or None."""
        return self._by_fingerprint.get(fingerprint)

    def __contains__(self, fingerprint: object) -> bool:
        return fingerprint in self._by_fingerprint

    def __len__(self) -> int:
        return len(self._by_fingerprint)
