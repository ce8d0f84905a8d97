"""The validator core (SPEC §2): record-level rules, then stream-level duplicate and gap detection.

Pure functions and a small stateful tracker; no I/O. Input is a parsed JSON value (NDJSON) or an
Avro-decoded dict (Kafka); output is a `Verdict` naming each violated field and rule.

Rule names, stable because other programs read them (`errors[].rule`, the DLQ header `error.rule`):

| rule | meaning |
|---|---|
| `json` | the line is not JSON (or not UTF-8) |
| `line_too_long` | the NDJSON line is longer than the reader's limit (`--max-line-bytes`); it was skipped unread |
| `duplicate_key` | a JSON object names the same key twice (JSON readers would silently keep only the last) |
| `object` | the JSON value is not an object |
| `decode` | the Kafka message is not a decodable single-object Avro message |
| `required` | a field of the record's version is absent |
| `version` | `telemetry_version` is not one of the supported versions |
| `type` | wrong JSON type (integers only for int/long fields; numbers, not booleans, for doubles) |
| `not_null` | null where the field must carry a value |
| `finite` | NaN or ±Infinity, anywhere in the record |
| `pattern` | a string does not match its field's pattern (`run_id`: 1–128 chars of `[A-Za-z0-9._:-]`) |
| `range` | a value outside its field's range (including the Avro int/long range) |
| `enum` | an enum value that is not one of its field's valid symbols (`data_mode`: `replay`, `rollout`, `mixed`) |
| `num_minibatches_le_num_samples` | `num_minibatches > num_samples` |
| `kl_divergence_max_ge_mean` | `kl_divergence_max < kl_divergence - 1e-9` |
| `replay_zero` | `cycle_id` / `rollout_ticks` must be 0 exactly when `data_mode == "replay"` |
| `rollout_positive` | `cycle_id` / `rollout_ticks` must be ≥ 1 for `rollout` and `mixed` |

Every field's type, range, pattern, symbols and cross-field rules come from the field table
(`avro_schemas.fields`): the full check reads it, and the fast path is Python source generated from it.
"""

from __future__ import annotations

import json
import keyword
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from avro_schemas.errors import TelemetryError
from avro_schemas.fields import (
    AVRO_INT_BOUNDS,
    CROSS_FIELD_RULES,
    FIELDS,
    NULLABLE_FIELDS,
    SUPPORTED_VERSIONS,
    VERSION_FIELDS,
    Field,
    Pattern,
    is_valid_run_id,
)
from avro_schemas.ndjson import OverlongLine

__all__ = [
    "FieldError",
    "Verdict",
    "StreamTracker",
    "Validator",
    "validate_record",
    "validate_line_record",
    "parse_json_line",
    "overlong_line_error",
    "RULES",
    "NULLABLE_FIELDS",
    "is_valid_run_id",
]

RULES = (
    "json",
    "line_too_long",
    "duplicate_key",
    "object",
    "decode",
    "required",
    "version",
    "type",
    "not_null",
    "finite",
    "pattern",
    "range",
    "enum",
    "num_minibatches_le_num_samples",
    "kl_divergence_max_ge_mean",
    "replay_zero",
    "rollout_positive",
)

_INF = math.inf


@dataclass(frozen=True, slots=True)
class FieldError:
    """One violated rule: the field it concerns (None for the whole payload), the rule, a readable message."""

    field: str | None
    rule: str
    message: str

    def to_json_dict(self) -> dict[str, Any]:
        """`{"field", "rule", "message"}` as in SPEC §7."""
        return {"field": self.field, "rule": self.rule, "message": self.message}


@dataclass(slots=True)
class Verdict:
    """The outcome for one record: `valid`, `invalid` or `duplicate`, with errors and warnings."""

    status: str
    telemetry_version: str | None = None
    run_id: str | None = None
    log_stream_offset: int | None = None
    errors: list[FieldError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    record: dict[str, Any] | None = None

    @property
    def valid(self) -> bool:
        """True for a valid record (a duplicate is valid too, but is not processed again)."""
        return self.status == "valid"

    def to_json_dict(self, line: int) -> dict[str, Any]:
        """The `validate --json` output object of SPEC §7, keys in the spec's order."""
        return {
            "line": line,
            "status": self.status,
            "telemetry_version": self.telemetry_version,
            "run_id": self.run_id,
            "log_stream_offset": self.log_stream_offset,
            "errors": [e.to_json_dict() for e in self.errors],
            "warnings": list(self.warnings),
        }


class _DuplicateKey(TelemetryError):
    """Raised from inside the JSON decoder at the first object naming a key twice; never leaves this module."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The JSON decoder's object hook: a dict, unless two pairs share a key.

    Comparing sizes costs one `len` per object; the duplicate is looked for only when they differ.
    """
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _has_no_duplicate_keys(text: str, obj: dict[str, Any]) -> bool:
    """True when `text`, which parsed to `obj`, certainly names no key twice, at any depth.

    The hook costs ~1 µs a line (a Python call, pairs built as tuples), so a clean record is proved
    clean without it: every key in JSON text is followed by one structural colon, so the text's colons
    are at least its key occurrences, which are at least `len(obj)`; when the two are equal, no key
    occurs twice and no nested object has keys. Colons inside a `run_id` (allowed by its pattern) are
    discounted when the text has no backslash, since only then are its text and decoded forms the same.
    Anything else returns False and is parsed again with the hook: slower, never wrong.
    """
    colons = text.count(":")
    if colons == len(obj):
        return True
    run_id = obj.get("run_id")
    if type(run_id) is str and "\\" not in text:
        return colons - run_id.count(":") == len(obj)
    return False


# One decoder for every line: `json.loads(text, object_pairs_hook=...)` would build a new one per call.
_DECODER = json.JSONDecoder(object_pairs_hook=_object_without_duplicate_keys)


def parse_json_line(line: bytes | str) -> Any | FieldError:
    """The JSON value of one NDJSON line, or a `FieldError` saying why it is not a record's JSON.

    Rule `json` for what is not JSON (or not UTF-8); rule `duplicate_key`, naming the key, for an object
    (at any depth) that names a key twice: the last value silently winning would hide a corrupted writer.
    """
    if isinstance(line, (bytes, bytearray)):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return FieldError(None, "json", f"line is not UTF-8 (byte {exc.start})")
    try:
        value = json.loads(line)
        if type(value) is dict and _has_no_duplicate_keys(line, value):
            return value
        return _DECODER.decode(line)  # parse again, with the hook that finds and names a duplicate
    except _DuplicateKey as exc:
        return FieldError(exc.key, "duplicate_key", f"key {_short(exc.key)} appears twice in one JSON object")
    except json.JSONDecodeError as exc:
        return FieldError(None, "json", f"not JSON: {exc.msg} at column {exc.colno}")
    except (ValueError, RecursionError) as exc:  # int digits limit, nesting too deep
        return FieldError(None, "json", f"not JSON: {str(exc) or type(exc).__name__}")


def overlong_line_error(line: OverlongLine) -> FieldError:
    """The error (rule `line_too_long`) for a line the reader skipped for being over its limit."""
    return FieldError(
        None, "line_too_long",
        f"line of {line.length:,} bytes is over the limit of {line.limit:,} bytes (--max-line-bytes); not read",
    )


def _identity(data: dict[str, Any]) -> tuple[str | None, str | None, int | None]:
    version = data.get("telemetry_version")
    run_id = data.get("run_id")
    offset = data.get("log_stream_offset")
    return (
        version if type(version) is str else None,
        run_id if type(run_id) is str else None,
        # a v1.0 record has no log_stream_offset field; a key of that name in it is just an unknown key
        offset if type(offset) is int and version != "1.0" else None,
    )


class _KnownMatches:
    """The values of one pattern field already seen to match: a stream repeats a few run_ids, and a set
    lookup is ~5x a regex match."""

    MAX_SIZE = 4096

    def __init__(self, pattern: Pattern) -> None:
        self.pattern = pattern
        self.values: set[str] = set()

    def remember(self, value: str) -> bool:
        """True when `value` matches the pattern; remembered then, while there is room."""
        if not self.pattern.matches(value):
            return False
        if len(self.values) < self.MAX_SIZE:
            self.values.add(value)
        return True


# Names the generated fast path uses besides its locals, which are named after the fields.
_FAST_PATH_NAMES = frozenset({"record", "type", "int", "float", "str", "len", "KeyError", "INF"})


def _python_literal(bound: float, avro_type: str) -> str:
    """A range bound as a literal of the field's Python type (a float against a float compares fastest)."""
    return repr(float(bound)) if avro_type == "double" else repr(bound)


def _fast_range(row: Field) -> str:
    """`low <= name < high` for a numeric field: its range, else its Avro int range or ±INF (finite)."""
    if row.avro_type == "double":
        low, high = ("-INF", "<"), ("INF", "<")
    else:
        avro_low, avro_high = AVRO_INT_BOUNDS[row.avro_type]
        low, high = (repr(avro_low), "<="), (repr(avro_high), "<=")
    bounds = row.range
    if bounds is not None and bounds.min is not None:
        low = (_python_literal(bounds.min, row.avro_type), "<=" if bounds.min_inclusive else "<")
    if bounds is not None and bounds.max is not None:
        high = (_python_literal(bounds.max, row.avro_type), "<=" if bounds.max_inclusive else "<")
    return f"{low[0]} {low[1]} {row.name} {high[1]} {high[0]}"


def _fast_condition(row: Field) -> str:
    """The Python condition that `row`'s field's value (in a local of its name) is of its type and meets its rules."""
    name = row.name
    if row.avro_type == "string":
        check = f"type({name}) is str"
        if row.pattern is not None:
            check += f" and ({name} in known_{name} or remember_{name}({name}))"
    elif row.avro_type == "enum":
        check = f"type({name}) is str and {name} in {row.valid_symbols!r}"
    else:
        python_type = "float" if row.avro_type == "double" else "int"
        check = f"type({name}) is {python_type} and {_fast_range(row)}"
    return f"({name} is None or ({check}))" if row.nullable else check


def _fast_path_source(version: str) -> str:
    """The source of `fast_valid(record) -> bool` for records of `version`, generated from the field table."""
    names = VERSION_FIELDS[version]
    checked = [FIELDS[name] for name in names if name != "telemetry_version"]  # the caller has checked it
    for row in checked:
        assert row.name.isidentifier() and not keyword.iskeyword(row.name), f"{row.name} cannot be a local"
        assert row.name not in _FAST_PATH_NAMES, f"{row.name} would shadow a name the fast path uses"
    lines = ["def fast_valid(record):", "    try:"]
    lines += [f"        {row.name} = record[{row.name!r}]" for row in checked]
    lines += ["    except KeyError:", "        return False", "    return (", f"        len(record) == {len(names)}"]
    lines += [f"        and {_fast_condition(row)}" for row in checked]
    lines += [f"        and {rule.python_condition()}" for rule in CROSS_FIELD_RULES if set(rule.fields) <= set(names)]
    lines.append("    )")
    return "\n".join(lines) + "\n"


def _compile_fast_path(version: str) -> Callable[[dict[str, Any]], bool]:
    """`_fast_path_source(version)` compiled, with a `_KnownMatches` for each pattern field."""
    namespace: dict[str, Any] = {"INF": _INF}
    for row in FIELDS.values():
        if row.pattern is not None:
            known = _KnownMatches(row.pattern)
            namespace[f"known_{row.name}"], namespace[f"remember_{row.name}"] = known.values, known.remember
    code = compile(_fast_path_source(version), f"<fast path of v{version}, generated from avro_schemas.fields>", "exec")
    exec(code, namespace)  # noqa: S102 - our own source, generated from the field table
    return namespace["fast_valid"]


_fast_valid_1_1 = _compile_fast_path("1.1")
"""True only for a clean v1.1 record: exactly its fields, right types, every rule met.

A hot-path shortcut for the common case; anything it does not accept goes through the full check,
which names the errors. It must never accept a record the full check rejects (a property test
holds it to that). Generated from the field table, so it is as fast as a hand-written one.
"""


def _contains_non_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is float:
            if item != item or item in (_INF, -_INF):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _check_type(row: Field, value: Any, errors: list[FieldError]) -> bool:
    """Type, null and finiteness of one field; True when its value may go on to its rules."""
    name = row.name
    if value is None:
        if not row.nullable:
            errors.append(FieldError(name, "not_null", f"{name} must not be null"))
        return False
    kind = row.avro_type
    if type(value) is float and not -_INF < value < _INF:
        # NaN is "not allowed anywhere" (SPEC §2): say so, whatever type the field expects
        errors.append(FieldError(name, "finite", f"{name} must be finite, got {_short(value)}"))
        return False
    if kind in ("int", "long"):
        if type(value) is not int:
            errors.append(FieldError(name, "type", f"{name} must be an integer, got {_describe(value)} {_short(value)}"))
            return False
        low, high = AVRO_INT_BOUNDS[kind]
        if not low <= value <= high:
            errors.append(FieldError(name, "range", f"{name} = {_short(value)} is outside the Avro {kind} range"))
            return False
        return True
    if kind == "double":
        if type(value) is not float and type(value) is not int:
            errors.append(FieldError(name, "type", f"{name} must be a number, got {_describe(value)} {_short(value)}"))
            return False
        try:
            as_float = float(value)
        except OverflowError:
            as_float = _INF
        if not -_INF < as_float < _INF:
            errors.append(FieldError(name, "finite", f"{name} must be finite, got {_short(value)}"))
            return False
        return True
    if kind in ("string", "enum"):
        if type(value) is not str:
            errors.append(FieldError(name, "type", f"{name} must be a string, got {_describe(value)} {_short(value)}"))
            return False
        return True
    raise AssertionError(f"unhandled Avro type {kind} for {name}")  # schema and validator out of step


def _short(value: Any) -> str:
    """A short, safe rendering of a value for a message (never raises, never walks a whole container)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int) and value.bit_length() > 128:
        return f"<integer of {value.bit_length()} bits>"  # repr of a huge int is slow, and refused past 4300 digits
    if isinstance(value, list):
        return f"<array of {len(value)} items>"
    if isinstance(value, dict):
        return f"<object of {len(value)} keys>"
    text = json.dumps(value) if isinstance(value, float) else repr(value[:41] if isinstance(value, str) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def _rule_error(row: Field, value: Any) -> FieldError | None:
    """The error of a value of the right type that breaks its field's own rule: pattern, symbols or range."""
    name = row.name
    if row.pattern is not None and not row.pattern.matches(value):
        return FieldError(name, "pattern", f"{name} must be {row.pattern.description}, got {_short(value)}")
    if row.valid_symbols and value not in row.valid_symbols:
        return FieldError(name, "enum", f"{name} must be one of {', '.join(row.valid_symbols)}, got {_short(value)}")
    if row.range is not None and not row.range.contains(value):
        return FieldError(name, "range", f"{name} must be {row.range.describe()}, got {_short(value)}")
    return None


def _check_record(data: dict[str, Any], version: str, verdict: Verdict) -> None:
    errors = verdict.errors
    names = VERSION_FIELDS[version]
    ok: dict[str, Any] = {}  # fields whose value passed its own checks
    for name in names:
        if name == "telemetry_version":
            continue
        if name not in data:
            errors.append(FieldError(name, "required", f"{name} is required in a v{version} record"))
            continue
        value = data[name]
        row = FIELDS[name]
        if not _check_type(row, value, errors):
            continue
        error = _rule_error(row, value)
        if error is not None:
            errors.append(error)
            continue
        ok[name] = value

    for rule in CROSS_FIELD_RULES:
        errors.extend(FieldError(*violation) for violation in rule.violations(ok))

    known = set(names)
    for key, value in data.items():
        if key in known:
            continue
        if _contains_non_finite(value):
            errors.append(FieldError(key, "finite", f"{key} holds NaN or Infinity"))
        else:
            verdict.warnings.append(f"unknown key {key!r} ignored: not a field of telemetry_version {version}")


def validate_record(data: Any) -> Verdict:
    """Record-level validation (SPEC §2) of one parsed JSON value or Avro-decoded dict.

    Returns a `Verdict` with status `valid` or `invalid`; stream-level rules are `StreamTracker`'s.
    """
    if not isinstance(data, dict):
        return Verdict("invalid", errors=[FieldError(None, "object", f"record must be a JSON object, got {_describe(data)}")])
    version, run_id, offset = _identity(data)
    verdict = Verdict("valid", version, run_id, offset)
    if version == "1.1" and _fast_valid_1_1(data):
        verdict.record = data
        return verdict
    if "telemetry_version" not in data:
        verdict.errors.append(FieldError("telemetry_version", "required", "telemetry_version is required"))
    elif version not in SUPPORTED_VERSIONS:
        supported = ", ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
        verdict.errors.append(FieldError(
            "telemetry_version", "version",
            f"telemetry_version must be one of {supported}, got {_short(data['telemetry_version'])}",
        ))
    else:
        _check_record(data, version, verdict)
    if verdict.errors:
        verdict.status = "invalid"
    else:
        verdict.record = data
    return verdict


def validate_line_record(line: bytes | str | OverlongLine) -> Verdict:
    """Record-level validation of one NDJSON line (not JSON: an `invalid` verdict with rule `json`;
    a line the reader skipped as over-long: rule `line_too_long`)."""
    if isinstance(line, OverlongLine):
        return Verdict("invalid", errors=[overlong_line_error(line)])
    value = parse_json_line(line)
    if isinstance(value, FieldError):
        return Verdict("invalid", errors=[value])
    return validate_record(value)


class StreamTracker:
    """Stream-level rules (SPEC §2): per run, the last accepted `log_stream_offset`.

    A valid v1.1 record whose offset is not above the run's last accepted one is a duplicate; one that
    jumps past last + 1 is valid with a warning naming how many are missing. The first record seen for a
    run sets the mark (a tailer may start anywhere). `last_offsets` is plain data, so a consumer can
    persist it and resume.
    """

    def __init__(self, last_offsets: dict[str, int] | None = None) -> None:
        self.last_offsets: dict[str, int] = dict(last_offsets or {})
        self.duplicates = 0
        self.gaps = 0

    def check(self, verdict: Verdict) -> Verdict:
        """Apply the stream rules to a record-level verdict, in arrival order; returns the same verdict."""
        if verdict.status != "valid" or verdict.telemetry_version != "1.1":
            return verdict
        run_id, offset = verdict.run_id, verdict.log_stream_offset
        last = self.last_offsets.get(run_id)
        if last is not None:
            if offset <= last:
                verdict.status = "duplicate"
                self.duplicates += 1
                return verdict
            if offset > last + 1:
                missing = offset - last - 1
                self.gaps += 1
                verdict.warnings.append(
                    f"gap: {missing} record{'s' if missing != 1 else ''} missing in run {run_id} "
                    f"between log_stream_offset {last} and {offset}"
                )
        self.last_offsets[run_id] = offset
        return verdict


class Validator:
    """Record and stream rules together, for a stream of NDJSON lines or decoded records."""

    def __init__(self, tracker: StreamTracker | None = None) -> None:
        self.tracker = tracker if tracker is not None else StreamTracker()
        self.counts = {"valid": 0, "invalid": 0, "duplicate": 0}

    def validate(self, data: Any) -> Verdict:
        """Validate one parsed record (a JSON value or an Avro-decoded dict) in stream order."""
        verdict = self.tracker.check(validate_record(data))
        self.counts[verdict.status] += 1
        return verdict

    def validate_line(self, line: bytes | str | OverlongLine) -> Verdict:
        """Validate one NDJSON line in stream order."""
        verdict = self.tracker.check(validate_line_record(line))
        self.counts[verdict.status] += 1
        return verdict
