"""The validator core against SPEC §2, rule by rule.

Each record-level and stream-level rule gets a failing case and its passing neighbour (the smallest
change that makes it pass), for both telemetry versions wherever the rule applies to both. Failing cases
assert the exact `field` and `rule` reported; passing neighbours assert status `valid` and no errors.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from avro_schemas.models import V1_1_ADDED_FIELDS, VERSION_FIELDS
from consumers.validator import (
    NULLABLE_FIELDS,
    FieldError,
    StreamTracker,
    Validator,
    Verdict,
    _check_record,
    _fast_valid_1_1,
    parse_json_line,
    validate_record,
)

Record = dict[str, Any]


def valid_v1_0(**overrides: Any) -> Record:
    """A valid v1.0 record (no v1.1 keys); `overrides` replace or add keys."""
    record: Record = {
        "telemetry_version": "1.0",
        "run_id": "run-a",
        "epoch": 3,
        "global_step": 2048,
        "timestamp_ms": 1_700_000_000_000,
        "policy_loss": -0.015,
        "value_loss": 0.42,
        "kl_divergence": 0.01,
        "clip_fraction": 0.12,
        "explained_variance": 0.6,
        "learning_rate": 3e-4,
        "mean_episode_return": 21.5,
        "num_samples": 64,
        "num_minibatches": 2,  # small, so that `num_samples = 3` stays a valid neighbour
    }
    record.update(overrides)
    return record


def valid_v1_1(**overrides: Any) -> Record:
    """A valid v1.1 `rollout` record; `overrides` replace or add keys."""
    record = valid_v1_0(telemetry_version="1.1")
    record.update(
        epoch_duration_sec=1.25,
        data_mode="rollout",
        cycle_id=2,
        batch_entropy_mean=0.69,
        batch_entropy_std=0.05,
        grad_norm_max=0.8,
        kl_divergence_max=0.02,
        reward_advantage_corr=0.3,
        rollout_ticks=64,
        log_stream_offset=10,
    )
    record.update(overrides)
    return record


FACTORIES: dict[str, Callable[..., Record]] = {"1.0": valid_v1_0, "1.1": valid_v1_1}
VERSIONS = ("1.0", "1.1")
V1_0_FIELDS = VERSION_FIELDS["1.0"]
V1_1_FIELDS = VERSION_FIELDS["1.1"]
REPLAY = {"data_mode": "replay", "cycle_id": 0, "rollout_ticks": 0}

INT_FIELDS = ("epoch", "global_step", "timestamp_ms", "num_samples", "num_minibatches",
              "cycle_id", "rollout_ticks", "log_stream_offset")
# A valid int and a valid float for each double field (the int alone must not break a range or cross rule).
DOUBLE_FIELDS: dict[str, tuple[int, float]] = {
    "policy_loss": (-2, -0.25),
    "value_loss": (0, 0.75),
    "kl_divergence": (0, 0.015),
    "clip_fraction": (1, 0.5),
    "explained_variance": (1, -3.5),
    "learning_rate": (1, 1e-5),
    "mean_episode_return": (-7, 1e6),
    "epoch_duration_sec": (0, 12.5),
    "batch_entropy_mean": (-1, 1.5),
    "batch_entropy_std": (0, 0.25),
    "grad_norm_max": (100, 3.75),
    "kl_divergence_max": (1, 0.5),
    "reward_advantage_corr": (-1, -0.9),
}


def record_of(version: str, **overrides: Any) -> Record:
    """The valid record of `version`, with `overrides`."""
    return FACTORIES[version](**overrides)


def versions_of(name: str) -> tuple[str, ...]:
    """The versions that define field `name`."""
    return VERSIONS if name in V1_0_FIELDS else ("1.1",)


def without(record: Record, name: str) -> Record:
    """`record` with key `name` removed."""
    return {k: v for k, v in record.items() if k != name}


def errors_of(verdict: Verdict) -> list[tuple[str | None, str]]:
    """The verdict's errors as (field, rule) pairs."""
    return [(e.field, e.rule) for e in verdict.errors]


def assert_invalid(verdict: Verdict, *expected: tuple[str | None, str]) -> None:
    """The verdict is `invalid` with exactly the `expected` (field, rule) errors."""
    assert verdict.status == "invalid"
    assert errors_of(verdict) == list(expected)
    assert all(e.message for e in verdict.errors)


def assert_valid(verdict: Verdict) -> None:
    """The verdict is `valid` with no errors."""
    assert errors_of(verdict) == []
    assert verdict.status == "valid"


def label(value: Any) -> str:
    """A short readable test id for a value."""
    if isinstance(value, str) and len(value) > 12:
        return f"str[{len(value)}]"
    if type(value) is int and abs(value) >= 2**20:
        sign, m = ("-" if value < 0 else ""), abs(value)
        k = m.bit_length()
        digits = str(m)
        if digits == "1" + "0" * (len(digits) - 1):
            return f"{sign}10**{len(digits) - 1}"
        if m == 1 << (k - 1):
            return f"{sign}2**{k - 1}"
        if m == (1 << (k - 1)) + 1:
            return f"{sign}(2**{k - 1}+1)"
        if m == (1 << k) - 1:
            return f"{sign}(2**{k}-1)"
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def pairs(rows: list[tuple[Any, ...]]) -> Iterator[Any]:
    """Parametrize rows `(field, bad, good, rule[, base])` over every version that defines the field."""
    for row in rows:
        name, bad, good, rule, *rest = row
        base = rest[0] if rest else {}
        for version in versions_of(name):
            yield pytest.param(
                version, name, bad, good, rule, base,
                id=f"v{version}-{name}:{label(bad)}->{label(good)}",
            )


# --- payload: JSON, UTF-8, object -----------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("not json", id="plain-text"),
        pytest.param("", id="empty"),
        pytest.param("{", id="truncated-object"),
        pytest.param('{"telemetry_version": "1.1", "run_id": "r"', id="partial-line"),
        pytest.param("{'telemetry_version': '1.0'}", id="single-quotes"),
        pytest.param('{"a": 1} {"b": 2}', id="two-values"),
        pytest.param("[" * 100_000, id="deep-open-brackets"),
        pytest.param("[" * 100_000 + "]" * 100_000, id="deep-closed-brackets"),
        pytest.param('{"a":' * 100_000, id="deep-objects"),
        pytest.param('{"epoch": ' + "1" * 5000 + "}", id="int-too-many-digits"),
        pytest.param(b"\xff\xfe{}", id="bytes-not-utf8"),
        pytest.param(b'{"note": "caf\xe9"}', id="bytes-latin1"),
        pytest.param(b"\xef\xbb\xbf{}", id="bytes-utf8-bom"),
    ],
)
def test_payload_not_json_is_rule_json_with_no_field(line: str | bytes) -> None:
    error = parse_json_line(line)
    assert isinstance(error, FieldError)
    assert (error.field, error.rule) == (None, "json")
    assert error.message

    validator = Validator()
    verdict = validator.validate_line(line)
    assert_invalid(verdict, (None, "json"))
    assert (verdict.telemetry_version, verdict.run_id, verdict.log_stream_offset) == (None, None, None)
    assert validator.counts == {"valid": 0, "invalid": 1, "duplicate": 0}


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v}")
@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_payload_json_object_line_is_valid(version: str, as_bytes: bool) -> None:
    line = json.dumps(record_of(version))
    verdict = Validator().validate_line(line.encode() if as_bytes else line)
    assert_valid(verdict)
    assert verdict.telemetry_version == version


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v}")
def test_payload_invalid_utf8_fails_and_its_utf8_neighbour_passes(version: str) -> None:
    text = json.dumps(record_of(version, note="café"), ensure_ascii=False)
    assert_invalid(Validator().validate_line(text.encode("latin-1")), (None, "json"))
    verdict = Validator().validate_line(text.encode("utf-8"))
    assert_valid(verdict)
    assert any("note" in w for w in verdict.warnings)


def test_payload_deeply_nested_but_parseable_value_does_not_crash() -> None:
    nested = "[" * 500 + "]" * 500
    line = '{"telemetry_version": "1.0", "run_id": ' + nested + "}"
    verdict = Validator().validate_line(line)
    assert verdict.status == "invalid"
    assert ("run_id", "type") in errors_of(verdict)

    line = json.dumps(valid_v1_0())[:-1] + ', "extra": ' + nested + "}"
    verdict = Validator().validate_line(line)
    assert_valid(verdict)
    assert any("extra" in w for w in verdict.warnings)


@pytest.mark.parametrize(
    "line",
    ["[]", "[{}]", "3", "-0.5", '"text"', "null", "true", "NaN"],
    ids=["array", "array-of-object", "int", "float", "string", "null", "bool", "nan"],
)
def test_payload_not_an_object_is_rule_object(line: str) -> None:
    validator = Validator()
    assert_invalid(validator.validate_line(line), (None, "object"))
    assert_invalid(validate_record(json.loads(line)), (None, "object"))
    assert validator.counts["invalid"] == 1


def test_payload_object_neighbour_of_array_is_valid() -> None:
    assert_invalid(Validator().validate_line(f"[{json.dumps(valid_v1_0())}]"), (None, "object"))
    assert_valid(Validator().validate_line(json.dumps(valid_v1_0())))


# --- telemetry_version --------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v}")
def test_version_missing_is_required(version: str) -> None:
    verdict = validate_record(without(record_of(version), "telemetry_version"))
    assert_invalid(verdict, ("telemetry_version", "required"))
    assert verdict.telemetry_version is None
    assert_valid(validate_record(record_of(version)))


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v}")
@pytest.mark.parametrize(
    "bad",
    ["2.0", "1", "1.10", "1.1 ", " 1.0", "v1.1", "", 1.1, 1.0, 1, None, True, ["1.1"], {"v": "1.1"}],
    ids=label,
)
def test_version_unsupported_is_rule_version_and_not_guessed(version: str, bad: Any) -> None:
    """Only the version error: the validator does not guess a version and check the fields against it."""
    verdict = validate_record(record_of(version, telemetry_version=bad))
    assert_invalid(verdict, ("telemetry_version", "version"))
    assert verdict.warnings == []
    assert_valid(validate_record(record_of(version, telemetry_version=version)))


def test_version_unsupported_with_other_faults_reports_only_the_version() -> None:
    verdict = validate_record(valid_v1_1(telemetry_version="2.0", epoch=-1, extra=math.nan))
    assert_invalid(verdict, ("telemetry_version", "version"))


def test_version_1_0_label_on_a_v1_1_shaped_record_is_a_valid_v1_0_with_warnings() -> None:
    verdict = validate_record(valid_v1_1(telemetry_version="1.0"))
    assert_valid(verdict)
    assert verdict.telemetry_version == "1.0"
    assert len(verdict.warnings) == len(V1_1_ADDED_FIELDS)
    for name in V1_1_ADDED_FIELDS:
        assert sum(name in w for w in verdict.warnings) >= 1


def test_version_1_1_label_on_a_v1_0_record_requires_every_v1_1_field() -> None:
    verdict = validate_record(valid_v1_0(telemetry_version="1.1"))
    assert_invalid(verdict, *[(name, "required") for name in V1_1_ADDED_FIELDS])


# --- required fields ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version,name",
    [pytest.param(v, n, id=f"v{v}-{n}") for v in VERSIONS for n in VERSION_FIELDS[v]],
)
def test_required_every_field_of_the_version(version: str, name: str) -> None:
    full = record_of(version)
    assert_invalid(validate_record(without(full, name)), (name, "required"))
    assert_valid(validate_record(full))


def test_required_v1_0_record_without_v1_1_fields_is_valid_and_clean() -> None:
    record = valid_v1_0()
    assert set(record) == set(V1_0_FIELDS)
    verdict = validate_record(record)
    assert_valid(verdict)
    assert verdict.warnings == []
    assert verdict.record == record


@pytest.mark.parametrize("name", V1_1_ADDED_FIELDS)
def test_required_v1_1_record_missing_a_v1_1_field_is_invalid(name: str) -> None:
    assert_invalid(validate_record(without(valid_v1_1(), name)), (name, "required"))


def test_required_reward_advantage_corr_must_be_present_though_it_may_be_null() -> None:
    assert_invalid(validate_record(without(valid_v1_1(), "reward_advantage_corr")), ("reward_advantage_corr", "required"))
    assert_valid(validate_record(valid_v1_1(reward_advantage_corr=None)))


def test_required_every_missing_field_is_named() -> None:
    verdict = validate_record({"telemetry_version": "1.1"})
    assert_invalid(verdict, *[(name, "required") for name in V1_1_FIELDS if name != "telemetry_version"])


# --- JSON types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version,name,bad",
    [
        pytest.param(v, n, bad, id=f"v{v}-{n}:{label(bad)}")
        for n in INT_FIELDS
        for v in versions_of(n)
        for bad in (3.0, True, False, "3", [3], {"v": 3})
    ],
)
def test_type_int_field_takes_json_integers_only(version: str, name: str, bad: Any) -> None:
    assert_invalid(validate_record(record_of(version, **{name: bad})), (name, "type"))
    assert_valid(validate_record(record_of(version, **{name: 3})))


@pytest.mark.parametrize(
    "version,name,bad",
    [
        pytest.param(v, n, bad, id=f"v{v}-{n}:{label(bad)}")
        for n in DOUBLE_FIELDS
        for v in versions_of(n)
        for bad in (True, False, "0.1", [0.1], {"v": 0.1})
    ],
)
def test_type_double_field_rejects_booleans_and_strings(version: str, name: str, bad: Any) -> None:
    assert_invalid(validate_record(record_of(version, **{name: bad})), (name, "type"))
    assert_valid(validate_record(record_of(version, **{name: DOUBLE_FIELDS[name][1]})))


@pytest.mark.parametrize(
    "version,name",
    [pytest.param(v, n, id=f"v{v}-{n}") for n in DOUBLE_FIELDS for v in versions_of(n)],
)
def test_type_double_field_accepts_ints_and_floats(version: str, name: str) -> None:
    as_int, as_float = DOUBLE_FIELDS[name]
    assert_valid(validate_record(record_of(version, **{name: as_int})))
    assert_valid(validate_record(record_of(version, **{name: as_float})))
    line = json.dumps(record_of(version, **{name: as_int}))
    assert_valid(Validator().validate_line(line))


@pytest.mark.parametrize(
    "version,name,bad,good",
    [
        pytest.param(v, n, bad, good, id=f"v{v}-{n}:{label(bad)}->{label(good)}")
        for n, bad, good in [
            ("run_id", 5, "five"),
            ("run_id", ["run-a"], "run-a"),
            ("data_mode", 1, "rollout"),
            ("data_mode", ["rollout"], "rollout"),
            ("data_mode", True, "rollout"),
        ]
        for v in versions_of(n)
    ],
)
def test_type_string_fields_take_strings(version: str, name: str, bad: Any, good: Any) -> None:
    assert_invalid(validate_record(record_of(version, **{name: bad})), (name, "type"))
    assert_valid(validate_record(record_of(version, **{name: good})))


PAIR_ARGS = "version,name,bad,good,rule,base"


def check_pair(version: str, name: str, bad: Any, good: Any, rule: str, base: Record) -> None:
    """`bad` in field `name` gives exactly (name, rule); `good` in its place gives a valid record."""
    assert_invalid(validate_record(record_of(version, **{**base, name: bad})), (name, rule))
    assert_valid(validate_record(record_of(version, **{**base, name: good})))


@pytest.mark.parametrize(
    PAIR_ARGS,
    list(
        pairs(
            [
                ("epoch", 2**31, 2**31 - 1, "range"),
                ("num_samples", 2**31, 2**31 - 1, "range"),
                ("num_minibatches", 2**31, 2**31 - 1, "range", {"num_samples": 2**31 - 1}),
                ("global_step", 2**63, 2**63 - 1, "range"),
                ("timestamp_ms", 2**63, 2**63 - 1, "range"),
                ("cycle_id", 2**63, 2**63 - 1, "range"),
                ("rollout_ticks", 2**63, 2**63 - 1, "range"),
                ("log_stream_offset", 2**63, 2**63 - 1, "range"),
                ("epoch", -(2**31) - 1, 0, "range"),
                ("global_step", -(2**63) - 1, 0, "range"),
                ("epoch", 10**400, 0, "range"),
            ]
        )
    ),
)
def test_type_avro_int_and_long_limits_are_range(
    version: str, name: str, bad: Any, good: Any, rule: str, base: Record
) -> None:
    check_pair(version, name, bad, good, rule, base)


# --- finiteness ---------------------------------------------------------------------------------

NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@pytest.mark.parametrize(
    "version,name,literal",
    [
        pytest.param(v, n, lit, id=f"v{v}-{n}:{lit}")
        for n in DOUBLE_FIELDS
        for v in versions_of(n)
        for lit in NON_FINITE
    ],
)
def test_finite_nan_and_infinities_in_a_double_field(version: str, name: str, literal: str) -> None:
    line = json.dumps(record_of(version, **{name: NON_FINITE[literal]}))
    assert f'"{name}": {literal}' in line  # the JSON line carries the bare literal
    parsed = parse_json_line(line)
    assert isinstance(parsed, dict)
    assert_invalid(validate_record(parsed), (name, "finite"))
    assert_invalid(Validator().validate_line(line), (name, "finite"))
    assert_invalid(validate_record(record_of(version, **{name: NON_FINITE[literal]})), (name, "finite"))

    neighbour = json.dumps(record_of(version, **{name: DOUBLE_FIELDS[name][1]}))
    assert_valid(Validator().validate_line(neighbour))


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v}")
@pytest.mark.parametrize("literal", ["1e400", "-1e400", "1" + "0" * 400, "-1" + "0" * 400], ids=["1e400", "-1e400", "10**400", "-10**400"])
def test_finite_overflowing_numbers_in_a_double_field(version: str, literal: str) -> None:
    line = json.dumps(record_of(version, value_loss=0.5)).replace('"value_loss": 0.5', f'"value_loss": {literal}')
    assert literal in line
    assert_invalid(Validator().validate_line(line), ("value_loss", "finite"))
    assert_valid(Validator().validate_line(json.dumps(record_of(version, value_loss=1e300))))


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v}")
def test_finite_huge_python_int_in_a_double_field(version: str) -> None:
    assert_invalid(validate_record(record_of(version, policy_loss=10**400)), ("policy_loss", "finite"))
    assert_invalid(validate_record(record_of(version, policy_loss=-(10**400))), ("policy_loss", "finite"))
    assert_valid(validate_record(record_of(version, policy_loss=10**300)))


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v}")
@pytest.mark.parametrize(
    "bad,good",
    [
        pytest.param(math.nan, 0.0, id="top-level-nan"),
        pytest.param(-math.inf, 0.0, id="top-level-minus-inf"),
        pytest.param({"a": [1, math.nan]}, {"a": [1, 2.0]}, id="nested-nan"),
        pytest.param([[{"b": math.inf}]], [[{"b": 1e308}]], id="nested-inf"),
    ],
)
def test_finite_nan_in_an_unknown_key_names_that_key(version: str, bad: Any, good: Any) -> None:
    line = json.dumps(record_of(version, extra=bad))
    assert_invalid(Validator().validate_line(line), ("extra", "finite"))
    verdict = Validator().validate_line(json.dumps(record_of(version, extra=good)))
    assert_valid(verdict)
    assert len(verdict.warnings) == 1 and "extra" in verdict.warnings[0]


# --- null ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version,name",
    [
        pytest.param(v, n, id=f"v{v}-{n}")
        for v in VERSIONS
        for n in VERSION_FIELDS[v]
        if n not in NULLABLE_FIELDS and n != "telemetry_version"
    ],
)
def test_not_null_where_a_value_is_required(version: str, name: str) -> None:
    full = record_of(version)
    assert_invalid(validate_record({**full, name: None}), (name, "not_null"))
    assert_valid(validate_record(full))


@pytest.mark.parametrize(
    "version,name",
    [pytest.param(v, n, id=f"v{v}-{n}") for n in sorted(NULLABLE_FIELDS) for v in versions_of(n)],
)
def test_not_null_does_not_apply_to_the_nullable_fields(version: str, name: str) -> None:
    assert_valid(validate_record(record_of(version, **{name: None})))
    assert_valid(Validator().validate_line(json.dumps(record_of(version, **{name: None}))))


def test_not_null_nullable_fields_are_exactly_the_spec_ones() -> None:
    assert NULLABLE_FIELDS == {"explained_variance", "mean_episode_return", "reward_advantage_corr"}


def test_not_null_all_three_nullable_fields_null_at_once() -> None:
    nulls = dict.fromkeys(NULLABLE_FIELDS)
    assert_valid(validate_record(valid_v1_1(**nulls)))
    assert_valid(validate_record(valid_v1_0(explained_variance=None, mean_episode_return=None)))


# --- ranges -------------------------------------------------------------------------------------

RANGE_ROWS: list[tuple[Any, ...]] = [
    ("epoch", -1, 0, "range"),
    ("global_step", -1, 0, "range"),
    ("timestamp_ms", 0, 1, "range"),
    ("timestamp_ms", -1, 1, "range"),
    ("value_loss", -1e-12, 0.0, "range"),
    ("value_loss", -1, 0, "range"),
    ("kl_divergence", -1e-12, 0.0, "range"),
    ("clip_fraction", -1e-12, 0.0, "range"),
    ("clip_fraction", 1.0000001, 1.0, "range"),
    ("clip_fraction", 2, 1, "range"),
    ("explained_variance", 1.0000001, 1.0, "range"),
    ("explained_variance", 2, 1, "range"),
    ("learning_rate", 0.0, 1e-12, "range"),
    ("learning_rate", -1e-3, 1e-3, "range"),
    ("num_samples", 0, 1, "range", {"num_minibatches": 1}),
    ("num_minibatches", 0, 1, "range"),
    ("epoch_duration_sec", -1e-12, 0.0, "range"),
    ("cycle_id", -1, 0, "range", REPLAY),
    ("batch_entropy_std", -1e-12, 0.0, "range"),
    ("grad_norm_max", -1e-12, 0.0, "range"),
    ("kl_divergence_max", -1e-12, 0.0, "range", {"kl_divergence": 0.0}),
    ("reward_advantage_corr", -1.0000001, -1.0, "range"),
    ("reward_advantage_corr", 1.0000001, 1.0, "range"),
    ("rollout_ticks", -1, 0, "range", REPLAY),
    ("log_stream_offset", -1, 0, "range"),
]


@pytest.mark.parametrize(PAIR_ARGS, list(pairs(RANGE_ROWS)))
def test_range_each_field_at_its_boundary(
    version: str, name: str, bad: Any, good: Any, rule: str, base: Record
) -> None:
    check_pair(version, name, bad, good, rule, base)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v}")
def test_range_unbounded_sides_accept_extremes(version: str) -> None:
    assert_valid(validate_record(record_of(version, explained_variance=-1e300)))
    assert_valid(validate_record(record_of(version, policy_loss=-1e300)))
    assert_valid(validate_record(record_of(version, mean_episode_return=-1e300)))
    assert_valid(validate_record(record_of(version, value_loss=1e300, learning_rate=1e300)))
    assert_valid(validate_record(record_of(version, value_loss=-0.0, kl_divergence=-0.0, clip_fraction=-0.0)))


def test_range_v1_1_unbounded_sides_accept_extremes() -> None:
    assert_valid(validate_record(valid_v1_1(batch_entropy_mean=-1e300, grad_norm_max=1e300, kl_divergence_max=1e300)))


# --- run_id pattern -----------------------------------------------------------------------------

PATTERN_ROWS: list[tuple[Any, ...]] = [
    ("run_id", "", "a", "pattern"),
    ("run_id", "a" * 129, "a" * 128, "pattern"),
    ("run_id", "a b", "a_b", "pattern"),
    ("run_id", "é", "e", "pattern"),
    ("run_id", "run\n", "run", "pattern"),
    ("run_id", "\nrun", "run", "pattern"),
    ("run_id", "run/1", "run:1", "pattern"),
    ("run_id", "run\x00", "run", "pattern"),
    ("run_id", "run\t1", "run-1", "pattern"),
    ("run_id", "ｒun", "run", "pattern"),  # fullwidth letter
    ("run_id", "run１", "run1", "pattern"),  # fullwidth digit
]


@pytest.mark.parametrize(PAIR_ARGS, list(pairs(PATTERN_ROWS)))
def test_pattern_run_id(version: str, name: str, bad: Any, good: Any, rule: str, base: Record) -> None:
    check_pair(version, name, bad, good, rule, base)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v}")
@pytest.mark.parametrize("run_id", ["A-z_0.9:x", "a" * 128, "x", "0", "...", "-:_.", "ZZ"], ids=label)
def test_pattern_run_id_accepts_every_allowed_character(version: str, run_id: str) -> None:
    verdict = validate_record(record_of(version, run_id=run_id))
    assert_valid(verdict)
    assert verdict.run_id == run_id


# --- data_mode enum -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    PAIR_ARGS,
    list(
        pairs(
            [
                ("data_mode", "unknown", "rollout", "enum"),
                ("data_mode", "REPLAY", "replay", "enum", REPLAY),
                ("data_mode", "other", "replay", "enum", REPLAY),
                ("data_mode", "Rollout", "rollout", "enum"),
                ("data_mode", "mixed ", "mixed", "enum"),
                ("data_mode", "", "mixed", "enum"),
            ]
        )
    ),
)
def test_enum_data_mode(version: str, name: str, bad: Any, good: Any, rule: str, base: Record) -> None:
    check_pair(version, name, bad, good, rule, base)


def test_enum_data_mode_on_a_v1_0_record_is_an_unknown_key() -> None:
    verdict = validate_record(valid_v1_0(data_mode="unknown"))
    assert_valid(verdict)
    assert len(verdict.warnings) == 1 and "data_mode" in verdict.warnings[0]


# --- cross-field rules --------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v}")
def test_cross_num_minibatches_le_num_samples(version: str) -> None:
    verdict = validate_record(record_of(version, num_samples=4, num_minibatches=5))
    assert_invalid(verdict, ("num_minibatches", "num_minibatches_le_num_samples"))
    assert_valid(validate_record(record_of(version, num_samples=4, num_minibatches=4)))
    assert_valid(validate_record(record_of(version, num_samples=1, num_minibatches=1)))


@pytest.mark.parametrize(
    "kl_max,ok",
    [
        pytest.param(0.02 - 2e-9, False, id="below-by-2e-9"),
        pytest.param(0.01, False, id="half"),
        pytest.param(0.0, False, id="zero"),
        pytest.param(0.02 - 0.5e-9, True, id="below-within-1e-9"),
        pytest.param(0.02, True, id="equal"),
        pytest.param(0.03, True, id="above"),
    ],
)
def test_cross_kl_divergence_max_ge_mean(kl_max: float, ok: bool) -> None:
    verdict = validate_record(valid_v1_1(kl_divergence=0.02, kl_divergence_max=kl_max))
    if ok:
        assert_valid(verdict)
    else:
        assert_invalid(verdict, ("kl_divergence_max", "kl_divergence_max_ge_mean"))


def test_cross_kl_rule_does_not_apply_to_v1_0() -> None:
    assert_valid(validate_record(valid_v1_0(kl_divergence=0.5)))


@pytest.mark.parametrize(
    "name,bad",
    [("cycle_id", 1), ("cycle_id", 7), ("rollout_ticks", 5), ("rollout_ticks", 1)],
    ids=["cycle_id=1", "cycle_id=7", "rollout_ticks=5", "rollout_ticks=1"],
)
def test_cross_replay_zero(name: str, bad: int) -> None:
    assert_invalid(validate_record(valid_v1_1(**{**REPLAY, name: bad})), (name, "replay_zero"))
    assert_valid(validate_record(valid_v1_1(**{**REPLAY, name: 0})))


def test_cross_replay_zero_names_each_field() -> None:
    verdict = validate_record(valid_v1_1(data_mode="replay", cycle_id=1, rollout_ticks=5))
    assert_invalid(verdict, ("cycle_id", "replay_zero"), ("rollout_ticks", "replay_zero"))


@pytest.mark.parametrize("mode", ["rollout", "mixed"])
@pytest.mark.parametrize("name", ["cycle_id", "rollout_ticks"])
def test_cross_rollout_positive(mode: str, name: str) -> None:
    assert_invalid(validate_record(valid_v1_1(data_mode=mode, **{name: 0})), (name, "rollout_positive"))
    assert_valid(validate_record(valid_v1_1(data_mode=mode, **{name: 1})))


def test_cross_rollout_positive_names_each_field() -> None:
    verdict = validate_record(valid_v1_1(data_mode="mixed", cycle_id=0, rollout_ticks=0))
    assert_invalid(verdict, ("cycle_id", "rollout_positive"), ("rollout_ticks", "rollout_positive"))


# --- unknown keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v}")
@pytest.mark.parametrize(
    "key,value",
    [("extra", 1), ("note", "hello"), ("meta", {"a": [1, 2]}), ("nothing", None), ("big", 10**400)],
    ids=["int", "string", "object", "null", "huge-int"],
)
def test_unknown_key_is_a_warning_not_an_error(version: str, key: str, value: Any) -> None:
    verdict = validate_record(record_of(version, **{key: value}))
    assert_valid(verdict)
    assert verdict.telemetry_version == version
    assert len(verdict.warnings) == 1 and key in verdict.warnings[0]
    assert validate_record(record_of(version)).warnings == []


def test_unknown_key_v1_0_record_carrying_cycle_id_is_a_valid_v1_0_record() -> None:
    verdict = validate_record(valid_v1_0(cycle_id=3))
    assert_valid(verdict)
    assert verdict.telemetry_version == "1.0"
    assert len(verdict.warnings) == 1 and "cycle_id" in verdict.warnings[0]


@pytest.mark.parametrize("name", V1_1_ADDED_FIELDS)
def test_unknown_key_v1_1_field_on_v1_0_is_not_checked_against_v1_1_rules(name: str) -> None:
    """A v1.1 field on a v1.0 record is just an unknown key: even a value invalid for v1.1 is only warned about."""
    verdict = validate_record(valid_v1_0(**{name: -5}))
    assert_valid(verdict)
    assert len(verdict.warnings) == 1 and name in verdict.warnings[0]


# --- stream level -------------------------------------------------------------------------------


def line_of(run_id: str, offset: int, **overrides: Any) -> str:
    """An NDJSON line of a valid v1.1 record of `run_id` at `offset`."""
    return json.dumps(valid_v1_1(run_id=run_id, log_stream_offset=offset, **overrides))


@pytest.mark.parametrize("offsets", [[5, 5], [5, 6, 4], [5, 6, 0], [0, 0]], ids=["same", "lower", "much-lower", "same-at-zero"])
def test_stream_duplicate_is_counted_not_an_error(offsets: list[int]) -> None:
    validator = Validator()
    verdicts = [validator.validate_line(line_of("run-a", o)) for o in offsets]
    *accepted, last = verdicts
    for v in accepted:
        assert_valid(v)
    assert last.status == "duplicate"
    assert last.errors == []
    assert not last.valid  # not processed again
    assert validator.counts == {"valid": len(accepted), "invalid": 0, "duplicate": 1}
    assert validator.tracker.duplicates == 1
    assert validator.tracker.last_offsets == {"run-a": max(offsets)}


def test_stream_duplicate_neighbour_next_offset_is_valid_and_clean() -> None:
    validator = Validator()
    assert_valid(validator.validate_line(line_of("run-a", 5)))
    verdict = validator.validate_line(line_of("run-a", 6))
    assert_valid(verdict)
    assert verdict.warnings == []
    assert validator.tracker.duplicates == 0 and validator.tracker.gaps == 0


def test_stream_duplicate_counts_accumulate() -> None:
    validator = Validator()
    statuses = [validator.validate_line(line_of("run-a", o)).status for o in [0, 1, 1, 0, 2, 2]]
    assert statuses == ["valid", "valid", "duplicate", "duplicate", "valid", "duplicate"]
    assert validator.counts == {"valid": 3, "invalid": 0, "duplicate": 3}
    assert validator.tracker.duplicates == 3


@pytest.mark.parametrize("second,missing", [(14, 3), (12, 1), (1010, 999)], ids=["3-missing", "1-missing", "999-missing"])
def test_stream_gap_is_valid_with_a_warning_naming_how_many(second: int, missing: int) -> None:
    validator = Validator()
    assert_valid(validator.validate_line(line_of("run-a", 10)))
    verdict = validator.validate_line(line_of("run-a", second))
    assert_valid(verdict)
    assert len(verdict.warnings) == 1
    assert re.search(rf"\b{missing}\b", verdict.warnings[0])
    assert "run-a" in verdict.warnings[0]
    assert validator.tracker.gaps == 1
    assert validator.counts == {"valid": 2, "invalid": 0, "duplicate": 0}
    assert validator.tracker.last_offsets == {"run-a": second}


def test_stream_first_record_of_a_run_sets_the_mark_without_a_gap() -> None:
    validator = Validator()
    verdict = validator.validate_line(line_of("run-a", 1000))
    assert_valid(verdict)
    assert verdict.warnings == []


def test_stream_runs_are_independent_when_interleaved() -> None:
    validator = Validator()
    steps = [
        ("run-a", 0, "valid", 0),
        ("run-b", 0, "valid", 0),
        ("run-a", 1, "valid", 0),
        ("run-b", 1, "valid", 0),
        ("run-a", 1, "duplicate", 0),
        ("run-b", 5, "valid", 1),  # 2, 3, 4 missing in run-b only
        ("run-a", 2, "valid", 0),
        ("run-b", 2, "duplicate", 0),
    ]
    for run_id, offset, status, warnings in steps:
        verdict = validator.validate_line(line_of(run_id, offset))
        assert (run_id, offset, verdict.status, len(verdict.warnings)) == (run_id, offset, status, warnings)
        assert verdict.errors == []
    assert validator.tracker.last_offsets == {"run-a": 2, "run-b": 5}
    assert validator.counts == {"valid": 6, "invalid": 0, "duplicate": 2}


def test_stream_invalid_records_do_not_advance_the_mark() -> None:
    validator = Validator()
    assert_valid(validator.validate_line(line_of("run-a", 0)))
    assert_invalid(validator.validate_line(line_of("run-a", 1, value_loss=-1.0)), ("value_loss", "range"))
    assert_invalid(validator.validate_line(line_of("run-a", 9, epoch=-1)), ("epoch", "range"))
    verdict = validator.validate_line(line_of("run-a", 1))
    assert_valid(verdict)
    assert verdict.warnings == []
    assert validator.tracker.last_offsets == {"run-a": 1}
    assert validator.counts == {"valid": 2, "invalid": 2, "duplicate": 0}


def test_stream_invalid_record_with_an_old_offset_stays_invalid_not_duplicate() -> None:
    validator = Validator()
    assert_valid(validator.validate_line(line_of("run-a", 5)))
    assert_invalid(validator.validate_line(line_of("run-a", 3, clip_fraction=2.0)), ("clip_fraction", "range"))
    assert validator.tracker.duplicates == 0


def test_stream_v1_0_records_are_not_subject_to_stream_rules() -> None:
    validator = Validator()
    for _ in range(3):
        assert_valid(validator.validate_line(json.dumps(valid_v1_0())))
    # Even an offset carried as an unknown key does not make a v1.0 record a duplicate.
    for offset in (5, 5, 1, 100):
        verdict = validator.validate_line(json.dumps(valid_v1_0(log_stream_offset=offset)))
        assert_valid(verdict)
        assert not any("gap" in w for w in verdict.warnings)
    assert validator.counts == {"valid": 7, "invalid": 0, "duplicate": 0}
    assert validator.tracker.last_offsets == {}
    assert validator.tracker.duplicates == 0 and validator.tracker.gaps == 0


def test_stream_v1_0_records_interleaved_do_not_disturb_v1_1_marks() -> None:
    validator = Validator()
    assert_valid(validator.validate_line(line_of("run-a", 3)))
    assert_valid(validator.validate_line(json.dumps(valid_v1_0(run_id="run-a"))))
    verdict = validator.validate_line(line_of("run-a", 4))
    assert_valid(verdict)
    assert verdict.warnings == []


def test_stream_tracker_resumes_from_last_offsets() -> None:
    saved = {"run-a": 7, "run-b": 0}
    validator = Validator(StreamTracker(last_offsets=saved))
    assert validator.validate_line(line_of("run-a", 7)).status == "duplicate"
    assert validator.validate_line(line_of("run-a", 2)).status == "duplicate"
    ok = validator.validate_line(line_of("run-a", 8))
    assert_valid(ok)
    assert ok.warnings == []
    gap = validator.validate_line(line_of("run-b", 4))
    assert_valid(gap)
    assert len(gap.warnings) == 1 and re.search(r"\b3\b", gap.warnings[0])
    assert validator.tracker.last_offsets == {"run-a": 8, "run-b": 4}
    assert validator.counts == {"valid": 2, "invalid": 0, "duplicate": 2}


def test_stream_tracker_state_round_trips_through_json() -> None:
    first = Validator()
    for offset in (0, 1, 2):
        first.validate_line(line_of("run-a", offset))
    saved = json.loads(json.dumps(first.tracker.last_offsets))
    second = Validator(StreamTracker(saved))
    assert second.validate_line(line_of("run-a", 2)).status == "duplicate"
    assert_valid(second.validate_line(line_of("run-a", 3)))


def test_stream_tracker_check_works_on_verdicts_directly() -> None:
    tracker = StreamTracker()
    assert tracker.check(validate_record(valid_v1_1(log_stream_offset=0))).status == "valid"
    assert tracker.check(validate_record(valid_v1_1(log_stream_offset=0))).status == "duplicate"
    assert tracker.duplicates == 1


# --- Verdict.to_json_dict -----------------------------------------------------------------------

JSON_KEYS = ["line", "status", "telemetry_version", "run_id", "log_stream_offset", "errors", "warnings"]


def test_to_json_dict_of_a_valid_v1_1_record() -> None:
    out = Validator().validate_line(line_of("run-a", 10)).to_json_dict(1)
    assert list(out) == JSON_KEYS
    assert out == {
        "line": 1,
        "status": "valid",
        "telemetry_version": "1.1",
        "run_id": "run-a",
        "log_stream_offset": 10,
        "errors": [],
        "warnings": [],
    }


def test_to_json_dict_of_a_valid_v1_0_record() -> None:
    out = validate_record(valid_v1_0()).to_json_dict(2)
    assert list(out) == JSON_KEYS
    assert (out["telemetry_version"], out["run_id"], out["log_stream_offset"]) == ("1.0", "run-a", None)


def test_to_json_dict_of_an_invalid_record_lists_errors_as_field_rule_message() -> None:
    out = validate_record(valid_v1_1(epoch=-1, clip_fraction=math.nan)).to_json_dict(7)
    assert list(out) == JSON_KEYS
    assert out["line"] == 7 and out["status"] == "invalid"
    assert [list(e) for e in out["errors"]] == [["field", "rule", "message"]] * 2
    assert [(e["field"], e["rule"]) for e in out["errors"]] == [("epoch", "range"), ("clip_fraction", "finite")]
    assert all(isinstance(e["message"], str) and e["message"] for e in out["errors"])
    json.dumps(out, allow_nan=False)  # the output itself is strict JSON


def test_to_json_dict_of_a_non_json_line() -> None:
    out = Validator().validate_line("{oops").to_json_dict(3)
    assert list(out) == JSON_KEYS
    assert out["status"] == "invalid"
    assert (out["telemetry_version"], out["run_id"], out["log_stream_offset"]) == (None, None, None)
    assert [(e["field"], e["rule"]) for e in out["errors"]] == [(None, "json")]


def test_to_json_dict_of_a_duplicate_and_a_gap() -> None:
    validator = Validator()
    validator.validate_line(line_of("run-a", 10))
    dup = validator.validate_line(line_of("run-a", 10)).to_json_dict(2)
    assert list(dup) == JSON_KEYS
    assert (dup["status"], dup["errors"], dup["log_stream_offset"]) == ("duplicate", [], 10)
    gap = validator.validate_line(line_of("run-a", 14)).to_json_dict(3)
    assert gap["status"] == "valid" and len(gap["warnings"]) == 1 and isinstance(gap["warnings"][0], str)


# --- the fast path agrees with the full check ---------------------------------------------------

FAST_PATH_VALID: list[Any] = [
    pytest.param(valid_v1_1(), id="rollout"),
    pytest.param(valid_v1_1(data_mode="mixed", cycle_id=1, rollout_ticks=1), id="mixed-minimal"),
    pytest.param(valid_v1_1(**REPLAY), id="replay"),
    pytest.param(valid_v1_1(explained_variance=None, mean_episode_return=None, reward_advantage_corr=None), id="nulls"),
    pytest.param(
        valid_v1_1(clip_fraction=1.0, explained_variance=1.0, reward_advantage_corr=-1.0, value_loss=0.0,
                   kl_divergence=0.0, kl_divergence_max=0.0, epoch_duration_sec=0.0, batch_entropy_std=0.0,
                   grad_norm_max=0.0, epoch=0, global_step=0, timestamp_ms=1, log_stream_offset=0),
        id="boundaries",
    ),
    pytest.param(
        valid_v1_1(epoch=2**31 - 1, num_samples=2**31 - 1, num_minibatches=2**31 - 1, global_step=2**63 - 1,
                   timestamp_ms=2**63 - 1, cycle_id=2**63 - 1, rollout_ticks=2**63 - 1, log_stream_offset=2**63 - 1),
        id="avro-maxima",
    ),
    pytest.param(valid_v1_1(run_id="a" * 128), id="run_id-128"),
]

MUTATIONS: list[Any] = [
    pytest.param({"clip_fraction": 1}, id="clip_fraction-int-1"),
    pytest.param({"clip_fraction": 1.0000001}, id="clip_fraction-over"),
    pytest.param({"clip_fraction": -1e-12}, id="clip_fraction-under"),
    pytest.param({"value_loss": -0.0}, id="value_loss-minus-zero"),
    pytest.param({"value_loss": -1e-12}, id="value_loss-negative"),
    pytest.param({"learning_rate": 0.0}, id="learning_rate-zero"),
    pytest.param({"explained_variance": 1.0000001}, id="explained_variance-over"),
    pytest.param({"explained_variance": math.nan}, id="explained_variance-nan"),
    pytest.param({"mean_episode_return": math.inf}, id="mean_episode_return-inf"),
    pytest.param({"policy_loss": -math.inf}, id="policy_loss-minus-inf"),
    pytest.param({"policy_loss": 7}, id="policy_loss-int"),
    pytest.param({"reward_advantage_corr": -1.0000001}, id="corr-under"),
    pytest.param({"reward_advantage_corr": math.nan}, id="corr-nan"),
    pytest.param({"kl_divergence_max": 0.0}, id="kl_max-below-mean"),
    pytest.param({"kl_divergence_max": 0.01 - 0.5e-9}, id="kl_max-within-tolerance"),
    pytest.param({"num_minibatches": 65}, id="minibatches-over-samples"),
    pytest.param({"num_minibatches": 64}, id="minibatches-equal-samples"),
    pytest.param({"num_samples": 2**31}, id="num_samples-avro-overflow"),
    pytest.param({"epoch": True}, id="epoch-bool"),
    pytest.param({"epoch": 3.0}, id="epoch-float"),
    pytest.param({"global_step": 2**63}, id="global_step-overflow"),
    pytest.param({"timestamp_ms": 0}, id="timestamp-zero"),
    pytest.param({"log_stream_offset": -1}, id="offset-negative"),
    pytest.param({"log_stream_offset": None}, id="offset-null"),
    pytest.param({"data_mode": "unknown"}, id="mode-unknown"),
    pytest.param({"data_mode": "replay"}, id="mode-replay-with-positive-cycle"),
    pytest.param({"data_mode": "mixed", "cycle_id": 0}, id="mixed-cycle-zero"),
    pytest.param({"cycle_id": 2**63}, id="cycle-overflow"),
    pytest.param({"rollout_ticks": 0}, id="ticks-zero"),
    pytest.param({"run_id": "a" * 129}, id="run_id-129"),
    pytest.param({"run_id": "run\n"}, id="run_id-newline"),
    pytest.param({"batch_entropy_std": "0.1"}, id="entropy_std-string"),
    pytest.param({"grad_norm_max": False}, id="grad_norm-bool"),
    pytest.param({"extra": 1}, id="unknown-key"),
    pytest.param({"extra": math.nan}, id="unknown-key-nan"),
]


def assert_fast_path_agrees(record: Record) -> None:
    """`validate_record` (fast path first) and the full check `_check_record` agree on the record."""
    verdict = validate_record(record)
    full = Verdict("valid")
    _check_record(record, "1.1", full)
    assert (verdict.status == "valid") == (full.errors == [])
    assert errors_of(verdict) == errors_of(full)
    assert verdict.warnings == full.warnings


@pytest.mark.parametrize("record", FAST_PATH_VALID)
def test_fast_path_agrees_on_valid_records(record: Record) -> None:
    assert _fast_valid_1_1(record)  # these records do exercise the fast path
    assert_valid(validate_record(record))
    assert_fast_path_agrees(record)


@pytest.mark.parametrize("record", FAST_PATH_VALID)
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_fast_path_agrees_on_single_field_mutations(record: Record, mutation: Record) -> None:
    assert_fast_path_agrees({**record, **mutation})


@pytest.mark.parametrize("name", [n for n in V1_1_FIELDS if n != "telemetry_version"])
def test_fast_path_agrees_when_a_field_is_missing(name: str) -> None:
    assert_fast_path_agrees(without(valid_v1_1(), name))


@pytest.mark.parametrize("name", ["epoch", "num_samples", "cycle_id", "run_id", "data_mode"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_in_non_double_field_is_reported_as_finite(name, bad):
    verdict = validate_record(valid_v1_1(**{name: bad}))
    assert verdict.status == "invalid"
    assert [(e.field, e.rule) for e in verdict.errors] == [(name, "finite")]


def test_v1_0_record_with_log_stream_offset_key_reports_no_offset():
    record = dict(valid_v1_0(), log_stream_offset=7)
    verdict = validate_record(record)
    assert verdict.status == "valid" and verdict.log_stream_offset is None
    assert verdict.to_json_dict(1)["log_stream_offset"] is None
    assert any("log_stream_offset" in w for w in verdict.warnings)
