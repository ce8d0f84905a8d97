"""Property tests: the validator and the codec agree with SPEC §1–§3 on any input, not just examples.

`valid_records()` generates any record the SPEC calls valid, of either version, from the field table
(`avro_schemas.fields`: types, ranges, null rules, pattern, symbols, cross-field rules); the properties check that
the validator accepts all of them, that the codec round-trips them, that no bytes and no JSON value can
crash the decoder or the validator, and that the validator's fast path never accepts what its full check
rejects.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avro_schemas.codec import HEADER_SIZE, MAGIC, epoch_summary_codec
from avro_schemas.errors import DecodeError
from avro_schemas.fields import (
    AVRO_INT_BOUNDS,
    CROSS_FIELD_RULES,
    FIELDS,
    RUN_ID_PATTERN,
    Comparison,
    Field,
    Range,
    ZeroExactlyInMode,
)
from avro_schemas.models import FIELD_TYPES, VERSION_FIELDS
from consumers.validator import RULES, Validator, Verdict, _check_record, _fast_valid_1_1, validate_record

CODEC = epoch_summary_codec()
FINGERPRINTS = [v.fingerprint for v in CODEC.versions.values()]
ALL_FIELDS = VERSION_FIELDS["1.1"]
DOUBLE_FIELDS = frozenset(name for name, t in FIELD_TYPES.items() if t.avro_type == "double")

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- strategies --------------------------------------------------------------------------------------


def _doubles(
    min_value: float | None = None,
    max_value: float | None = None,
    exclude_min: bool = False,
    exclude_max: bool = False,
    ints: bool = False,
) -> st.SearchStrategy[float | int]:
    """Finite doubles in a range; with `ints`, sometimes a JSON integer, which a double field also takes."""
    floats = st.floats(
        min_value=min_value,
        max_value=max_value,
        exclude_min=exclude_min,
        exclude_max=exclude_max,
        allow_nan=False,
        allow_infinity=False,
    )
    if not ints:
        return floats
    low = -(2**53) if min_value is None else math.ceil(min_value) + (1 if exclude_min and float(min_value).is_integer() else 0)
    high = 2**53 if max_value is None else math.floor(max_value) - (1 if exclude_max and float(max_value).is_integer() else 0)
    return st.one_of(floats, st.integers(low, high)) if low <= high else floats


def _integers(
    row: Field, low: float | None, high: float | None, exclude_low: bool, exclude_high: bool
) -> st.SearchStrategy[int]:
    """Integers in a range, within the field's Avro int or long range."""
    avro_low, avro_high = AVRO_INT_BOUNDS[row.avro_type]
    low = avro_low if low is None else max(avro_low, math.floor(low) + 1 if exclude_low else math.ceil(low))
    high = avro_high if high is None else min(avro_high, math.ceil(high) - 1 if exclude_high else math.floor(high))
    return st.integers(low, high)


def _is_compared_with_tolerance(row: Field) -> bool:
    """True for a field another field must stay within a tolerance of (a KL mean, which its max may undercut)."""
    return any(isinstance(rule, Comparison) and rule.tolerance and rule.other == row.name for rule in CROSS_FIELD_RULES)


def _constrained_by_others(name: str) -> bool:
    """True for a field a cross-field rule bounds by another field's value."""
    return any(
        (isinstance(rule, Comparison) and rule.field == name)
        or (isinstance(rule, ZeroExactlyInMode) and name in rule.counters)
        for rule in CROSS_FIELD_RULES
    )


def _raised(low: float | None, exclude_low: bool, value: float) -> tuple[float, bool]:
    """The lower bound (and whether it is excluded) after adding the inclusive lower bound `value`."""
    return (value, False) if low is None or value > low else (low, exclude_low)


def _lowered(high: float | None, exclude_high: bool, value: float) -> tuple[float, bool]:
    """The upper bound (and whether it is excluded) after adding the inclusive upper bound `value`."""
    return (value, False) if high is None or value < high else (high, exclude_high)


def _bounds(row: Field, record: dict[str, Any]) -> tuple[float | None, bool, float | None, bool]:
    """(low, exclude_low, high, exclude_high): `row`'s range, narrowed by the cross-field rules given the
    fields of `record` already drawn."""
    own = row.range or Range()
    low, exclude_low, high, exclude_high = own.min, not own.min_inclusive, own.max, not own.max_inclusive
    for rule in CROSS_FIELD_RULES:
        if isinstance(rule, Comparison) and rule.field == row.name and record.get(rule.other) is not None:
            other = record[rule.other]
            # the rule's own expression as the bound, so the boundary case (e.g. kl - 1e-9 exactly) is drawn too
            if rule.op == "≤":
                high, exclude_high = _lowered(high, exclude_high, other + rule.tolerance if rule.tolerance else other)
            else:
                low, exclude_low = _raised(low, exclude_low, other - rule.tolerance if rule.tolerance else other)
        elif isinstance(rule, ZeroExactlyInMode) and row.name in rule.counters:
            if record[rule.mode_field] == rule.zero_mode:
                high, exclude_high = _lowered(high, exclude_high, 0)
                low, exclude_low = _raised(low, exclude_low, 0)
            else:
                low, exclude_low = _raised(low, exclude_low, 1)
    return low, exclude_low, high, exclude_high


def _value_strategy(row: Field, record: dict[str, Any], ints_in_doubles: bool) -> st.SearchStrategy[Any]:
    """Valid values of `row`'s field, given the fields of `record` already drawn (cross-field rules)."""
    if row.pattern is not None:
        return st.from_regex(row.pattern.regex, fullmatch=True)
    if row.valid_symbols:
        return st.sampled_from(row.valid_symbols)
    low, exclude_low, high, exclude_high = _bounds(row, record)
    if row.avro_type != "double":
        return _integers(row, low, high, exclude_low, exclude_high)
    values = _doubles(low, high, exclude_low, exclude_high, ints=ints_in_doubles)
    if _is_compared_with_tolerance(row):
        # Realistic KLs are small; that is also where a tolerance of 1e-9 matters.
        start = 0.0 if low is None else low
        values = st.one_of(values, st.floats(start, start + 0.1, exclude_min=exclude_low))
    return values


@st.composite
def valid_records(draw, version: str | None = None, ints_in_doubles: bool = False) -> dict[str, Any]:
    """Any record valid under SPEC §1, from the field table: every range, the cross-field rules, the null rules."""
    version = version or draw(st.sampled_from(["1.0", "1.1"]))
    names = VERSION_FIELDS[version]
    record: dict[str, Any] = {"telemetry_version": version}
    # fields bounded by other fields are drawn after them
    for name in sorted((n for n in names if n != "telemetry_version"), key=_constrained_by_others):
        row = FIELDS[name]
        values = _value_strategy(row, record, ints_in_doubles)
        record[name] = draw(st.one_of(st.none(), values) if row.nullable else values)
    return {name: record[name] for name in names}


# JSON-like values: everything json.loads can return (and more: NaN, ±inf, ints too big for a double).
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(10**400), 10**400),
    st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, -(2**31) - 1, 2**63 - 1, 2**63, -(2**63) - 1, 10**309]),
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.0, 1.0, -1.0, 1e-9, 1.0000000001, 5e-324]),
    st.text(),
    st.sampled_from(["1.0", "1.1", "replay", "rollout", "mixed", "unknown", "", "3", "run-1"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)
# Dicts made of the record's real field names, each present or not, with arbitrary values.
field_dicts = st.fixed_dictionaries(
    {},
    optional={
        "telemetry_version": st.one_of(st.sampled_from(["1.0", "1.1"]), json_values),
        **{name: json_values for name in ALL_FIELDS if name != "telemetry_version"},
    },
)


def _normalized(record: dict[str, Any]) -> dict[str, Any]:
    """What Avro gives back: double fields as floats."""
    return {
        k: float(v) if k in DOUBLE_FIELDS and v is not None else v
        for k, v in record.items()
    }


def _check_verdict(verdict: Any, statuses: tuple[str, ...] = ("valid", "invalid")) -> None:
    assert isinstance(verdict, Verdict)
    assert verdict.status in statuses
    for error in verdict.errors:
        assert error.rule in RULES, error
        assert isinstance(error.message, str) and error.message
    assert (verdict.status == "invalid") == bool(verdict.errors)
    assert all(isinstance(w, str) for w in verdict.warnings)
    json.dumps(verdict.to_json_dict(1))  # the CLI's output object is always serializable


# --- (1) every valid record validates ----------------------------------------------------------------


@PROPERTY
@given(valid_records(ints_in_doubles=True))
def test_every_generated_valid_record_is_valid(record):
    verdict = validate_record(record)
    assert verdict.status == "valid", verdict.errors
    assert verdict.errors == []
    assert verdict.warnings == []
    assert verdict.telemetry_version == record["telemetry_version"]
    assert verdict.run_id == record["run_id"]
    assert verdict.log_stream_offset == record.get("log_stream_offset")


@PROPERTY
@given(valid_records(ints_in_doubles=True), st.dictionaries(st.text(min_size=1).filter(lambda k: k not in ALL_FIELDS), json_scalars.filter(lambda v: not isinstance(v, float) or math.isfinite(v)), min_size=1, max_size=3))
def test_valid_record_with_unknown_finite_keys_stays_valid_with_warnings(record, extra):
    verdict = validate_record({**record, **extra})
    assert verdict.status == "valid", verdict.errors
    assert len(verdict.warnings) == len(extra)


@PROPERTY
@given(valid_records(version="1.0", ints_in_doubles=True), st.data())
def test_v1_0_record_carrying_v1_1_keys_is_a_valid_v1_0_record(record, data):
    extra = data.draw(valid_records(version="1.1"))
    merged = {**{k: v for k, v in extra.items() if k not in record}, **record}
    verdict = validate_record(merged)
    assert verdict.status == "valid", verdict.errors
    assert verdict.telemetry_version == "1.0"
    assert len(verdict.warnings) == 10


# --- (2) codec round trip ----------------------------------------------------------------------------


@PROPERTY
@given(valid_records(ints_in_doubles=True))
def test_codec_round_trip_returns_any_valid_record(record):
    message = CODEC.encode(record)
    assert message[:2] == MAGIC
    decoded = CODEC.decode(message)
    assert decoded == _normalized(record)
    assert list(decoded) == list(VERSION_FIELDS[record["telemetry_version"]])
    # Doubles must come back bit for bit (e.g. -0.0 stays -0.0).
    for name in DOUBLE_FIELDS & decoded.keys():
        if decoded[name] is not None:
            assert math.copysign(1.0, decoded[name]) == math.copysign(1.0, float(record[name]))


@PROPERTY
@given(valid_records())
def test_decoded_record_is_still_valid(record):
    assert validate_record(CODEC.decode(CODEC.encode(record))).status == "valid"


@PROPERTY
@given(valid_records())
def test_codec_round_trip_into_the_other_reader_version(record):
    message = CODEC.encode(record)
    as_v1_1 = CODEC.decode(message, reader=CODEC.versions["1.1"])
    as_v1_0 = CODEC.decode(message, reader=CODEC.versions["1.0"])
    assert as_v1_0 == {k: record[k] for k in VERSION_FIELDS["1.0"]}
    assert as_v1_1 == {k: record.get(k) for k in VERSION_FIELDS["1.1"]}


# --- (3) no bytes crash the decoder ------------------------------------------------------------------


def _decode_or_decode_error(data: bytes) -> dict[str, Any] | None:
    try:
        record = CODEC.decode(data)
    except DecodeError as exc:
        assert exc.reason and "\n" not in exc.reason
        return None
    assert isinstance(record, dict)
    return record


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_decode_error(data):
    _decode_or_decode_error(data)


@FUZZ
@given(st.sampled_from(FINGERPRINTS), st.binary(max_size=300))
def test_valid_header_with_arbitrary_body_decodes_or_raises_decode_error(fingerprint, body):
    record = _decode_or_decode_error(MAGIC + fingerprint + body)
    if record is not None:
        # Whatever decodes has exactly its writer's fields; the validator then judges it without crashing.
        assert set(record) in ({*VERSION_FIELDS["1.0"]}, {*VERSION_FIELDS["1.1"]})
        _check_verdict(validate_record(record))


def _avro_string(text: str) -> bytes:
    """An Avro string: zig-zag varint length, then UTF-8 bytes."""
    data = text.encode("utf-8")
    n = len(data) << 1  # zig-zag of a non-negative length
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + data


# Random bodies almost always die on the first string length; these get past both strings, so the
# arbitrary bytes land on the ints, doubles, unions and the enum.
bodies_past_the_strings = st.builds(
    lambda version, run_id, rest: _avro_string(version) + _avro_string(run_id) + rest,
    st.sampled_from(["1.0", "1.1", ""]),
    st.from_regex(RUN_ID_PATTERN.regex, fullmatch=True).map(lambda run_id: run_id[:12]),
    st.one_of(st.binary(max_size=200), st.binary(min_size=60, max_size=200)),
)


@FUZZ
@given(st.sampled_from(FINGERPRINTS), bodies_past_the_strings, st.sampled_from([None, "1.0", "1.1"]))
def test_valid_header_and_strings_with_arbitrary_rest_decodes_or_raises_decode_error(fingerprint, body, reader):
    message = MAGIC + fingerprint + body
    record = _decode_or_decode_error(message)
    if record is not None:
        _check_verdict(validate_record(record))
    try:
        CODEC.decode(message, reader=None if reader is None else CODEC.versions[reader])
    except DecodeError:
        pass


@FUZZ
@given(st.sampled_from(FINGERPRINTS), st.binary(max_size=300), st.sampled_from(["1.0", "1.1"]))
def test_valid_header_with_arbitrary_body_into_either_reader_raises_only_decode_error(fingerprint, body, reader):
    try:
        CODEC.decode(MAGIC + fingerprint + body, reader=CODEC.versions[reader])
    except DecodeError:
        pass


@FUZZ
@given(valid_records(), st.data())
def test_valid_message_with_random_flips_decodes_or_raises_decode_error(record, data):
    message = bytearray(CODEC.encode(record))
    flips = data.draw(
        st.lists(st.tuples(st.integers(HEADER_SIZE, len(message) - 1), st.integers(0, 255)), min_size=1, max_size=4)
    )
    for position, value in flips:
        message[position] = value
    _decode_or_decode_error(bytes(message))
    try:
        CODEC.decode(bytes(message), reader=CODEC.versions["1.1"])
    except DecodeError:
        pass


@FUZZ
@given(valid_records(), st.data())
def test_valid_message_truncated_or_extended_is_a_decode_error(record, data):
    message = CODEC.encode(record)
    end = data.draw(st.integers(0, len(message) - 1))
    for reader in (None, CODEC.versions["1.0"], CODEC.versions["1.1"]):
        try:
            CODEC.decode(message[:end], reader=reader)
        except DecodeError:
            pass
        else:
            raise AssertionError(f"a {end}-byte prefix of a {len(message)}-byte message decoded")
    extra = data.draw(st.binary(min_size=1, max_size=16))
    try:
        CODEC.decode(message + extra)
    except DecodeError:
        pass
    else:
        raise AssertionError("a message with trailing bytes decoded")


@FUZZ
@given(valid_records(), st.data())
def test_valid_message_with_bytes_inserted_or_deleted_decodes_or_raises_decode_error(record, data):
    message = bytearray(CODEC.encode(record))
    position = data.draw(st.integers(HEADER_SIZE, len(message)))
    if data.draw(st.booleans()):
        message[position:position] = data.draw(st.binary(min_size=1, max_size=12))
    else:
        del message[position : position + data.draw(st.integers(1, 12))]
    _decode_or_decode_error(bytes(message))


# --- (4) the validator never crashes on JSON values --------------------------------------------------


@PROPERTY
@given(json_values)
def test_validator_never_crashes_on_arbitrary_json_values(value):
    _check_verdict(validate_record(value))


@settings(max_examples=500, deadline=None)
@given(field_dicts)
def test_validator_never_crashes_on_real_field_names_with_arbitrary_values(value):
    _check_verdict(validate_record(value))


@settings(max_examples=500, deadline=None)
@given(valid_records(), st.sampled_from(ALL_FIELDS), json_values)
def test_validator_never_crashes_on_a_valid_record_with_one_arbitrary_field(record, name, value):
    _check_verdict(validate_record({**record, name: value}))


def test_validator_never_crashes_on_ints_beyond_the_int_str_digit_limit():
    # Python refuses str() of ints over 4300 digits; an error message must not try to print one whole.
    huge = 10**5000
    for record in (
        {"telemetry_version": "1.1", "epoch": huge},
        {"telemetry_version": "1.0", "run_id": [huge]},
        {"telemetry_version": huge},
    ):
        _check_verdict(validate_record(record))


# --- (5) Validator.validate_line never crashes -------------------------------------------------------


def _json_lines():
    return st.one_of(
        st.text(),
        st.binary(),
        json_values.map(lambda v: _dumps_or_text(v)),
        valid_records().map(json.dumps),
        st.tuples(valid_records().map(json.dumps), st.integers(0, 200)).map(lambda t: t[0][: t[1]]),
    )


def _dumps_or_text(value: Any) -> str:
    try:
        return json.dumps(value)  # writes NaN/Infinity tokens, which json.loads reads back
    except ValueError:  # an int with more digits than str() allows
        return "0"


@settings(max_examples=500, deadline=None)
@given(st.lists(_json_lines(), max_size=6))
def test_validate_line_never_crashes_on_arbitrary_lines(lines):
    validator = Validator()
    for line in lines:
        _check_verdict(validator.validate_line(line), ("valid", "invalid", "duplicate"))
    assert sum(validator.counts.values()) == len(lines)


@PROPERTY
@given(valid_records(version="1.1"))
def test_validate_line_accepts_the_json_line_of_any_valid_record(record):
    verdict = Validator().validate_line(json.dumps(record).encode())
    assert verdict.status == "valid", verdict.errors


# --- (6) the fast path never accepts what the full check rejects -------------------------------------

_SPECIALS = [None, True, False, "", "0", "1.1", [], {}, [0], {"x": 1}, math.nan, math.inf, -math.inf]
_INT_EDGES = [-1, 0, 1, 2, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
              10**400, 0.0, 1.0, -0.0]
_DOUBLE_EDGES = [1e308, -1e308, 5e-324, -5e-324, -0.0]
_RUN_ID_EDGES = ["a" * 128, "a" * 129, "a b", "a\n", "\n", "é", "a\x00", "run/1", "-", "1.1"]
_MODE_EDGES = ["replay", "rollout", "mixed", "unknown", "Replay", "replay ", "null"]
_NEAR_DELTAS = [1e-12, 1e-10, 1e-9, 1e-8, 1e-6]

def _rule_bounds(row: Field) -> list[Any]:
    """The bounds of a numeric field's rules: its range, the end of its Avro int range, 0 and 1 for a counter
    of the mode rule, and (as (field, offset)) the value of a field it is compared with; 0.0 where none."""
    bounds: list[Any] = []
    if row.range is not None:
        bounds += [bound for bound in (row.range.min, row.range.max) if bound is not None]
    if row.avro_type in AVRO_INT_BOUNDS:
        bounds.append(AVRO_INT_BOUNDS[row.avro_type][1] + 1)
    for rule in CROSS_FIELD_RULES:
        if isinstance(rule, ZeroExactlyInMode) and row.name in rule.counters:
            bounds += [0, 1]
        elif isinstance(rule, Comparison) and row.name in rule.fields:
            # field ≤ other + t puts field's bound at other + t and other's at field - t (≥: the reverse)
            sign = 1 if rule.op == "≤" else -1
            if row.name == rule.field:
                bounds.append((rule.other, sign * rule.tolerance))
            else:
                bounds.append((rule.field, -sign * rule.tolerance))
    return list(dict.fromkeys(bounds)) or [0.0]


# Each numeric field's rule bounds; a (field, offset) pair names the field the bound depends on.
_BOUNDS: dict[str, list[Any]] = {
    name: _rule_bounds(row) for name, row in FIELDS.items() if row.struct_code is not None
}


def _ulps(value: float, steps: int) -> float:
    for _ in range(abs(steps)):
        value = math.nextafter(value, math.inf if steps > 0 else -math.inf)
    return value


def _anchors(record: dict[str, Any], name: str) -> list[float | int]:
    """The bounds of `name`'s rules, resolved against `record`."""
    out = []
    for anchor in _BOUNDS[name]:
        if isinstance(anchor, tuple):
            other, offset = anchor
            anchor = float(record[other]) + offset if offset else record[other]
        out.append(anchor)
    return out


def _odd_values(record: dict[str, Any], name: str) -> list[Any]:
    """Every edge value for `name` in `record`: specials, wrong types, and each bound's neighbourhood."""
    kind = FIELD_TYPES[name].avro_type
    values: list[Any] = list(_SPECIALS)
    if kind in ("int", "long"):
        values += _INT_EDGES
        for anchor in _anchors(record, name):
            for k in range(-2, 3):
                values += [anchor + k, float(anchor + k)]
    elif kind == "double":
        values += _DOUBLE_EDGES
        for anchor in _anchors(record, name):
            anchor = float(anchor)
            near = [_ulps(anchor, k) for k in range(-2, 3)]
            near += [anchor + sign * delta for delta in _NEAR_DELTAS for sign in (-1, 1)]
            values += near + [int(v) for v in near if math.isfinite(v)]
    elif name == "run_id":
        values += _RUN_ID_EDGES
    else:
        values += _MODE_EDGES
    return values


@st.composite
def mutated_v1_1_records(draw) -> dict[str, Any]:
    """A valid v1.1 record with one or two fields replaced, one removed, or an extra key added."""
    record = draw(valid_records(version="1.1"))
    names = [n for n in ALL_FIELDS if n != "telemetry_version"]
    action = draw(st.sampled_from(["replace", "replace", "replace", "replace_two", "mode", "remove", "add"]))
    if action in ("replace", "replace_two"):
        original = dict(record)  # edges are relative to the valid record, not to a field already replaced
        for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=1 if action == "replace" else 2)):
            record[name] = draw(st.one_of(st.sampled_from(_odd_values(original, name)), json_values))
    elif action == "mode":
        # Cross-field rules: a mode that disagrees with cycle_id / rollout_ticks, or agrees by chance.
        record["data_mode"] = draw(st.sampled_from(["replay", "rollout", "mixed"]))
        for name in draw(st.lists(st.sampled_from(["cycle_id", "rollout_ticks"]), max_size=2)):
            record[name] = draw(st.sampled_from([0, 1, 2, -1]))
    elif action == "remove":
        del record[draw(st.sampled_from(names))]
    else:
        key = draw(st.one_of(st.text(max_size=6), st.just("extra")).filter(lambda k: k != "telemetry_version"))
        record[key] = draw(st.one_of(st.sampled_from(_SPECIALS), json_values))
    return record


@st.composite
def near_bound_v1_1_records(draw, field: str) -> dict[str, Any]:
    """A valid v1.1 record with `field` (and sometimes one more) on, just inside or just past a bound."""
    record = draw(valid_records(version="1.1"))
    original = dict(record)
    names = [field]
    if draw(st.sampled_from([False, False, False, True])):
        names.append(draw(st.sampled_from(sorted(_BOUNDS))))
    for name in names:
        anchor = draw(st.sampled_from(_anchors(original, name)))
        if FIELD_TYPES[name].avro_type == "double":
            if draw(st.sampled_from([True, True, False])):
                value = _ulps(float(anchor), draw(st.integers(-3, 3)))
            else:
                value = float(anchor) + draw(st.sampled_from(_NEAR_DELTAS)) * draw(st.sampled_from([-1, 1]))
        else:
            value = anchor + draw(st.integers(-2, 2))
        # Sometimes the other JSON number type, or a boolean equal to it: wrong for ints, fine for doubles.
        retype = draw(st.sampled_from(["same", "same", "same", "int", "float", "bool"]))
        if retype == "int" and math.isfinite(value):
            value = int(value)
        elif retype == "float":
            value = float(value)
        elif retype == "bool" and value in (0, 1):
            value = bool(value)
        record[name] = value
    return record


def _full_check_passes(record: dict[str, Any]) -> bool:
    verdict = Verdict("valid")
    _check_record(record, "1.1", verdict)
    return not verdict.errors


@PROPERTY
@given(valid_records(version="1.1"))
def test_fast_path_accepts_every_valid_v1_1_record_with_float_doubles(record):
    # Not required for correctness, but a fast path that never fires would make the checks below vacuous.
    assert _fast_valid_1_1(record)


@settings(max_examples=1000, deadline=None)
@given(mutated_v1_1_records())
def test_fast_path_accepts_exactly_what_the_full_check_accepts(record):
    assert (validate_record(record).status == "valid") == _full_check_passes(record)


@pytest.mark.parametrize("field", sorted(_BOUNDS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_fast_path_accepts_exactly_what_the_full_check_accepts_near_bounds(field, data):
    record = data.draw(near_bound_v1_1_records(field), label="record")
    assert (validate_record(record).status == "valid") == _full_check_passes(record)


@pytest.mark.parametrize("field", [n for n in ALL_FIELDS if n != "telemetry_version"])
@settings(max_examples=25, deadline=None)
@given(record=valid_records(version="1.1"), other=json_values)
def test_fast_path_accepts_exactly_what_the_full_check_accepts_for_odd_values(field, record, other):
    for value in [*_odd_values(record, field), other]:
        mutated = {**record, field: value}
        fast = validate_record(mutated).status == "valid"
        assert fast == _full_check_passes(mutated), f"{field} = {value!r}: validate_record valid={fast}"
