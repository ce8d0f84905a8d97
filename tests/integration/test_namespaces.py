"""Namespaces on one real broker (issue 9): what is published in one namespace is consumed only by its own
groups, and running them moves no committed offset of the default groups."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer

from avro_schemas.topics import DLQ_TOPIC, EPOCHS_TOPIC, Namespace
from kafka_testing import committed_offsets, default_group_offsets, end_offsets, read_topic, wait_for
from ppo_telemetry.demo import synthetic_run
from producer.kafka_sink import KafkaSink

pytestmark = pytest.mark.integration


def caught_up(config: dict[str, Any], namespace: Namespace) -> bool:
    """Whether the namespace's validator has committed every message of its epochs topic (a partition
    without messages has no committed offset)."""
    offsets = committed_offsets(config, namespace.validator_group, namespace.epochs_topic)
    return all(end == 0 or offsets[p] == end for p, end in end_offsets(config, namespace.epochs_topic).items())


def publish_run_and_garbage(config: dict[str, Any], namespace: Namespace, run_id: str) -> None:
    """Six valid records of `run_id` and one undecodable message with its key, in `namespace`."""
    sink = KafkaSink(config, namespace=namespace)
    for record in synthetic_run(run_id, 6, seed=3, unstable=False):
        sink.publish(record)
    sink.close()
    producer = Producer({**config, "enable.idempotence": True, "partitioner": "murmur2_random"})
    producer.produce(namespace.epochs_topic, key=run_id.encode(), value=b"\x00not avro")
    producer.flush(30)


def test_two_namespaces_on_one_broker_consume_only_their_own_records(kafka_config, consumers, unique_run_id):
    tag = uuid.uuid4().hex[:8]
    first, second = Namespace(f"it-{tag}-first"), Namespace(f"it-{tag}-second")
    KafkaSink(kafka_config).close()  # the default topics exist, as on a broker in use
    before = default_group_offsets(kafka_config)
    run_ids = {first: unique_run_id("first"), second: unique_run_id("second")}
    for namespace, run_id in run_ids.items():
        publish_run_and_garbage(kafka_config, namespace, run_id)
    # and a message on the default topic that a group of either namespace would dead-letter if it read it
    stray = unique_run_id("default")
    producer = Producer(kafka_config)
    producer.produce(EPOCHS_TOPIC, key=stray.encode(), value=b"\x00not avro either")
    producer.flush(30)

    validators = {namespace: consumers("validate", "--namespace", namespace.name) for namespace in run_ids}
    for namespace, validator in validators.items():
        wait_for(lambda: caught_up(kafka_config, namespace) or validator.process.poll() is not None, 90,
                 f"the validator of {namespace.name} to commit its topic")
    for validator in validators.values():
        assert validator.terminate() == 0, validator.log()

    all_keys = {run_id.encode() for run_id in run_ids.values()} | {stray.encode()}
    for namespace, run_id in run_ids.items():
        log = validators[namespace].log()
        assert f"consuming {namespace.epochs_topic} as {namespace.validator_group}" in log, log
        dead = read_topic(kafka_config, namespace.dlq_topic)
        assert [(m.key(), m.value()) for m in dead] == [(run_id.encode(), b"\x00not avro")]
        assert dict(dead[0].headers())["source.topic"] == namespace.epochs_topic.encode()
        other = second if namespace is first else first
        # the other namespace's group never read this namespace's topic
        assert all(offset < 0 for offset in committed_offsets(kafka_config, other.validator_group, namespace.epochs_topic).values())
    assert read_topic(kafka_config, DLQ_TOPIC, all_keys) == []
    assert default_group_offsets(kafka_config) == before


def test_train_publishes_to_the_namespace_of_the_environment(kafka_bootstrap, kafka_config, unique_run_id):
    namespace = Namespace(f"it-{uuid.uuid4().hex[:8]}-train")
    run_id = unique_run_id()
    proc = subprocess.run(
        [sys.executable, "-m", "ppo_telemetry", "train", "--env", "Conflict-v0", "--total-steps", "1024",
         "--run-id", run_id, "--kafka", kafka_bootstrap],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PPO_TELEMETRY_NAMESPACE": namespace.name},
    )
    assert proc.returncode == 0, proc.stderr
    assert len(read_topic(kafka_config, namespace.epochs_topic, {run_id.encode()})) > 0
    assert len(read_topic(kafka_config, namespace.schemas_topic)) >= 1
    assert read_topic(kafka_config, EPOCHS_TOPIC, {run_id.encode()}) == []


def test_consume_drift_reads_its_baseline_run_from_its_own_namespace(kafka_bootstrap, kafka_config, consumers, unique_run_id):
    home, elsewhere = Namespace(f"it-{uuid.uuid4().hex[:8]}-home"), Namespace(f"it-{uuid.uuid4().hex[:8]}-away")
    run_id = unique_run_id("baseline")
    publish_run_and_garbage(kafka_config, home, run_id)
    KafkaSink(kafka_config, namespace=elsewhere).close()  # its topics exist, without the run
    proc = subprocess.run(
        [sys.executable, "-m", "ppo_telemetry", "consume", "drift", "--bootstrap-servers", kafka_bootstrap,
         "--namespace", elsewhere.name, "--baseline-run", run_id],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and f"not found on {elsewhere.epochs_topic}" in proc.stderr, proc.stderr
    drift = consumers("drift", "--namespace", home.name, "--baseline-run", run_id)
    drift.wait_assigned()
    assert f"consuming {home.epochs_topic} as {home.drift_group}" in drift.log()
    assert drift.terminate() == 0, drift.log()
