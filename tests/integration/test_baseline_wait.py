"""`consume drift --wait-for-baseline` on a real broker: a drift group started before its baseline run
exists waits (one line says so) instead of exiting, goes on once the run is on the topic and quiet, and
leaves cleanly on SIGTERM while it waits (what compose's drift service relies on, docs/deployment.md)."""

from __future__ import annotations

import uuid

import pytest

from avro_schemas.topics import Namespace
from kafka_testing import wait_for
from ppo_telemetry.demo import synthetic_run
from producer.kafka_sink import KafkaSink

pytestmark = pytest.mark.integration


def publish_run(config, namespace: Namespace, run_id: str, epochs: int = 8) -> None:
    sink = KafkaSink(config, namespace=namespace)
    for record in synthetic_run(run_id, epochs, seed=5, unstable=False):
        sink.publish(record)
    sink.close()


def test_drift_waits_on_a_fresh_broker_then_goes_on_when_the_baseline_run_arrives(
    kafka_config, consumers, unique_run_id
):
    namespace = Namespace(f"it-{uuid.uuid4().hex[:8]}-wait")  # nothing has created its topics: a fresh broker
    run_id = unique_run_id("baseline")
    drift = consumers("drift", "--namespace", namespace.name, "--baseline-run", run_id, "--wait-for-baseline",
                      "--idle-seconds", "1")
    wait_for(lambda: "waiting for baseline run" in drift.log() or drift.process.poll() is not None, 60,
             "the drift group to say it waits")
    assert drift.process.poll() is None, drift.log()
    waiting = [line for line in drift.log().splitlines() if "waiting for baseline run" in line]
    assert len(waiting) == 1 and run_id in waiting[0] and namespace.epochs_topic in waiting[0], drift.log()
    assert "assigned partitions" not in drift.log()

    publish_run(kafka_config, namespace, run_id)
    wait_for(lambda: "has arrived: 8 records" in drift.log() or drift.process.poll() is not None, 60,
             "the drift group to take the baseline run")
    drift.wait_assigned()
    assert f"consuming {namespace.epochs_topic} as {namespace.drift_group}" in drift.log()
    assert len([line for line in drift.log().splitlines() if "waiting for baseline run" in line]) == 1
    assert drift.terminate() == 0, drift.log()
    assert "Traceback" not in drift.log()


def test_drift_stops_cleanly_on_sigterm_while_it_waits(kafka_config, consumers, unique_run_id):
    namespace = Namespace(f"it-{uuid.uuid4().hex[:8]}-stop")
    KafkaSink(kafka_config, namespace=namespace).close()  # the topics exist, without the baseline run
    publish_run(kafka_config, namespace, unique_run_id("other"))
    drift = consumers("drift", "--namespace", namespace.name, "--baseline-run", unique_run_id("missing"),
                      "--wait-for-baseline")
    wait_for(lambda: "waiting for baseline run" in drift.log() or drift.process.poll() is not None, 60,
             "the drift group to say it waits")
    assert drift.terminate() == 0, drift.log()
    log = drift.log()
    assert "stopped while waiting for the baseline" in log and "Traceback" not in log, log
    assert "assigned partitions" not in log
