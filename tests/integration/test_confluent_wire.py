"""The Confluent wire format with a real Schema Registry (SPEC §11; Apicurio Registry 3, the
`schema_registry` fixture): the producer registers v1.0 and v1.1 under FULL_TRANSITIVE, the registry and
our own check refuse the same schemas, a consumer that is not ours (`confluent_kafka`'s AvroDeserializer)
reads our records, and our three groups read a topic holding both formats (a migration)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import defaultdict
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from avro_schemas.codec import CONFLUENT_HEADER_SIZE, HEADER_SIZE, alert_codec, drift_record_codec, epoch_summary_codec
from avro_schemas.compatibility import check_pair
from avro_schemas.registry import load_family, schema_from_json
from avro_schemas.topics import Namespace
from consumers.drift import Baseline
from consumers.schema_resolver import SchemaResolver
from exactly_once import WATCH_RULES, Backlog, expected_outputs, verify_drift_summaries
from kafka_io.registry_client import RegistryClient, RegistryRejected, subject_of
from kafka_testing import committed_offsets, end_offsets, free_ports, read_topic, wait_for
from ppo_telemetry.demo import synthetic_run
from producer.kafka_sink import KafkaSink

pytestmark = pytest.mark.integration


@pytest.fixture
def namespace() -> Namespace:
    return Namespace(f"cf-{uuid.uuid4().hex[:8]}")


def publish(kafka_config: dict[str, Any], namespace: Namespace, records: list[dict[str, Any]], **wire: Any) -> None:
    """`records` through our Kafka sink (single-object unless `wire` says otherwise), delivered."""
    sink = KafkaSink(kafka_config, namespace=namespace, first_offset=records[0].get("log_stream_offset") or 0, **wire)
    for record in records:
        sink.publish(dict(record))
    sink.close()


def confluent(schema_registry: str) -> dict[str, Any]:
    return {"wire_format": "confluent", "schema_registry": schema_registry}


def caught_up(config: dict[str, Any], group: str, topic: str) -> bool:
    offsets = committed_offsets(config, group, topic)
    return all(end == 0 or offsets[partition] == end for partition, end in end_offsets(config, topic).items())


def test_the_producer_registers_v1_0_and_v1_1_under_full_transitive(kafka_config, schema_registry, namespace, unique_run_id):
    run_id = unique_run_id()
    v1_1 = synthetic_run(run_id, 2, seed=1, unstable=False)
    v1_0 = [{k: v for k, v in record.items() if k in load_family("epoch_summary")[0].field_names} for record in v1_1]
    v1_0 = [dict(record, telemetry_version="1.0") for record in v1_0]
    publish(kafka_config, namespace, [v1_0[0], v1_1[1]], **confluent(schema_registry))
    registry = RegistryClient(schema_registry)
    subject = subject_of(namespace.epochs_topic)
    assert registry.compatibility(subject) == "FULL_TRANSITIVE"
    assert len(registry.versions(subject)) == 2
    messages = read_topic(kafka_config, namespace.epochs_topic, {run_id.encode()})
    assert [message.value()[0] for message in messages] == [0, 0]
    local = {version.version: version for version in load_family("epoch_summary")}
    for message, version in zip(messages, ("1.0", "1.1"), strict=True):
        schema_id = int.from_bytes(message.value()[1:CONFLUENT_HEADER_SIZE], "big")
        registered = schema_from_json(registry.schema(schema_id))
        assert registered.canonical_form == local[version].canonical_form
        assert message.value()[CONFLUENT_HEADER_SIZE:] == epoch_summary_codec().encode(
            v1_0[0] if version == "1.0" else dict(v1_1[1], log_stream_offset=1))[HEADER_SIZE:]
    assert read_topic(kafka_config, namespace.schemas_topic) == []  # the registry holds the schemas, not the topic
    # a second producer finds the same ids (registering again is a lookup)
    publish(kafka_config, namespace, [v1_0[1]], **confluent(schema_registry))
    assert len(registry.versions(subject)) == 2


def _changed(schema: dict[str, Any], change: str) -> dict[str, Any]:
    fields = [dict(field) for field in schema["fields"]]
    if change == "a field without a default added":
        fields.append({"name": "seed", "type": "long"})
    elif change == "a field's type narrowed":
        fields = [dict(field, type="int") if field["name"] == "global_step" else field for field in fields]
    elif change == "a required field removed":
        fields = [field for field in fields if field["name"] != "epoch"]
    elif change == "a nullable field with a default added":
        fields.append({"name": "seed", "type": ["null", "long"], "default": None})
    return dict(schema, fields=fields)


@pytest.mark.parametrize("change, compatible", [
    ("a field without a default added", False),
    ("a field's type narrowed", False),
    ("a required field removed", False),
    ("a nullable field with a default added", True),
])
def test_the_registry_and_our_own_check_refuse_the_same_schemas(schema_registry, namespace, change, compatible):
    versions = load_family("epoch_summary")
    subject = subject_of(namespace.epochs_topic)
    registry = RegistryClient(schema_registry)
    registry.set_compatibility(subject, "FULL_TRANSITIVE")
    for version in versions:
        registry.register(subject, json.dumps(version.schema))
    candidate = schema_from_json(_changed(versions[-1].schema, change), "epoch_summary", "1.2")
    ours = [message for version in versions for message in check_pair(version, candidate)]
    assert (ours == []) is compatible, ours
    assert registry.is_compatible(subject, json.dumps(candidate.schema)) is compatible
    if compatible:
        registry.register(subject, json.dumps(candidate.schema))
        assert len(registry.versions(subject)) == len(versions) + 1
    else:
        with pytest.raises(RegistryRejected) as refused:
            registry.register(subject, json.dumps(candidate.schema))
        assert refused.value.status == 409 and "\n" not in str(refused.value)
        assert len(registry.versions(subject)) == len(versions)


def test_a_plain_confluent_avro_deserializer_reads_our_records(kafka_config, schema_registry, namespace, unique_run_id):
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    run_id = unique_run_id()
    records = synthetic_run(run_id, 5, seed=2, unstable=False)
    publish(kafka_config, namespace, records, **confluent(schema_registry))
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": schema_registry}))
    context = SerializationContext(namespace.epochs_topic, MessageField.VALUE)
    read = [deserializer(message.value(), context) for message in read_topic(kafka_config, namespace.epochs_topic)]
    assert read == [dict(record, log_stream_offset=offset) for offset, record in enumerate(records)]


def test_the_three_groups_read_a_topic_holding_both_formats(
    kafka_config, kafka_bootstrap, schema_registry, consumers, namespace, unique_run_id,
):
    baseline_id, migrating_id, new_id = unique_run_id("baseline"), unique_run_id("migrating"), unique_run_id("new")
    baseline = synthetic_run(baseline_id, 12, seed=3, unstable=False)
    migrating = synthetic_run(migrating_id, 12, seed=4, unstable=True)
    new = synthetic_run(new_id, 12, seed=5, unstable=True)
    publish(kafka_config, namespace, baseline)  # single-object, as before the migration
    publish(kafka_config, namespace, [dict(r, log_stream_offset=i) for i, r in enumerate(migrating[:6])])
    publish(kafka_config, namespace, [dict(r, log_stream_offset=i + 6) for i, r in enumerate(migrating[6:])],
            **confluent(schema_registry))  # the same run, its producer restarted in the Confluent format
    publish(kafka_config, namespace, new, **confluent(schema_registry))
    keys = {run.encode() for run in (baseline_id, migrating_id, new_id)}
    messages = read_topic(kafka_config, namespace.epochs_topic, keys)
    formats = defaultdict(list)
    for message in messages:
        formats[message.key().decode()].append("confluent" if message.value()[0] == 0 else "single-object")
    assert formats[migrating_id] == ["single-object"] * 6 + ["confluent"] * 6
    assert set(formats[new_id]) == {"confluent"} and set(formats[baseline_id]) == {"single-object"}

    # what the groups must write, from the pure cores over the same records (read back with our resolver)
    resolver = SchemaResolver(registry=RegistryClient(schema_registry))
    resolver.prepare(message.value() for message in messages)
    codec = epoch_summary_codec()
    backlog = Backlog([(m.key(), codec.encode(resolver.decode(m.value()))) for m in messages],
                      [(m.partition(), m.offset()) for m in messages])
    on_topic = [resolver.decode(m.value()) for m in messages if m.key() == baseline_id.encode()]
    expected = expected_outputs(backlog, Baseline.from_records(on_topic, [baseline_id]))
    assert expected.dead == {} and expected.alerts.get(migrating_id.encode())

    common = ("--namespace", namespace.name, "--schema-registry", schema_registry)
    validator = consumers("validate", *common)
    watch = consumers("watch", *common, "--rules", str(WATCH_RULES))
    drift = consumers("drift", *common, "--idle-seconds", "1", "--baseline-run", baseline_id)
    for process, group in ((validator, namespace.validator_group), (watch, namespace.watch_group)):
        wait_for(lambda: caught_up(kafka_config, group, namespace.epochs_topic) or process.process.poll() is not None,
                 90, f"{group} to commit the runs")
    drift_codec = drift_record_codec()

    def drift_outputs(run_id: str) -> list[dict[str, Any]]:
        return [drift_codec.decode(m.value()) for m in read_topic(kafka_config, namespace.drift_topic, {run_id.encode()})]

    for run_id in (migrating_id, new_id):
        wait_for(lambda: (out := drift_outputs(run_id)) and out[-1]["kind"] == "summary"
                 and out[-1]["log_stream_offset"] == 11, 90, f"the drift summary of {run_id}'s last record")
    for process in (validator, watch, drift):
        assert process.terminate() == 0, process.log()
    assert read_topic(kafka_config, namespace.dlq_topic) == []
    alerts: dict[bytes, list[dict[str, Any]]] = defaultdict(list)
    for message in read_topic(kafka_config, namespace.alerts_topic, keys):
        alerts[message.key()].append(alert_codec().decode(message.value()))
    assert {key: alerts.get(key, []) for key in keys} == {key: expected.alerts.get(key, []) for key in keys}
    for run_id in (migrating_id, new_id):
        key = run_id.encode()
        changes = verify_drift_summaries({key: drift_outputs(run_id)}, expected.drift_summaries)
        assert changes.get(key, []) == expected.drift.get(key, [])


def test_without_a_registry_a_validator_dead_letters_confluent_records_saying_why(
    kafka_config, schema_registry, consumers, namespace, unique_run_id,
):
    run_id = unique_run_id()
    publish(kafka_config, namespace, synthetic_run(run_id, 3, seed=6, unstable=False), **confluent(schema_registry))
    validator = consumers("validate", "--namespace", namespace.name)
    wait_for(lambda: caught_up(kafka_config, namespace.validator_group, namespace.epochs_topic)
             or validator.process.poll() is not None, 90, "the validator to commit the run")
    assert validator.terminate() == 0, validator.log()
    letters = read_topic(kafka_config, namespace.dlq_topic)
    assert len(letters) == 3
    for letter in letters:
        headers = {name: value.decode() for name, value in letter.headers()}
        assert headers["error.stage"] == "decode" and headers["error.rule"] == "unknown_schema"
        assert "no Schema Registry was given (--schema-registry)" in headers["error.message"]
        assert letter.value()[0] == 0  # the original bytes, kept for a replay with a registry


def test_a_resolver_waits_for_a_registry_that_is_away_and_reads_on_when_it_answers(
    kafka_config, schema_registry, namespace, unique_run_id, tmp_path,
):
    """The registry's schemas are fetched before a batch's transaction; while it is away the batch is held
    (one line said), and a stop request ends the wait without decoding anything."""
    run_id = unique_run_id()
    publish(kafka_config, namespace, synthetic_run(run_id, 2, seed=7, unstable=False), **confluent(schema_registry))
    values = [message.value() for message in read_topic(kafka_config, namespace.epochs_topic)]
    away = f"http://127.0.0.1:{free_ports(28950, 1)}/apis/ccompat/v7"
    lines: list[str] = []
    attempts = []
    resolver = SchemaResolver(registry=RegistryClient(away, timeout=2), say=lines.append)
    assert resolver.prepare(values, stopping=lambda: attempts.append(1) or len(attempts) > 12) is False
    assert len(lines) == 1 and "not reachable" in lines[0] and "waiting" in lines[0], lines
    resolver.registry = RegistryClient(schema_registry)  # the registry is back (here: at its own address)
    assert resolver.prepare(values, stopping=lambda: False) is True
    assert [resolver.decode(value)["run_id"] for value in values] == [run_id, run_id]


def test_train_publishes_in_the_confluent_format_and_refuses_it_without_a_registry(
    kafka_bootstrap, kafka_config, schema_registry, namespace, unique_run_id, tmp_path,
):
    run_id = unique_run_id()
    base = [sys.executable, "-m", "ppo_telemetry", "train", "--env", "CartPole-v1", "--total-steps", "2048",
            "--run-id", run_id, "--kafka", kafka_bootstrap, "--namespace", namespace.name]
    refused = subprocess.run([*base, "--wire-format", "confluent"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "--schema-registry" in refused.stderr
    done = subprocess.run([*base, "--wire-format", "confluent", "--schema-registry", schema_registry],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    messages = read_topic(kafka_config, namespace.epochs_topic, {run_id.encode()})
    assert messages and all(message.value()[0] == 0 for message in messages)
    resolver = SchemaResolver(registry=RegistryClient(schema_registry))
    resolver.prepare(message.value() for message in messages)
    offsets = [resolver.decode(message.value())["log_stream_offset"] for message in messages]
    assert offsets == list(range(len(messages)))


def test_with_a_registry_a_schema_id_it_does_not_have_is_dead_lettered_and_the_rest_read(
    kafka_config, schema_registry, consumers, namespace, unique_run_id,
):
    from confluent_kafka import Producer

    from avro_schemas.codec import confluent_header

    run_id = unique_run_id()
    records = synthetic_run(run_id, 3, seed=8, unstable=False)
    publish(kafka_config, namespace, records[:2], **confluent(schema_registry))
    body = epoch_summary_codec().encode(dict(records[2], log_stream_offset=2))[HEADER_SIZE:]
    producer = Producer({**kafka_config, "enable.idempotence": True, "partitioner": "murmur2_random"})
    producer.produce(namespace.epochs_topic, key=run_id.encode(), value=confluent_header(2_000_000_000) + body)
    assert producer.flush(30) == 0
    validator = consumers("validate", "--namespace", namespace.name, "--schema-registry", schema_registry)
    wait_for(lambda: caught_up(kafka_config, namespace.validator_group, namespace.epochs_topic)
             or validator.process.poll() is not None, 90, "the validator to commit the run")
    assert validator.terminate() == 0, validator.log()
    [letter] = read_topic(kafka_config, namespace.dlq_topic)
    headers = {name: value.decode() for name, value in letter.headers()}
    assert headers["error.rule"] == "unknown_schema" and "unknown schema id 2000000000" in headers["error.message"]
    assert "2 processed, 1 rejected" in validator.log()


def test_a_producer_whose_registry_stays_away_fails_in_one_line(kafka_config, namespace, unique_run_id):
    from producer.kafka_sink import KafkaSinkError

    away = f"http://127.0.0.1:{free_ports(28960, 1)}/apis/ccompat/v7"
    sink = KafkaSink(kafka_config, namespace=namespace, wire_format="confluent", schema_registry=away, registry_wait=2)
    with pytest.raises(KafkaSinkError) as failed:
        sink.publish(synthetic_run(unique_run_id(), 1, seed=9, unstable=False)[0])
    assert "cannot register telemetry v1.1" in str(failed.value) and "not reachable" in str(failed.value)
    assert "\n" not in str(failed.value)
    assert read_topic(kafka_config, namespace.epochs_topic) == []  # nothing written unframed instead


def test_report_reads_a_confluent_run_with_the_registry_and_without_says_which_flag_is_missing(
    kafka_bootstrap, kafka_config, schema_registry, namespace, unique_run_id, tmp_path,
):
    run_id = unique_run_id()
    publish(kafka_config, namespace, synthetic_run(run_id, 6, seed=10, unstable=False), **confluent(schema_registry))
    base = [sys.executable, "-m", "ppo_telemetry", "report", "--bootstrap-servers", kafka_bootstrap,
            "--namespace", namespace.name, "--run-id", run_id]
    read = subprocess.run([*base, "--schema-registry", schema_registry, "-o", str(tmp_path / "r.html")],
                          capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr
    assert f"run {run_id}: 6 records, 0 invalid" in read.stderr
    unread = subprocess.run([*base, "-o", str(tmp_path / "u.html")], capture_output=True, text=True, timeout=120)
    assert unread.returncode == 2 and len(unread.stderr.splitlines()) == 1, unread.stderr
    assert "6 invalid" in unread.stderr and "no Schema Registry was given (--schema-registry)" in unread.stderr
