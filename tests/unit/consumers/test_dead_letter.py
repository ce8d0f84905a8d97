"""The DLQ message of a rejected input (consumers/dead_letter.py, and the validator group that builds it
from a Kafka message): authoritative headers, cut to fit."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confluent_kafka import Message

from avro_schemas.codec import epoch_summary_codec
from avro_schemas.errors import DecodeError, EmptyMessageError
from avro_schemas.topics import DLQ_TOPIC
from consumers.dead_letter import (
    DLQ_MAX_MESSAGE_BYTES, ERROR_MESSAGE_MAX_BYTES, MIN_RECORD_LIMIT, PRODUCER_MESSAGE_MAX_BYTES, RECORD_BATCH_OVERHEAD, RECORD_OVERHEAD,
    DeadLetterError, Rejection, SourceMessage, check_record_limit, dead_letter, decode_rule, headers_size,
    record_limit, record_size,
)
from consumers.groups import ValidatorGroup
from ppo_telemetry.demo import synthetic_run

REJECTION = Rejection("decode", "wrong_header", "wrong header: expected C3 01, got 00 01")
OWN = ("error.stage", "error.rule", "error.message", "source.topic", "source.partition", "source.offset")
CUT = ("source.value.length", "source.value.sha256", "source.value.truncated")


def source(value: bytes | None = b"\x00garbage", key: bytes | None = b"run-1", headers=(), topic="ppo.telemetry.epochs"):
    return SourceMessage(topic, 2, 41, key, value, tuple(headers))


def names(letter) -> list[str]:
    return [name for name, _ in letter.headers]


def test_a_dead_letter_that_fits_is_the_message_as_it_arrived_with_the_spec_headers_first():
    letter = dead_letter(source(headers=[("telemetry_version", b"1.1")]), REJECTION, 10_000)
    assert (letter.key, letter.value) == (b"run-1", b"\x00garbage")
    assert names(letter) == [*OWN, "telemetry_version"]
    headers = dict(letter.headers)
    assert headers["error.stage"] == b"decode" and headers["error.rule"] == b"wrong_header"
    assert headers["source.topic"] == b"ppo.telemetry.epochs"
    assert (headers["source.partition"], headers["source.offset"]) == (b"2", b"41")
    assert headers["telemetry_version"] == b"1.1"


def test_forged_error_and_source_headers_are_kept_under_original_and_ours_are_the_only_ones():
    forged = [
        ("error.rule", b"forged"), ("source.offset", b"999"), ("original.error.rule", b"older"),
        ("telemetry_version", b"1.1"), ("error.stage", None),
    ]
    letter = dead_letter(source(headers=forged), REJECTION, 10_000)
    for name in OWN:
        assert names(letter).count(name) == 1
    headers = dict(letter.headers)
    assert headers["error.rule"] == b"wrong_header" and headers["source.offset"] == b"41"
    assert headers["original.error.rule"] == b"forged"
    assert headers["original.source.offset"] == b"999"
    assert headers["original.original.error.rule"] == b"older"  # one `original.` stripped: the sender's name
    assert headers["original.error.stage"] is None
    assert headers["telemetry_version"] == b"1.1"


def test_headers_the_client_could_not_read_are_flagged_among_ours():
    unreadable = SourceMessage("ppo.telemetry.epochs", 0, 7, b"k", b"\x00", (), headers_unreadable=True)
    letter = dead_letter(unreadable, REJECTION, 10_000)
    assert names(letter) == [*OWN, "source.headers.unreadable"]
    assert dict(letter.headers)["source.headers.unreadable"] == b"true"


def test_a_message_exactly_at_the_limit_goes_whole_and_one_byte_more_is_cut():
    whole = dead_letter(source(value=b"\x01" * 5000), REJECTION, 1_000_000)
    limit = whole.size
    assert dead_letter(source(value=b"\x01" * 5000), REJECTION, limit).value == b"\x01" * 5000
    cut = dead_letter(source(value=b"\x01" * 5001), REJECTION, limit)
    assert cut.size <= limit and len(cut.value) < 5000
    assert dict(cut.headers)["source.value.length"] == b"5001"


def test_an_oversized_value_is_cut_to_fit_with_its_length_digest_and_a_truncated_mark():
    value = bytes(range(256)) * 4100  # 1,049,600 bytes
    limit = record_limit(1_048_588)
    letter = dead_letter(source(value=value), REJECTION, limit)
    assert letter.size <= limit
    assert letter.size > limit - 400  # only the room reserved for the cut headers is left unused
    assert value.startswith(letter.value) and letter.key == b"run-1"
    headers = dict(letter.headers)
    assert headers["source.value.length"] == str(len(value)).encode()
    assert headers["source.value.sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert headers["source.value.truncated"] == b"true"
    assert names(letter)[: len(OWN) + len(CUT)] == [*OWN, *CUT]
    assert "source.key.truncated" not in headers and "source.headers.dropped" not in headers


def test_huge_key_and_headers_are_cut_and_dropped_in_turn_and_our_headers_always_fit():
    key, value = b"k" * 50_000, b"v" * 50_000
    theirs = [("small", b"s"), ("big", b"b" * 50_000), ("after", b"a")]
    letter = dead_letter(
        source(value=value, key=key, headers=theirs, topic="t" * 249),
        Rejection("validate", "range", "é" * 5000), MIN_RECORD_LIMIT,
    )
    assert letter.size <= MIN_RECORD_LIMIT
    headers = dict(letter.headers)
    for name in OWN:
        assert name in headers
    assert len(headers["error.message"]) <= ERROR_MESSAGE_MAX_BYTES
    headers["error.message"].decode("utf-8")  # cut on a character boundary
    assert key.startswith(letter.key) and len(letter.key) < len(key)
    assert headers["source.key.length"] == b"50000" and headers["source.key.truncated"] == b"true"
    assert headers["source.key.sha256"] == hashlib.sha256(key).hexdigest().encode()
    assert letter.value == b"" and headers["source.value.length"] == b"50000"
    assert headers["source.headers.dropped"] == b"3"  # the key took the room: no sender header is left


def test_a_sender_header_too_large_is_dropped_with_those_after_it_and_the_value_gets_the_rest():
    theirs = [("small", b"s"), ("big", b"b" * 20_000), ("after", b"a")]
    letter = dead_letter(source(value=b"v" * 100, headers=theirs), REJECTION, 10_000)
    assert letter.size <= 10_000
    assert [n for n in names(letter) if not n.startswith(("error.", "source."))] == ["small"]
    assert dict(letter.headers)["source.headers.dropped"] == b"2"
    assert letter.value == b"v" * 100 and "source.value.truncated" not in dict(letter.headers)


def test_a_null_value_stays_null_when_the_key_is_cut():
    letter = dead_letter(source(value=None, key=b"k" * 20_000), REJECTION, 10_000)
    assert letter.value is None and letter.size <= 10_000
    assert "source.value.length" not in dict(letter.headers)
    assert dict(letter.headers)["source.key.truncated"] == b"true"


@settings(max_examples=200, deadline=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=3000)),
    value=st.one_of(st.none(), st.binary(max_size=20_000)),
    theirs=st.lists(st.tuples(st.sampled_from(["error.rule", "source.topic", "original.x", "x", "é"]),
                              st.one_of(st.none(), st.binary(max_size=3000))), max_size=6),
    limit=st.integers(MIN_RECORD_LIMIT, 30_000),
)
def test_every_dead_letter_fits_its_limit_and_carries_our_headers_once(key, value, theirs, limit):
    original = source(value=value, key=key, headers=theirs)
    letter = dead_letter(original, REJECTION, limit)
    assert letter.size <= limit
    for name in OWN:
        assert names(letter).count(name) == 1
    if record_size(key, value, []) + headers_size(letter.headers) <= limit and len(letter.headers) == len(OWN) + len(theirs):
        assert (letter.key, letter.value) == (key, value)  # nothing cut when the whole fits
    if value is not None:
        assert value.startswith(letter.value)


def test_record_size_counts_librdkafka_s_worst_case_overhead_and_exact_header_varints():
    assert record_size(None, None, []) == RECORD_OVERHEAD
    assert headers_size([("a" * 63, b"v" * 63)]) == 1 + 63 + 1 + 63  # zigzag 126 fits one byte
    assert headers_size([("a" * 64, b"v" * 64)]) == 2 + 64 + 2 + 64
    assert headers_size([("n", None)]) == 1 + 1 + 1


def test_the_record_limit_is_the_smaller_of_the_producer_s_and_the_topic_s_less_a_batch_header():
    assert record_limit(1_048_588) == PRODUCER_MESSAGE_MAX_BYTES == 1_048_588 - RECORD_BATCH_OVERHEAD
    assert record_limit(2_000_000) == PRODUCER_MESSAGE_MAX_BYTES
    assert record_limit(100_000, 1_000_000) == 100_000 - RECORD_BATCH_OVERHEAD
    assert record_limit(2_000_000, 1_000_000) == 1_000_000


def test_a_dlq_too_small_for_a_dead_letter_is_refused_in_one_line():
    assert check_record_limit(MIN_RECORD_LIMIT, "dlq") == MIN_RECORD_LIMIT
    with pytest.raises(DeadLetterError, match="topic dlq takes records of at most 939 bytes"):
        check_record_limit(record_limit(1000), "dlq")


def decode_failure(data: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        epoch_summary_codec().decode(data)
    return caught.value


def test_decode_failures_are_classified_by_type_for_the_dlq_rule():
    good = epoch_summary_codec().encode(synthetic_run("r", 1, 6, False)[0])
    assert decode_rule(decode_failure(b"\x07\x01garbage")) == "wrong_header"
    assert decode_rule(decode_failure(b"\x07")) == "wrong_header"
    # 00: the Confluent wire format's magic byte, then a schema id
    assert decode_rule(decode_failure(b"\x00\x01garbage")) == "unknown_schema"
    assert decode_rule(decode_failure(b"\x00")) == "truncated"
    assert decode_rule(decode_failure(good[:6])) == "truncated"
    assert decode_rule(decode_failure(good[:40])) == "truncated"
    assert decode_rule(decode_failure(good[:2] + b"\x07" * 8 + good[10:])) == "unknown_schema"
    assert decode_rule(decode_failure(good + b"\x00")) == "undecodable"


def test_an_empty_value_and_a_null_value_have_one_rule():
    assert decode_rule(decode_failure(b"")) == "empty"
    assert decode_rule(EmptyMessageError("empty message (null value)")) == "empty"


def test_the_validator_group_dead_letters_a_kafka_message_within_the_limit_the_runner_gave_it():
    group = ValidatorGroup()
    assert group.topic_configs[DLQ_TOPIC] == {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)}
    group.limit_records({DLQ_TOPIC: 10_000})
    message = Message(topic="ppo.telemetry.epochs", partition=1, offset=5, key=b"k", value=b"\x00" * 50_000,
                      headers=[("error.rule", b"forged")])
    [output] = group.on_rejected(message, REJECTION)
    assert output.topic == DLQ_TOPIC and record_size(output.key, output.value, output.headers) <= 10_000
    headers = dict(output.headers)
    assert headers["error.rule"] == b"wrong_header" and headers["original.error.rule"] == b"forged"
    assert headers["source.value.length"] == b"50000" and headers["source.offset"] == b"5"


def test_the_validator_group_refuses_a_dlq_too_small_for_a_dead_letter():
    with pytest.raises(DeadLetterError, match=DLQ_TOPIC):
        ValidatorGroup().limit_records({DLQ_TOPIC: record_limit(2000)})
