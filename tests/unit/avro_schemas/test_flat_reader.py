"""The compiled flat-record reader agrees with fastavro and is never looser than it."""

from __future__ import annotations

import io

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avro_schemas import DecodeError, epoch_summary_codec
from avro_schemas.flat_reader import FlatReaderError, compile_flat_reader

ALL_KINDS = {
    "type": "record",
    "name": "Kinds",
    "fields": [
        {"name": "n", "type": "null"},
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d1", "type": "double"},
        {"name": "d2", "type": "double"},
        {"name": "s", "type": "string"},
        {"name": "raw", "type": "bytes"},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
        {"name": "u", "type": ["null", "string", "long", "double", "boolean"]},
    ],
}

kinds_records = st.fixed_dictionaries({
    "n": st.none(),
    "b": st.booleans(),
    "i": st.integers(-(2**31), 2**31 - 1),
    "l": st.integers(-(2**63), 2**63 - 1),
    "f": st.floats(width=32, allow_nan=False),
    "d1": st.floats(allow_nan=False),
    "d2": st.floats(allow_nan=False),
    "s": st.text(),
    "raw": st.binary(),
    "e": st.sampled_from(["A", "B", "C"]),
    "u": st.one_of(st.none(), st.text(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.booleans()),
})


def fastavro_read(schema, body: bytes):
    buf = io.BytesIO(body)
    record = schemaless_reader(buf, parse_schema(schema), None)
    if buf.tell() != len(body):
        raise ValueError("trailing bytes")
    return record


def write(schema, record) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(schema), record)
    return buf.getvalue()


@settings(max_examples=300, deadline=None)
@given(kinds_records)
def test_compiled_reader_matches_fastavro_on_every_flat_kind(record):
    body = write(ALL_KINDS, record)
    read = compile_flat_reader(ALL_KINDS)
    ours, end = read(body, 0)
    assert end == len(body)
    assert ours == fastavro_read(ALL_KINDS, body) == record


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_compiled_reader_never_accepts_what_fastavro_reads_differently(data):
    record = data.draw(kinds_records)
    body = bytearray(write(ALL_KINDS, record))
    for _ in range(data.draw(st.integers(1, 4))):
        if body:
            body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    body = bytes(body[: data.draw(st.integers(0, len(body)))])
    read = compile_flat_reader(ALL_KINDS)
    try:
        ours, end = read(body, 0)
    except (FlatReaderError, IndexError, UnicodeDecodeError, Exception):
        return  # refusing is always allowed: the reader may be stricter than fastavro
    if end != len(body):
        return
    assert repr(ours) == repr(fastavro_read(ALL_KINDS, body))  # repr: a flipped byte can make a NaN, and NaN != NaN


@pytest.mark.parametrize(
    "field_type",
    [
        {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "int"}]},
        {"type": "array", "items": "int"},
        {"type": "map", "values": "int"},
        {"type": "fixed", "name": "F", "size": 4},
        ["null", {"type": "array", "items": "int"}],
        {"type": "long", "logicalType": "timestamp-millis"},
    ],
    ids=["record", "array", "map", "fixed", "union-with-array", "logical"],
)
def test_non_flat_schemas_get_no_compiled_reader(field_type):
    schema = {"type": "record", "name": "R", "fields": [{"name": "f", "type": field_type}]}
    assert compile_flat_reader(schema) is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (bytes([0x02, 0x05]), "union index"),  # union index 1 of ["null","int"]... then enum below
        (bytes([0x01, 0x00]), "union index"),  # zig-zag -1: fastavro would wrap around to the last branch
        (bytes([0x00, 0x07]), "enum index"),
        (bytes([0x00, 0x01]), "enum index"),  # zig-zag -1
    ],
)
def test_out_of_range_union_and_enum_indexes_are_refused(body, reason):
    schema = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "u", "type": ["null", "long"]},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}},
        ],
    }
    read = compile_flat_reader(schema)
    if body[0] == 0x02:  # a valid union index, but its long is followed by nothing for the enum
        with pytest.raises(IndexError):
            read(body, 0)
        return
    with pytest.raises(FlatReaderError, match=reason):
        read(body, 0)


def test_varint_longer_than_ten_bytes_is_refused():
    schema = {"type": "record", "name": "R", "fields": [{"name": "l", "type": "long"}]}
    with pytest.raises(FlatReaderError):
        compile_flat_reader(schema)(b"\xff" * 11 + b"\x01", 0)


def test_int_outside_32_bits_is_refused():
    int_schema = {"type": "record", "name": "R", "fields": [{"name": "i", "type": "int"}]}
    long_schema = {"type": "record", "name": "R", "fields": [{"name": "i", "type": "long"}]}
    body = write(long_schema, {"i": 2**31})
    with pytest.raises(FlatReaderError, match="int out of range"):
        compile_flat_reader(int_schema)(body, 0)


def test_codec_uses_compiled_reader_and_still_reports_decode_errors():
    codec = epoch_summary_codec()
    record = {
        "telemetry_version": "1.0", "run_id": "r", "epoch": 1, "global_step": 2, "timestamp_ms": 3,
        "policy_loss": 0.5, "value_loss": 1.0, "kl_divergence": 0.01, "clip_fraction": 0.1,
        "explained_variance": None, "learning_rate": 1e-3, "mean_episode_return": 2.5,
        "num_samples": 8, "num_minibatches": 2,
    }
    message = codec.encode(record)
    assert codec.decode(message) == record
    corrupt = bytearray(message)
    corrupt[-11] = 0x05  # the mean_episode_return union index (before its double and two ints) becomes -3
    with pytest.raises(DecodeError, match="union index"):
        codec.decode(bytes(corrupt))
