"""Property tests: the validator and the codec agree with SPEC §1–§3 on any input, not just examples.

`valid_records()` generates any record the SPEC calls valid, of either version; the properties check that
the validator accepts all of them, that the codec round-trips them, that no bytes and no JSON value can
crash the decoder or the validator, and that the validator's fast path never accepts what its full check
rejects.
"""

from __future__ import annotations

import json
import math
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avro_schemas.codec import HEADER_SIZE, MAGIC, epoch_summary_codec
from avro_schemas.errors import DecodeError
from avro_schemas.models import FIELD_TYPES, VERSION_FIELDS
from consumers.validator import RULES, Validator, Verdict, _check_record, _fast_valid_1_1, validate_record

CODEC = epoch_summary_codec()
FINGERPRINTS = [v.fingerprint for v in CODEC.versions.values()]
ALL_FIELDS = VERSION_FIELDS["1.1"]
DOUBLE_FIELDS = frozenset(name for name, t in FIELD_TYPES.items() if t.avro_type == "double")

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
RUN_ID_ALPHABET = string.ascii_letters + string.digits + "._:-"
KL_TOLERANCE = 1e-9

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- strategies --------------------------------------------------------------------------------------


def _doubles(
    min_value: float | None = None,
    max_value: float | None = None,
    exclude_min: bool = False,
    ints: bool = False,
) -> st.SearchStrategy[float | int]:
    """Finite doubles in a range; with `ints`, sometimes a JSON integer, which a double field also takes."""
    floats = st.floats(
        min_value=min_value,
        max_value=max_value,
        exclude_min=exclude_min,
        allow_nan=False,
        allow_infinity=False,
    )
    if not ints:
        return floats
    low = -(2**53) if min_value is None else math.ceil(min_value) + (1 if exclude_min and float(min_value).is_integer() else 0)
    high = 2**53 if max_value is None else math.floor(max_value)
    return st.one_of(floats, st.integers(low, high)) if low <= high else floats


def _nullable(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


@st.composite
def valid_records(draw, version: str | None = None, ints_in_doubles: bool = False) -> dict[str, Any]:
    """Any record valid under SPEC §1: every range, the cross-field rules, the null rules."""
    version = version or draw(st.sampled_from(["1.0", "1.1"]))
    d = lambda **kw: _doubles(ints=ints_in_doubles, **kw)  # noqa: E731
    num_samples = draw(st.integers(1, INT32_MAX))
    # Realistic KLs are small; that is also where the 1e-9 tolerance of kl_divergence_max matters.
    kl = draw(st.one_of(d(min_value=0.0), st.floats(0.0, 0.1)))
    record: dict[str, Any] = {
        "telemetry_version": version,
        "run_id": draw(st.text(RUN_ID_ALPHABET, min_size=1, max_size=128)),
        "epoch": draw(st.integers(0, INT32_MAX)),
        "global_step": draw(st.integers(0, INT64_MAX)),
        "timestamp_ms": draw(st.integers(1, INT64_MAX)),
        "policy_loss": draw(d()),
        "value_loss": draw(d(min_value=0.0)),
        "kl_divergence": kl,
        "clip_fraction": draw(d(min_value=0.0, max_value=1.0)),
        "explained_variance": draw(_nullable(d(max_value=1.0))),
        "learning_rate": draw(d(min_value=0.0, exclude_min=True)),
        "mean_episode_return": draw(_nullable(d())),
        "num_samples": num_samples,
        "num_minibatches": draw(st.integers(1, num_samples)),
    }
    if version == "1.0":
        return record
    mode = draw(st.sampled_from(["replay", "rollout", "mixed"]))
    positive = st.integers(1, INT64_MAX)
    record.update(
        {
            "epoch_duration_sec": draw(d(min_value=0.0)),
            "data_mode": mode,
            "cycle_id": 0 if mode == "replay" else draw(positive),
            "batch_entropy_mean": draw(d()),
            "batch_entropy_std": draw(d(min_value=0.0)),
            "grad_norm_max": draw(d(min_value=0.0)),
            # Same expression as the rule, so the boundary case (kl - 1e-9 exactly) is generated too.
            "kl_divergence_max": draw(d(min_value=max(0.0, kl - KL_TOLERANCE))),
            "reward_advantage_corr": draw(_nullable(d(min_value=-1.0, max_value=1.0))),
            "rollout_ticks": 0 if mode == "replay" else draw(positive),
            "log_stream_offset": draw(st.integers(0, INT64_MAX)),
        }
    )
    return record


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
    st.text(RUN_ID_ALPHABET, max_size=12),
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

# Each numeric field's rule bounds; a string names the field the bound depends on.
_BOUNDS: dict[str, list[Any]] = {
    "epoch": [0, 2**31],
    "global_step": [0, 2**63],
    "timestamp_ms": [0, 2**63],
    "num_samples": [1, 2**31, "num_minibatches"],
    "num_minibatches": [1, "num_samples"],
    "cycle_id": [0, 1, 2**63],
    "rollout_ticks": [0, 1, 2**63],
    "log_stream_offset": [0, 2**63],
    "policy_loss": [0.0],
    "value_loss": [0.0],
    "kl_divergence": [0.0, "kl_divergence_max"],
    "clip_fraction": [0.0, 1.0],
    "explained_variance": [1.0],
    "learning_rate": [0.0],
    "mean_episode_return": [0.0],
    "epoch_duration_sec": [0.0],
    "batch_entropy_mean": [0.0],
    "batch_entropy_std": [0.0],
    "grad_norm_max": [0.0],
    "kl_divergence_max": [0.0, "kl_divergence"],
    "reward_advantage_corr": [-1.0, 1.0],
}


def _ulps(value: float, steps: int) -> float:
    for _ in range(abs(steps)):
        value = math.nextafter(value, math.inf if steps > 0 else -math.inf)
    return value


def _anchors(record: dict[str, Any], name: str) -> list[float | int]:
    """The bounds of `name`'s rules, resolved against `record`."""
    out = []
    for anchor in _BOUNDS[name]:
        if anchor == "kl_divergence_max":
            anchor = float(record[anchor]) + KL_TOLERANCE
        elif anchor == "kl_divergence":
            anchor = float(record[anchor]) - KL_TOLERANCE
        elif isinstance(anchor, str):
            anchor = record[anchor]
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
