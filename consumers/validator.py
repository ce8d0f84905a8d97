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
| `pattern` | `run_id` is not 1–128 chars of `[A-Za-z0-9._:-]` |
| `range` | a value outside its field's range (including the Avro int/long range) |
| `enum` | `data_mode` is not `replay`, `rollout` or `mixed` |
| `num_minibatches_le_num_samples` | `num_minibatches > num_samples` |
| `kl_divergence_max_ge_mean` | `kl_divergence_max < kl_divergence - 1e-9` |
| `replay_zero` | `cycle_id` / `rollout_ticks` must be 0 exactly when `data_mode == "replay"` |
| `rollout_positive` | `cycle_id` / `rollout_ticks` must be ≥ 1 for `rollout` and `mixed` |
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from avro_schemas.errors import TelemetryError
from avro_schemas.models import FIELD_TYPES, SUPPORTED_VERSIONS, VERSION_FIELDS
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

# Fields that may be null in a valid record; every other field must carry a value even where its
# Avro type is a ["null", T] union (v1.1 fields are nullable in Avro only for schema evolution).
NULLABLE_FIELDS = frozenset({"explained_variance", "mean_episode_return", "reward_advantage_corr"})

_RUN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_INT_BOUNDS = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_INF = math.inf
# run_ids already seen to match _RUN_ID: a stream repeats a few ids, and a set lookup is ~5x a regex match.
_KNOWN_RUN_IDS: set[str] = set()
_KNOWN_RUN_IDS_MAX = 4096
_KL_TOLERANCE = 1e-9


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


def is_valid_run_id(run_id: str) -> bool:
    """True for 1-128 chars of [A-Za-z0-9._:-] (SPEC §1)."""
    return isinstance(run_id, str) and _RUN_ID.fullmatch(run_id) is not None


def _remember_run_id(run_id: str) -> bool:
    if _RUN_ID.fullmatch(run_id) is None:
        return False
    if len(_KNOWN_RUN_IDS) < _KNOWN_RUN_IDS_MAX:
        _KNOWN_RUN_IDS.add(run_id)
    return True


def _fast_valid_1_1(r: dict[str, Any]) -> bool:
    """True only for a clean v1.1 record: exactly its fields, right types, every rule met.

    A hot-path shortcut for the common case; anything it does not accept goes through the full check,
    which names the errors. It must never accept a record the full check rejects (a property test
    holds it to that).
    """
    try:
        run_id = r["run_id"]
        ns = r["num_samples"]
        nm = r["num_minibatches"]
        ev = r["explained_variance"]
        mr = r["mean_episode_return"]
        kl = r["kl_divergence"]
        klm = r["kl_divergence_max"]
        mode = r["data_mode"]
        cyc = r["cycle_id"]
        ticks = r["rollout_ticks"]
        corr = r["reward_advantage_corr"]
        pl = r["policy_loss"]
        vl = r["value_loss"]
        cf = r["clip_fraction"]
        lr = r["learning_rate"]
        dur = r["epoch_duration_sec"]
        em = r["batch_entropy_mean"]
        es = r["batch_entropy_std"]
        gn = r["grad_norm_max"]
        ep = r["epoch"]
        gs = r["global_step"]
        ts = r["timestamp_ms"]
        off = r["log_stream_offset"]
    except KeyError:
        return False
    F = float
    I = int
    return (
        len(r) == 24
        and type(run_id) is str
        and (run_id in _KNOWN_RUN_IDS or _remember_run_id(run_id))
        and type(ep) is I and 0 <= ep < 2147483648
        and type(gs) is I and 0 <= gs < 9223372036854775808
        and type(ts) is I and 0 < ts < 9223372036854775808
        and type(ns) is I and 1 <= ns < 2147483648
        and type(nm) is I and 1 <= nm <= ns
        and type(pl) is F and -_INF < pl < _INF
        and type(vl) is F and 0.0 <= vl < _INF
        and type(kl) is F and 0.0 <= kl < _INF
        and type(cf) is F and 0.0 <= cf <= 1.0
        and type(lr) is F and 0.0 < lr < _INF
        and (ev is None or (type(ev) is F and -_INF < ev <= 1.0))
        and (mr is None or (type(mr) is F and -_INF < mr < _INF))
        and type(dur) is F and 0.0 <= dur < _INF
        and type(em) is F and -_INF < em < _INF
        and type(es) is F and 0.0 <= es < _INF
        and type(gn) is F and 0.0 <= gn < _INF
        and type(klm) is F and 0.0 <= klm < _INF and klm >= kl - _KL_TOLERANCE
        and (corr is None or (type(corr) is F and -1.0 <= corr <= 1.0))
        and type(off) is I and 0 <= off < 9223372036854775808
        and type(cyc) is I and type(ticks) is I
        and (
            (mode == "replay" and cyc == 0 and ticks == 0)
            or ((mode == "rollout" or mode == "mixed") and 1 <= cyc < 9223372036854775808 and 1 <= ticks < 9223372036854775808)
        )
    )


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


def _check_type(name: str, value: Any, errors: list[FieldError]) -> bool:
    """Type, null and finiteness of one field; True when its value may go on to the range checks."""
    ftype = FIELD_TYPES[name]
    if value is None:
        if name not in NULLABLE_FIELDS:
            errors.append(FieldError(name, "not_null", f"{name} must not be null"))
        return False
    kind = ftype.avro_type
    if type(value) is float and not -_INF < value < _INF:
        # NaN is "not allowed anywhere" (SPEC §2): say so, whatever type the field expects
        errors.append(FieldError(name, "finite", f"{name} must be finite, got {_short(value)}"))
        return False
    if kind in ("int", "long"):
        if type(value) is not int:
            errors.append(FieldError(name, "type", f"{name} must be an integer, got {_describe(value)} {_short(value)}"))
            return False
        low, high = _INT_BOUNDS[kind]
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


# Per-field range rules: (predicate, description). Values reaching them have the right type and are finite.
_RANGES: dict[str, tuple[Any, str]] = {
    "epoch": (lambda v: v >= 0, "≥ 0"),
    "global_step": (lambda v: v >= 0, "≥ 0"),
    "timestamp_ms": (lambda v: v > 0, "> 0"),
    "value_loss": (lambda v: v >= 0, "≥ 0"),
    "kl_divergence": (lambda v: v >= 0, "≥ 0"),
    "clip_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "explained_variance": (lambda v: v <= 1, "≤ 1"),
    "learning_rate": (lambda v: v > 0, "> 0"),
    "num_samples": (lambda v: v >= 1, "≥ 1"),
    "num_minibatches": (lambda v: v >= 1, "≥ 1"),
    "epoch_duration_sec": (lambda v: v >= 0, "≥ 0"),
    "cycle_id": (lambda v: v >= 0, "≥ 0"),
    "batch_entropy_std": (lambda v: v >= 0, "≥ 0"),
    "grad_norm_max": (lambda v: v >= 0, "≥ 0"),
    "kl_divergence_max": (lambda v: v >= 0, "≥ 0"),
    "reward_advantage_corr": (lambda v: -1 <= v <= 1, "in [-1, 1]"),
    "rollout_ticks": (lambda v: v >= 0, "≥ 0"),
    "log_stream_offset": (lambda v: v >= 0, "≥ 0"),
}

_VALID_MODES = ("replay", "rollout", "mixed")


def _check_record(data: dict[str, Any], version: str, verdict: Verdict) -> None:
    errors = verdict.errors
    names = VERSION_FIELDS[version]
    ok: dict[str, Any] = {}  # fields whose value passed type and range checks
    for name in names:
        if name == "telemetry_version":
            continue
        if name not in data:
            errors.append(FieldError(name, "required", f"{name} is required in a v{version} record"))
            continue
        value = data[name]
        if not _check_type(name, value, errors):
            continue
        if name == "run_id":
            if _RUN_ID.fullmatch(value) is None:
                errors.append(FieldError(name, "pattern", f"run_id must be 1-128 chars of [A-Za-z0-9._:-], got {_short(value)}"))
                continue
        elif name == "data_mode":
            if value not in _VALID_MODES:
                errors.append(FieldError(name, "enum", f"data_mode must be one of replay, rollout, mixed, got {_short(value)}"))
                continue
        else:
            rule = _RANGES.get(name)
            if rule is not None and not rule[0](value):
                errors.append(FieldError(name, "range", f"{name} must be {rule[1]}, got {_short(value)}"))
                continue
        ok[name] = value

    if "num_minibatches" in ok and "num_samples" in ok and ok["num_minibatches"] > ok["num_samples"]:
        errors.append(FieldError(
            "num_minibatches", "num_minibatches_le_num_samples",
            f"num_minibatches ({ok['num_minibatches']}) must be ≤ num_samples ({ok['num_samples']})",
        ))
    if "kl_divergence_max" in ok and "kl_divergence" in ok and ok["kl_divergence_max"] < ok["kl_divergence"] - _KL_TOLERANCE:
        errors.append(FieldError(
            "kl_divergence_max", "kl_divergence_max_ge_mean",
            f"kl_divergence_max ({ok['kl_divergence_max']}) must be ≥ kl_divergence ({ok['kl_divergence']})",
        ))
    mode = ok.get("data_mode")
    if mode is not None:
        for name in ("cycle_id", "rollout_ticks"):
            if name not in ok:
                continue
            if mode == "replay" and ok[name] != 0:
                errors.append(FieldError(name, "replay_zero", f"{name} must be 0 when data_mode is replay, got {ok[name]}"))
            elif mode != "replay" and ok[name] < 1:
                errors.append(FieldError(name, "rollout_positive", f"{name} must be ≥ 1 when data_mode is {mode}, got {ok[name]}"))

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
