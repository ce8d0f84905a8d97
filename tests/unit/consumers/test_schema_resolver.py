"""The schema resolver's pure part (consumers/schema_resolver.py): either wire format decoded, writer schemas
learnt from the schema topic (given here as the pairs a reader of it returns), Confluent-framed values
without a registry said so; and the registry client's URL handling. The registry itself is exercised
for real in tests/integration/test_confluent_wire.py."""

from __future__ import annotations

import json

import pytest

from avro_schemas.codec import confluent_header, epoch_summary_codec
from avro_schemas.errors import DecodeError, EmptyMessageError, UnknownSchemaError, UnknownSchemaIdError
from avro_schemas.registry import schema_from_json
from consumers.schema_resolver import SchemaResolver
from kafka_io.registry_client import RegistryClient, RegistryError, subject_of
from ppo_telemetry.demo import synthetic_run

RECORD = synthetic_run("resolver-run", 1, seed=1, unstable=False)[0]


def _v1_2() -> dict:
    """A later writer schema (v1.1 plus a nullable field with a default), unknown to the local codec."""
    schema = json.loads(json.dumps(epoch_summary_codec().latest.schema))
    schema["fields"].append({"name": "seed", "type": ["null", "long"], "default": None})
    return schema


def _written_with_v1_2() -> tuple[bytes, str]:
    """A single-object message written with `_v1_2`, and that schema's JSON."""
    text = json.dumps(_v1_2())
    writer = schema_from_json(text)
    codec = epoch_summary_codec()
    return codec.encode(dict(RECORD, seed=7), writer), text


def test_both_formats_of_a_local_version_decode_to_the_same_record():
    resolver = SchemaResolver()
    resolver.codec.registry.add_id(3, json.dumps(resolver.codec.latest.schema))
    single = resolver.codec.encode(RECORD)
    framed = resolver.codec.encode(RECORD, schema_id=3)
    assert resolver.prepare([single, framed]) is True  # no registry: nothing to fetch
    assert resolver.decode(single) == resolver.decode(framed) == RECORD


def test_confluent_values_decode_the_same_every_time_a_local_writer_as_is_a_later_one_resolved():
    resolver = SchemaResolver()
    message, text = _written_with_v1_2()
    resolver.codec.registry.add_id(3, json.dumps(resolver.codec.latest.schema))
    resolver.codec.registry.add_id(4, text)
    local = resolver.codec.encode(RECORD, schema_id=3)
    later = confluent_header(4) + message[10:]
    for _ in range(3):  # the first read finds the writer by id, later ones take the known header's short way
        assert resolver.decode(local) == RECORD
        assert resolver.decode(later) == RECORD  # `seed` is not a field of the reader, v1.1
    with pytest.raises(DecodeError):  # the short way still reads the body strictly
        resolver.decode(local[:-3])
    with pytest.raises(DecodeError):
        resolver.decode(local + b"\x00")


def test_prepare_looks_only_at_framed_bytes_and_fetches_nothing_already_known():
    # the ids are known, so the registry (nothing listens on port 9) is never asked
    resolver = SchemaResolver(registry=RegistryClient("http://127.0.0.1:9/apis/ccompat/v7"))
    resolver.codec.registry.add_id(3, json.dumps(resolver.codec.latest.schema))
    framed = resolver.codec.encode(RECORD, schema_id=3)
    values = [None, b"", b"\x00", b"\x00\x00\x00\x00", bytearray(framed), resolver.codec.encode(RECORD), framed]
    assert resolver.prepare(values) is True
    assert resolver.prepare(iter(values)) is True


def test_an_unknown_fingerprint_is_learnt_from_the_schema_topic_and_read_as_the_newest_local_version():
    message, text = _written_with_v1_2()
    reads = []

    def schema_topic():
        reads.append(1)
        return [(0, None), (1, b"not a schema"), (2, text.encode())]

    lines: list[str] = []
    resolver = SchemaResolver(schema_topic=schema_topic, say=lines.append)
    assert resolver.decode(message) == RECORD  # `seed` is not a field of the reader, v1.1
    assert reads == [1]
    assert lines == [lines[0]] and lines[0].startswith("schema topic offset 1: not a schema")
    assert resolver.decode(message) == RECORD and reads == [1]  # known now: the topic is not read again


def test_the_schema_topic_is_read_at_most_once_per_interval():
    message, _ = _written_with_v1_2()
    reads = []
    resolver = SchemaResolver(schema_topic=lambda: reads.append(1) or [], min_interval=3600)
    for _ in range(3):
        with pytest.raises(UnknownSchemaError):
            resolver.decode(message)
    assert reads == [1]


def test_a_confluent_framed_value_without_a_registry_says_which_flag_is_missing():
    resolver = SchemaResolver()
    with pytest.raises(UnknownSchemaIdError) as info:
        resolver.decode(confluent_header(12) + resolver.codec.encode(RECORD)[10:])
    assert info.value.schema_id == 12
    assert "no Schema Registry was given (--schema-registry)" in info.value.reason
    assert "\n" not in info.value.reason


def test_a_null_value_is_an_empty_message():
    with pytest.raises(EmptyMessageError):
        SchemaResolver().decode(None)


@pytest.mark.parametrize("url", ["127.0.0.1:8081", "ftp://host/x", "http://", "not a url"])
def test_a_malformed_registry_url_is_one_line(url):
    with pytest.raises(RegistryError) as info:
        RegistryClient(url)
    assert "\n" not in str(info.value)


def test_credentials_in_a_registry_url_become_basic_auth_and_never_show():
    client = RegistryClient("https://alice:s3cr%40t@registry.example:8443/apis/ccompat/v7/")
    assert client.url == "https://registry.example:8443/apis/ccompat/v7"
    assert client._authorization == "Basic YWxpY2U6czNjckB0"  # base64("alice:s3cr@t")
    with pytest.raises(RegistryError) as info:
        RegistryClient("ftp://alice:s3cret@host")
    assert "s3cret" not in str(info.value)


def test_subjects_follow_the_topic_name_strategy():
    assert subject_of("team.ppo.telemetry.epochs") == "team.ppo.telemetry.epochs-value"
