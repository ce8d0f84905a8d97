"""The codec's two wire formats, single-object (SPEC §3) and Confluent (SPEC §11), and the typed model it
carries (SPEC §1)."""

from __future__ import annotations

import json

import pytest

from avro_schemas.codec import (
    CONFLUENT_HEADER_SIZE, HEADER_SIZE, MAGIC, confluent_header, confluent_schema_id, epoch_summary_codec,
)
from avro_schemas.errors import DecodeError, EncodeError, UnknownSchemaError, UnknownSchemaIdError, WrongHeaderError
from avro_schemas.models import V1_1_ADDED_FIELDS, VERSION_FIELDS, DataMode, EpochSummary
from avro_schemas.registry import SchemaRegistry, crc64_avro, load_family, schema_from_json

V1_0_RECORD = {
    "telemetry_version": "1.0",
    "run_id": "run-a:1.x_y",
    "epoch": 3,
    "global_step": 8192,
    "timestamp_ms": 1_700_000_000_123,
    "policy_loss": -0.0123,
    "value_loss": 0.5,
    "kl_divergence": 0.004,
    "clip_fraction": 0.12,
    "explained_variance": 0.6,
    "learning_rate": 3e-4,
    "mean_episode_return": None,
    "num_samples": 2048,
    "num_minibatches": 32,
}

V1_1_RECORD = {
    **V1_0_RECORD,
    "telemetry_version": "1.1",
    "explained_variance": None,
    "mean_episode_return": 21.5,
    "epoch_duration_sec": 1.25,
    "data_mode": "mixed",
    "cycle_id": 4,
    "batch_entropy_mean": 0.69,
    "batch_entropy_std": 0.01,
    "grad_norm_max": 2.5,
    "kl_divergence_max": 0.009,
    "reward_advantage_corr": 0.3,
    "rollout_ticks": 2048,
    "log_stream_offset": 17,
}

RECORDS = {"1.0": V1_0_RECORD, "1.1": V1_1_RECORD}


@pytest.fixture(scope="module")
def versions():
    return {v.version: v for v in load_family("epoch_summary")}


@pytest.fixture
def codec():
    return epoch_summary_codec()


def _v1_2_schema_text(versions) -> str:
    schema = json.loads(json.dumps(versions["1.1"].schema))
    schema["doc"] = "v1.2: one field added"
    schema["fields"].append({"name": "value_clip_fraction", "type": ["null", "double"], "default": None})
    return json.dumps(schema)


# --- header ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_message_header_is_c3_01_then_little_endian_fingerprint(codec, versions, version):
    message = codec.encode(RECORDS[version])
    schema = versions[version]
    expected_fp = crc64_avro(schema.canonical_form.encode("utf-8")).to_bytes(8, "little")
    assert MAGIC == b"\xc3\x01"
    assert HEADER_SIZE == 10
    assert message[:2] == b"\xc3\x01"
    assert message[2:10] == expected_fp
    assert len(message) > HEADER_SIZE


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_writer_of_names_the_version_in_the_header(codec, versions, version):
    assert codec.writer_of(codec.encode(RECORDS[version])).version == version


# --- round trips and evolution -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_round_trip_returns_the_record(codec, version):
    record = RECORDS[version]
    decoded = codec.decode(codec.encode(record))
    assert decoded == record
    assert list(decoded) == list(VERSION_FIELDS[version])


@pytest.mark.parametrize("wrap", [bytearray, memoryview])
@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_decode_accepts_bytearray_and_memoryview(codec, version, wrap):
    # writer_of accepts all three bytes-like types, so decode must read all three.
    message = codec.encode(RECORDS[version])
    assert codec.decode(wrap(message)) == RECORDS[version]
    assert codec.decode(wrap(message), reader=codec.versions["1.1"])["run_id"] == RECORDS[version]["run_id"]


def test_encode_accepts_an_epoch_summary(codec):
    summary = EpochSummary.from_dict(V1_1_RECORD)
    assert codec.encode(summary) == codec.encode(V1_1_RECORD)


def test_encode_writes_ints_in_double_fields_as_doubles(codec):
    record = {**V1_0_RECORD, "value_loss": 2, "clip_fraction": 0}
    decoded = codec.decode(codec.encode(record))
    assert decoded["value_loss"] == 2.0 and type(decoded["value_loss"]) is float
    assert decoded["clip_fraction"] == 0.0 and type(decoded["clip_fraction"]) is float


def test_v1_0_message_read_with_v1_1_reader_gives_null_new_fields(codec, versions):
    decoded = codec.decode(codec.encode(V1_0_RECORD), reader=versions["1.1"])
    assert list(decoded) == list(VERSION_FIELDS["1.1"])
    for name in V1_1_ADDED_FIELDS:
        assert decoded[name] is None, name
    assert {k: decoded[k] for k in VERSION_FIELDS["1.0"]} == V1_0_RECORD


def test_v1_1_message_read_with_v1_0_reader_drops_new_fields(codec, versions):
    decoded = codec.decode(codec.encode(V1_1_RECORD), reader=versions["1.0"])
    assert decoded == {k: V1_1_RECORD[k] for k in VERSION_FIELDS["1.0"]}


def test_reading_with_the_writer_schema_as_reader_is_a_plain_read(codec, versions):
    message = codec.encode(V1_1_RECORD)
    assert codec.decode(message, reader=versions["1.1"]) == V1_1_RECORD


def test_writer_schema_registered_at_run_time_becomes_decodable(codec, versions):
    text = _v1_2_schema_text(versions)
    producer_v1_2 = schema_from_json(text, "epoch_summary", "1.2")
    record = {**V1_1_RECORD, "value_clip_fraction": 0.05}
    message = codec.encode(record, writer=producer_v1_2)
    assert message[2:HEADER_SIZE] == producer_v1_2.fingerprint

    with pytest.raises(DecodeError, match="unknown writer schema fingerprint"):
        codec.decode(message)

    registered = codec.registry.register(text)
    assert registered.fingerprint == producer_v1_2.fingerprint
    assert codec.decode(message) == record
    assert codec.decode(message, reader=versions["1.1"]) == V1_1_RECORD


def test_codec_shares_a_registry_given_to_it(versions):
    registry = SchemaRegistry()
    codec = epoch_summary_codec(registry)
    assert versions["1.0"].fingerprint in registry and versions["1.1"].fingerprint in registry
    text = _v1_2_schema_text(versions)
    message = codec.encode({**V1_1_RECORD, "value_clip_fraction": None}, writer=schema_from_json(text))
    registry.register(text)
    assert codec.decode(message)["value_clip_fraction"] is None


# --- decode errors -----------------------------------------------------------------------------------


def _assert_one_line_reason(error: DecodeError) -> None:
    assert isinstance(error.reason, str) and error.reason.strip()
    assert "\n" not in error.reason
    assert str(error) == error.reason


def _bad_messages(codec):
    good = codec.encode(V1_1_RECORD)
    codec.registry.add_id(7, json.dumps(codec.latest.schema))
    framed = codec.encode(V1_1_RECORD, schema_id=7)
    return {
        "empty": (b"", "empty message"),
        "one_byte_wrong": (b"\x07", "wrong header"),
        "confluent_magic_only": (b"\x00", "truncated header"),
        "confluent_short_id": (b"\x00\x00\x00\x07", "truncated header"),
        "confluent_unknown_id": (confluent_header(8) + good[HEADER_SIZE:], "unknown schema id 8"),
        "confluent_header_only": (framed[:CONFLUENT_HEADER_SIZE], "truncated body"),
        "confluent_truncated_body": (framed[:-1], "truncated body"),
        "confluent_trailing_bytes": (framed + b"\x00", "trailing bytes"),
        "one_byte_magic": (b"\xc3", "truncated header"),
        "wrong_magic": (b"\xc3\x02" + good[2:], "wrong header"),
        "json_text": (json.dumps(V1_1_RECORD).encode(), "wrong header"),
        "truncated_header": (good[:7], "truncated header"),
        "magic_only": (MAGIC, "truncated header"),
        "unknown_fingerprint": (MAGIC + b"\x01\x02\x03\x04\x05\x06\x07\x08" + good[HEADER_SIZE:], "unknown writer schema"),
        "header_only": (good[:HEADER_SIZE], "truncated body"),
        "truncated_body": (good[:-1], "truncated body"),
        "trailing_bytes": (good + b"\x00", "trailing bytes"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "one_byte_wrong",
        "confluent_magic_only",
        "confluent_short_id",
        "confluent_unknown_id",
        "confluent_header_only",
        "confluent_truncated_body",
        "confluent_trailing_bytes",
        "one_byte_magic",
        "wrong_magic",
        "json_text",
        "truncated_header",
        "magic_only",
        "unknown_fingerprint",
        "header_only",
        "truncated_body",
        "trailing_bytes",
    ],
)
def test_bad_message_is_a_decode_error_with_a_one_line_reason(codec, case):
    data, expected = _bad_messages(codec)[case]
    with pytest.raises(DecodeError) as info:
        codec.decode(data)
    _assert_one_line_reason(info.value)
    assert expected in info.value.reason


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_a_confluent_framed_message_holds_the_same_body_after_the_magic_byte_and_the_schema_id(codec, versions, version):
    codec.registry.add_id(41, json.dumps(versions[version].schema))
    single = codec.encode(RECORDS[version])
    framed = codec.encode(RECORDS[version], schema_id=41)
    assert framed[:CONFLUENT_HEADER_SIZE] == b"\x00\x00\x00\x00\x29"  # 41, big-endian
    assert framed[CONFLUENT_HEADER_SIZE:] == single[HEADER_SIZE:]
    assert confluent_schema_id(framed) == 41 and confluent_schema_id(single) is None
    assert codec.decode(framed) == codec.decode(single) == RECORDS[version]
    assert codec.writer_of(framed).fingerprint == versions[version].fingerprint
    resolved = codec.decode(framed, reader=versions["1.1"])
    assert resolved == codec.decode(single, reader=versions["1.1"])


def test_an_unknown_schema_id_names_the_id_and_is_an_unknown_schema(codec):
    with pytest.raises(UnknownSchemaIdError) as info:
        codec.decode(confluent_header(123456) + b"\x02")
    assert info.value.schema_id == 123456 and isinstance(info.value, UnknownSchemaError)


def test_a_schema_id_the_header_cannot_hold_is_refused_when_encoding(codec):
    for bad in (-1, 2**31):
        with pytest.raises(EncodeError, match="does not fit"):
            codec.encode(V1_1_RECORD, schema_id=bad)


def test_neither_magic_is_a_wrong_header(codec):
    with pytest.raises(WrongHeaderError, match="expected C3 01 .single-object. or 00 .Confluent., got 7B 22"):
        codec.decode(json.dumps(V1_1_RECORD).encode())


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_every_proper_prefix_of_a_message_is_a_decode_error(codec, versions, version):
    message = codec.encode(RECORDS[version])
    for reader in (None, versions["1.0"], versions["1.1"]):
        for end in range(len(message)):
            with pytest.raises(DecodeError) as info:
                codec.decode(message[:end], reader=reader)
            _assert_one_line_reason(info.value)


def test_invalid_enum_index_in_body_is_a_decode_error(codec):
    message = bytearray(codec.encode(V1_1_RECORD))
    # data_mode "mixed" is union branch 1 (zigzag 0x02), then enum index 2 (zigzag 0x04); make it 9.
    tail = bytes(message).rfind(b"\x02\x04")
    assert tail > HEADER_SIZE
    message[tail + 1] = 0x12
    with pytest.raises(DecodeError) as info:
        codec.decode(bytes(message))
    _assert_one_line_reason(info.value)


def test_invalid_utf8_string_in_body_is_a_decode_error(codec):
    record = {**V1_0_RECORD, "run_id": "abc"}
    message = codec.encode(record)
    bad = message.replace(b"abc", b"\xff\xfe\xfd", 1)
    with pytest.raises(DecodeError) as info:
        codec.decode(bad)
    _assert_one_line_reason(info.value)


@pytest.mark.parametrize("value", ["c301", None, 42, [0xC3, 0x01], {"a": 1}])
def test_non_bytes_input_is_a_decode_error(codec, value):
    with pytest.raises(DecodeError) as info:
        codec.decode(value)
    _assert_one_line_reason(info.value)
    assert "expected bytes" in info.value.reason


# --- encode errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.9", "1.2", "", None, 1.1])
def test_encode_with_unknown_telemetry_version_is_an_encode_error(codec, version):
    with pytest.raises(EncodeError, match="no schema for telemetry_version"):
        codec.encode({**V1_1_RECORD, "telemetry_version": version})


def test_encode_without_telemetry_version_is_an_encode_error(codec):
    record = {k: v for k, v in V1_1_RECORD.items() if k != "telemetry_version"}
    with pytest.raises(EncodeError):
        codec.encode(record)


@pytest.mark.parametrize(
    "field, value",
    [
        ("epoch", "three"),
        ("policy_loss", "high"),
        ("run_id", 7),
        ("num_samples", None),
        ("data_mode", "sideways"),
        ("cycle_id", "1"),
        ("global_step", 2**63),
    ],
)
def test_encode_with_a_wrong_type_is_an_encode_error(codec, field, value):
    with pytest.raises(EncodeError) as info:
        codec.encode({**V1_1_RECORD, field: value})
    assert "cannot encode with epoch_summary v1.1" in str(info.value)


# --- the typed model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_epoch_summary_round_trips_through_dicts(version):
    record = RECORDS[version]
    summary = EpochSummary.from_dict(record)
    assert summary.to_dict() == record
    assert list(summary.to_dict()) == list(VERSION_FIELDS[version])


def test_epoch_summary_from_dict_makes_data_mode_a_data_mode():
    summary = EpochSummary.from_dict(V1_1_RECORD)
    assert summary.data_mode is DataMode.MIXED
    assert summary.to_dict()["data_mode"] == "mixed"
    assert type(summary.to_dict()["data_mode"]) is str


def test_epoch_summary_v1_0_has_no_v1_1_values_and_ignores_extra_keys():
    summary = EpochSummary.from_dict({**V1_0_RECORD, "data_mode": "replay", "unrelated": 1})
    for name in V1_1_ADDED_FIELDS:
        assert getattr(summary, name) is None, name
    assert summary.to_dict() == V1_0_RECORD


def test_data_mode_values_are_the_schema_symbols(versions):
    (field,) = [f for f in versions["1.1"].schema["fields"] if f["name"] == "data_mode"]
    assert [m.value for m in DataMode] == field["type"][1]["symbols"]


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1])
def test_encode_refuses_int_field_outside_avro_int_range(value):
    from avro_schemas import EncodeError, epoch_summary_codec

    codec = epoch_summary_codec()
    record = {
        "telemetry_version": "1.0", "run_id": "r", "epoch": value, "global_step": 2, "timestamp_ms": 3,
        "policy_loss": 0.5, "value_loss": 1.0, "kl_divergence": 0.01, "clip_fraction": 0.1,
        "explained_variance": None, "learning_rate": 1e-3, "mean_episode_return": 2.5,
        "num_samples": 8, "num_minibatches": 2,
    }
    with pytest.raises(EncodeError, match="epoch"):
        codec.encode(record)
    record["epoch"] = 2**31 - 1
    assert codec.decode(codec.encode(record))["epoch"] == 2**31 - 1
