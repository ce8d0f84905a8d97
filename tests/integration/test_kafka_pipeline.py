"""The Kafka bus end to end on a real broker: publisher, schema topic, the three consumer groups."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer

from avro_schemas.codec import alert_codec, drift_record_codec, epoch_summary_codec
from avro_schemas.models import EpochSummary
from avro_schemas.registry import load_family
from avro_schemas.topics import (
    ALERTS_TOPIC, DLQ_TOPIC, DRIFT_TOPIC, EPOCHS_TOPIC, SCHEMAS_TOPIC, VERSION_HEADER,
)
from kafka_testing import read_topic, wait_for
from consumers.drift import Baseline, DriftTracker
from consumers.telemetry_watch import Watch, load_rules
from ppo_telemetry.demo import synthetic_run
from producer.kafka_sink import KafkaSink, KafkaSinkError, ensure_topics

pytestmark = pytest.mark.integration

# fast alert rules (short warm-ups and holds): transitions within 30-epoch synthetic runs
WATCH_RULES = Path(__file__).with_name("watch_rules.toml")


def publish(config, records):
    sink = KafkaSink(config)
    for record in records:
        sink.publish(dict(record))
    sink.close()
    return sink


def raw_producer(config) -> Producer:
    return Producer({**config, "enable.idempotence": True, "partitioner": "murmur2_random"})


# ------------------------------------------------------------------------------------ publisher


def test_publisher_keys_by_run_id_sets_the_version_header_and_sends_its_schema_first(kafka_config, unique_run_id):
    run_id = unique_run_id()
    records = synthetic_run(run_id, 12, seed=1, unstable=False)
    records[3] = {k: v for k, v in records[3].items()}
    publish(kafka_config, records)

    messages = read_topic(kafka_config, EPOCHS_TOPIC, {run_id.encode()})
    assert len(messages) == 12
    assert len({m.partition() for m in messages}) == 1  # one run, one partition, in order
    codec = epoch_summary_codec()
    decoded = [codec.decode(m.value()) for m in messages]
    assert [r["epoch"] for r in decoded] == list(range(12))
    assert decoded == records
    assert all(dict(m.headers())[VERSION_HEADER] == b"1.1" for m in messages)

    v1_1 = load_family("epoch_summary")[-1]
    schemas = {m.key(): m for m in read_topic(kafka_config, SCHEMAS_TOPIC)}
    schema_message = schemas[v1_1.fingerprint_hex.encode()]
    assert json.loads(schema_message.value()) == v1_1.schema
    # delivered (flushed) before the first record was produced
    assert schema_message.timestamp()[1] <= min(m.timestamp()[1] for m in messages)


def test_publisher_numbers_v1_1_records_without_an_offset_and_writes_v1_0_with_its_own_schema(kafka_config, unique_run_id):
    run_id = unique_run_id()
    records = synthetic_run(run_id, 3, seed=2, unstable=False)
    for record in records:
        record["log_stream_offset"] = None
    old = {k: v for k, v in records[0].items() if k in EpochSummary.__dataclass_fields__}
    old = {k: old[k] for k in load_family("epoch_summary")[0].field_names}
    old["telemetry_version"] = "1.0"
    sink = KafkaSink(kafka_config, first_offset=40)
    for record in records:
        sink.publish(record)
    sink.publish(old)
    sink.close()
    assert [r["log_stream_offset"] for r in records] == [40, 41, 42]
    messages = read_topic(kafka_config, EPOCHS_TOPIC, {run_id.encode()})
    assert [dict(m.headers())[VERSION_HEADER] for m in messages] == [b"1.1"] * 3 + [b"1.0"]
    assert epoch_summary_codec().decode(messages[-1].value()) == old


def test_the_first_delivery_failure_is_raised_on_the_next_flush_and_every_later_call(kafka_config, unique_run_id):
    topic = f"ppo.telemetry.test.{unique_run_id('tiny')}"
    ensure_topics(kafka_config, {topic: (1, {"max.message.bytes": "100"})})  # every record is too large
    sink = KafkaSink(kafka_config, topic=topic)
    sink.publish(synthetic_run(unique_run_id(), 1, seed=3, unstable=False)[0])
    with pytest.raises(KafkaSinkError, match="not delivered"):
        sink.flush()
    with pytest.raises(KafkaSinkError, match="not delivered"):
        sink.publish(synthetic_run(unique_run_id(), 1, seed=3, unstable=False)[0])
    with pytest.raises(KafkaSinkError, match="not delivered"):
        sink.close()


def test_an_unreachable_broker_is_one_line_error():
    with pytest.raises(KafkaSinkError) as caught:
        KafkaSink({"bootstrap.servers": "127.0.0.1:1", "socket.connection.setup.timeout.ms": 1000}, partitions=1,
                  setup_timeout=3)
    assert "cannot reach Kafka" in str(caught.value) and "\n" not in str(caught.value)


def test_train_publishes_to_kafka_and_ndjson_with_the_same_offsets(kafka_bootstrap, kafka_config, unique_run_id, tmp_path):
    run_id = unique_run_id()
    proc = subprocess.run(
        [sys.executable, "-m", "ppo_telemetry", "train", "--env", "Conflict-v0", "--total-steps", "1024",
         "--run-id", run_id, "--kafka", kafka_bootstrap, "--ndjson-dir", str(tmp_path / "stream")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for p in sorted((tmp_path / "stream").iterdir()) for line in p.read_text().splitlines()]
    messages = read_topic(kafka_config, EPOCHS_TOPIC, {run_id.encode()})
    decoded = [epoch_summary_codec().decode(m.value()) for m in messages]
    assert len(decoded) == len(lines) > 0
    assert decoded == lines  # same records, same log_stream_offset


# ------------------------------------------------------------------------------------ validator


def test_validator_dead_letters_bad_records_once_with_the_spec_headers(kafka_bootstrap, kafka_config, consumers, unique_run_id):
    run_id = unique_run_id()
    records = synthetic_run(run_id, 6, seed=4, unstable=False)
    codec = epoch_summary_codec()
    invalid = dict(records[4], policy_loss=math.nan)  # encodes fine, breaks a SPEC §2 rule
    producer = raw_producer(kafka_config)
    key = run_id.encode()
    payloads = [codec.encode(r) for r in records[:4]]
    payloads += [b"\x07garbage", codec.encode(invalid), codec.encode(records[5]), codec.encode(records[2])]  # + a re-send
    publish(kafka_config, [])  # topics exist
    for payload in payloads:
        producer.produce(EPOCHS_TOPIC, key=key, value=payload, headers=[(VERSION_HEADER, b"1.1")])
    producer.flush(30)

    validator = consumers("validate")
    dead = wait_for(lambda: len(read_topic(kafka_config, DLQ_TOPIC, {key})) >= 2 and read_topic(kafka_config, DLQ_TOPIC, {key}),
                    90, "two dead letters")
    assert validator.terminate() == 0
    dead = read_topic(kafka_config, DLQ_TOPIC, {key})
    assert len(dead) == 2
    first, second = (dict(m.headers()) for m in dead)
    assert dead[0].value() == b"\x07garbage" and dead[1].value() == payloads[5]
    assert first["error.stage"] == b"decode" and first["error.rule"] == b"wrong_header"
    assert second["error.stage"] == b"validate" and b"policy_loss" in second["error.message"]
    for headers in (first, second):
        assert headers["source.topic"] == EPOCHS_TOPIC.encode()
        assert {"error.message", "source.partition", "source.offset"} <= set(headers)
    assert int(first["source.offset"]) + 1 == int(second["source.offset"])

    # restarted, it resumes after its committed offsets: nothing is dead-lettered twice
    again = consumers("validate")
    again.wait_assigned()
    producer.produce(EPOCHS_TOPIC, key=key, value=b"\x01more garbage")
    producer.flush(30)
    wait_for(lambda: len(read_topic(kafka_config, DLQ_TOPIC, {key})) >= 3, 90, "the third dead letter")
    assert again.terminate() == 0
    assert [m.value() for m in read_topic(kafka_config, DLQ_TOPIC, {key})][2:] == [b"\x01more garbage"]
    assert "stopped after" in again.log()


# ------------------------------------------------------------------------------------ watch


def test_watch_alerts_once_per_transition_and_its_rule_state_survives_a_restart(kafka_config, consumers, unique_run_id):
    run_id = unique_run_id()
    records = synthetic_run(run_id, 30, seed=5, unstable=True)
    expected_watch = Watch(load_rules(WATCH_RULES))
    expected = [t.to_avro_dict() for r in records for t in expected_watch.observe(EpochSummary.from_dict(r))]
    assert len(expected) >= 4

    publish(kafka_config, records[:15])
    watch = consumers("watch", "--rules", str(WATCH_RULES))
    key = run_id.encode()
    decode = alert_codec().decode
    first_half = [t for t in expected if t["epoch"] < 15]
    wait_for(lambda: len(read_topic(kafka_config, ALERTS_TOPIC, {key})) >= len(first_half), 90, "the first alerts")
    assert watch.terminate() == 0  # SIGTERM: finishes its batch, commits, leaves

    publish(kafka_config, records[10:])  # records 10-14 re-sent: duplicates by log_stream_offset
    watch = consumers("watch", "--rules", str(WATCH_RULES))
    wait_for(lambda: len(read_topic(kafka_config, ALERTS_TOPIC, {key})) >= len(expected), 90, "all alerts")
    assert watch.terminate() == 0
    got = [decode(m.value()) for m in read_topic(kafka_config, ALERTS_TOPIC, {key})]
    assert got == expected


# ------------------------------------------------------------------------------------ drift


@pytest.mark.parametrize("baseline_from", ["topic", "file"])
def test_drift_emits_verdict_changes_and_a_summary_once_the_run_is_idle(
    kafka_config, consumers, unique_run_id, tmp_path, baseline_from
):
    baseline_ids, current_id = [unique_run_id("base"), unique_run_id("base")], unique_run_id("cur")
    baseline = [r for seed, run_id in enumerate(baseline_ids) for r in synthetic_run(run_id, 60, seed=6 + seed, unstable=False)]
    current = synthetic_run(current_id, 70, seed=8, unstable=True)  # steps beyond the baseline's are not compared
    publish(kafka_config, baseline + current)
    if baseline_from == "topic":
        drift = consumers("drift", "--idle-seconds", "1", *(a for run_id in baseline_ids for a in ("--baseline-run", run_id)))
    else:
        path = tmp_path / "baseline.ndjson"
        path.write_text("".join(json.dumps(r) + "\n" for r in baseline))
        drift = consumers("drift", "--idle-seconds", "1", "--baseline", str(path))
    key = current_id.encode()
    codec = drift_record_codec()

    def outputs() -> list[dict]:
        return [codec.decode(m.value()) for m in read_topic(kafka_config, DRIFT_TOPIC, {key})]

    def summary_out() -> bool:
        try:
            return any(r["kind"] == "summary" for r in outputs())
        except KafkaException:  # the drift topic, just created by the group, may not have its leaders yet
            return False

    wait_for(summary_out, 90, "the idle summary")
    assert drift.terminate() == 0
    tracker = DriftTracker(Baseline.from_records(baseline))
    changes = [c.to_record_dict() for r in current if (c := tracker.observe(r)) is not None]
    summary = tracker.summary(current_id).to_record_dict("summary")
    assert summary["fields"]["batch_entropy_mean"]["verdict"] == "differs"  # the unstable run's collapse
    assert outputs() == changes + [summary]  # one per verdict change, then one summary: not one per epoch
    assert len(changes) < len(current) / 10
    for run_id in baseline_ids:
        assert read_topic(kafka_config, DRIFT_TOPIC, {run_id.encode()}) == []  # not compared with themselves


def test_drift_needs_a_baseline_and_an_absent_baseline_run_is_one_line(kafka_bootstrap, unique_run_id):
    base = [sys.executable, "-m", "ppo_telemetry", "consume", "drift", "--bootstrap-servers", kafka_bootstrap]
    for extra, message in (([], "needs --baseline"), (["--baseline-run", unique_run_id("nobody")], "not found")):
        proc = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ------------------------------------------------------------------------------------ schemas


def test_a_consumer_without_the_writer_schema_fetches_it_from_the_schema_topic(kafka_config, consumers, unique_run_id):
    # a newer producer's schema: v1.1 plus a field this consumer's code has never seen
    v1_1 = load_family("epoch_summary")[-1].schema
    newer = dict(v1_1, fields=v1_1["fields"] + [{"name": "host", "type": ["null", "string"], "default": None}])
    from avro_schemas.codec import SingleObjectCodec
    from avro_schemas.registry import schema_from_json

    writer = schema_from_json(newer, "epoch_summary", "1.2")
    codec = SingleObjectCodec([writer], version_field=None)
    run_id = unique_run_id()
    records = synthetic_run(run_id, 30, seed=8, unstable=True)
    producer = raw_producer(kafka_config)
    publish(kafka_config, [])
    producer.produce(SCHEMAS_TOPIC, key=writer.fingerprint_hex.encode(), value=json.dumps(newer).encode())
    for record in records:
        producer.produce(EPOCHS_TOPIC, key=run_id.encode(), value=codec.encode(dict(record, host="node-7")))
    producer.flush(30)

    expected_watch = Watch(load_rules(WATCH_RULES))
    expected = [t.to_avro_dict() for r in records for t in expected_watch.observe(EpochSummary.from_dict(r))]
    watch = consumers("watch", "--rules", str(WATCH_RULES))
    key = run_id.encode()
    wait_for(lambda: len(read_topic(kafka_config, ALERTS_TOPIC, {key})) >= len(expected), 90, "the alerts")
    assert watch.terminate() == 0
    assert [alert_codec().decode(m.value()) for m in read_topic(kafka_config, ALERTS_TOPIC, {key})] == expected
