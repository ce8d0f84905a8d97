"""The validator's line-level rules: `duplicate_key` (a key named twice in a JSON object) and
`line_too_long` (a line the reader skipped for being over `--max-line-bytes`)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from avro_schemas.ndjson import OverlongLine
from consumers.validator import RULES, FieldError, Validator, parse_json_line, validate_line_record

from .conftest import epoch_summary


def valid_line(**overrides: Any) -> str:
    """A valid v1.1 record as one NDJSON line, as our writer would write it."""
    record = epoch_summary("run-a", 3).to_dict()
    record.update(overrides)
    return json.dumps(record)


def with_extra_pair(line: str, text: str) -> str:
    """`line` (a JSON object) with `text` (one more `"key": value` pair) added at its end."""
    return line[:-1] + ", " + text + "}"


def errors_of(line: str | bytes) -> list[tuple[str | None, str]]:
    return [(error.field, error.rule) for error in Validator().validate_line(line).errors]


# ---------------------------------------------------------------------------------------- duplicate_key


def test_a_valid_record_line_is_still_valid():
    assert Validator().validate_line(valid_line()).status == "valid"
    assert Validator().validate_line(valid_line().encode()).status == "valid"


def test_a_field_named_twice_is_invalid_with_rule_duplicate_key_naming_the_field():
    line = with_extra_pair(valid_line(), '"epoch": 4')
    verdict = Validator().validate_line(line)
    assert verdict.status == "invalid"
    assert [(e.field, e.rule) for e in verdict.errors] == [("epoch", "duplicate_key")]
    assert "'epoch'" in verdict.errors[0].message


def test_a_field_repeated_with_the_same_value_is_a_duplicate_too():
    assert errors_of(with_extra_pair(valid_line(), '"epoch": 3')) == [("epoch", "duplicate_key")]


def test_a_duplicate_after_whitespace_before_its_colon_is_found():
    assert errors_of(with_extra_pair(valid_line(), '"clip_fraction" \t : 0.1')) == [("clip_fraction", "duplicate_key")]


def test_a_duplicate_unknown_key_is_found():
    line = with_extra_pair(with_extra_pair(valid_line(), '"note": 1'), '"note": 2')
    assert errors_of(line) == [("note", "duplicate_key")]


def test_a_duplicate_inside_a_nested_object_names_the_nested_key():
    assert errors_of(with_extra_pair(valid_line(), '"extra": {"a": 1, "a": 2}')) == [("a", "duplicate_key")]
    assert errors_of(with_extra_pair(valid_line(), '"extra": [{"b": 1}, {"c": 1, "c": 1}]')) == [("c", "duplicate_key")]


def test_the_same_key_in_two_different_objects_is_not_a_duplicate():
    verdict = Validator().validate_line(with_extra_pair(valid_line(), '"extra": [{"epoch": 1}, {"epoch": 2}]'))
    assert verdict.status == "valid" and verdict.warnings


def test_run_ids_with_colons_are_valid_and_their_duplicates_are_found():
    assert Validator().validate_line(valid_line(run_id="exp:1:seed:0")).status == "valid"
    line = with_extra_pair(valid_line(run_id="exp:1:seed:0"), '"epoch": 4')
    assert errors_of(line) == [("epoch", "duplicate_key")]


def test_escaped_colons_cannot_hide_a_duplicate():
    # \u003a decodes to ':' but is no colon in the text: discounting it would miss the duplicate
    line = with_extra_pair(valid_line(), '"epoch": 4').replace('"run-a"', '"run\\u003aa"')
    assert errors_of(line) == [("epoch", "duplicate_key")]


def test_a_key_containing_colons_named_twice_is_found():
    assert errors_of('{"a:b": 1, "a:b": 2}') == [("a:b", "duplicate_key")]


def test_a_duplicate_key_in_a_top_level_array_is_found_before_the_object_rule():
    assert errors_of('[{"x": 1, "x": 2}]') == [("x", "duplicate_key")]
    assert errors_of('[{"x": 1}]') == [(None, "object")]


def test_a_duplicate_key_verdict_keeps_the_spec_output_shape():
    doc = Validator().validate_line(with_extra_pair(valid_line(), '"epoch": 4')).to_json_dict(5)
    assert list(doc) == ["line", "status", "telemetry_version", "run_id", "log_stream_offset", "errors", "warnings"]
    assert doc["status"] == "invalid" and doc["errors"][0]["rule"] == "duplicate_key"
    assert doc["errors"][0]["field"] == "epoch"


# Keys that make the certificate's counting hard: colons, quotes, backslashes, escapes of a colon.
_KEYS = st.sampled_from(["a", "b", "a:b", ":", 'q"', "back\\slash", "run_id", "epoch"])
_SCALARS = st.one_of(st.integers(-5, 5), st.sampled_from(["x", "x:y", ":", "\\", '"', "\u003a"]), st.none())


def _pairs(depth: int) -> st.SearchStrategy:
    value = _SCALARS if depth == 0 else st.one_of(_SCALARS, st.deferred(lambda: _object(depth - 1)))
    return st.lists(st.tuples(_KEYS, value), max_size=5)


def _object(depth: int) -> st.SearchStrategy:
    return st.builds(_Obj, _pairs(depth))


class _Obj:
    """A JSON object as written: its pairs in order, duplicates and all."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


def _render(value: Any, spacing: str, escape_colons: bool) -> str:
    if isinstance(value, _Obj):
        items = (f"{_render(key, spacing, escape_colons)}{spacing}:{spacing}{_render(item, spacing, escape_colons)}"
                 for key, item in value.pairs)
        return "{" + ",".join(items) + "}"
    text = json.dumps(value)
    return text.replace(":", "\\u003a") if escape_colons and isinstance(value, str) else text


def _has_duplicate(value: Any) -> bool:
    if not isinstance(value, _Obj):
        return False
    keys = [key for key, _ in value.pairs]
    return len(set(keys)) != len(keys) or any(_has_duplicate(item) for _, item in value.pairs)


@settings(max_examples=400, deadline=None)
@given(document=_object(2), spacing=st.sampled_from(["", " ", "\t "]), escape_colons=st.booleans())
def test_duplicate_key_is_reported_exactly_when_some_object_names_a_key_twice(document, spacing, escape_colons):
    text = _render(document, spacing, escape_colons)
    parsed = parse_json_line(text)
    if _has_duplicate(document):
        assert isinstance(parsed, FieldError) and parsed.rule == "duplicate_key"
    else:
        assert parsed == json.loads(text)


# ---------------------------------------------------------------------------------------- line_too_long


def test_an_overlong_line_is_one_invalid_record_with_rule_line_too_long():
    validator = Validator()
    verdict = validator.validate_line(OverlongLine(50_000_000, 1_048_576))
    assert verdict.status == "invalid"
    assert [(e.field, e.rule) for e in verdict.errors] == [(None, "line_too_long")]
    assert "50,000,000 bytes" in verdict.errors[0].message and "1,048,576" in verdict.errors[0].message
    assert validator.counts == {"valid": 0, "invalid": 1, "duplicate": 0}


def test_an_overlong_line_verdict_keeps_the_spec_output_shape():
    doc = validate_line_record(OverlongLine(2_000_000, 1_048_576)).to_json_dict(9)
    assert doc == {
        "line": 9, "status": "invalid", "telemetry_version": None, "run_id": None, "log_stream_offset": None,
        "errors": [{"field": None, "rule": "line_too_long", "message": doc["errors"][0]["message"]}],
        "warnings": [],
    }


def test_both_line_rules_are_listed_among_the_stable_rule_names():
    assert "line_too_long" in RULES and "duplicate_key" in RULES
