"""stable-baselines3 to Kafka (issue 10): PPO runs with `TelemetryCallback` publish to a namespace of their
own; the validator, drift and watch groups consume them with nothing dead-lettered, each writing what
its pure core computes for the same records."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from stable_baselines3 import PPO

from avro_schemas.codec import alert_codec, drift_record_codec, epoch_summary_codec
from avro_schemas.ndjson import iter_segment_lines
from avro_schemas.topics import Namespace
from consumers.drift import Baseline
from exactly_once import WATCH_RULES, Backlog, expected_outputs, verify_drift_summaries
from kafka_testing import committed_offsets, end_offsets, read_topic, wait_for
from ppo_telemetry.integrations.sb3 import TelemetryCallback

pytestmark = pytest.mark.integration

ROLLOUTS, EPOCHS = 4, 3


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def caught_up(config: dict[str, Any], group: str, topic: str) -> bool:
    """Whether `group` has committed every message of `topic`."""
    offsets = committed_offsets(config, group, topic)
    return all(end == 0 or offsets[partition] == end for partition, end in end_offsets(config, topic).items())


def test_an_sb3_run_is_consumed_by_the_three_groups_with_nothing_dead_lettered(
    kafka_bootstrap, kafka_config, consumers, unique_run_id, tmp_path
):
    namespace = Namespace(f"sb3-{uuid.uuid4().hex[:8]}")
    baseline_id, run_id = unique_run_id("baseline"), unique_run_id("run")
    for seed, each_run in enumerate((baseline_id, run_id)):
        model = PPO("MlpPolicy", "CartPole-v1", n_steps=128, batch_size=64, n_epochs=EPOCHS, seed=seed, device="cpu")
        callback = TelemetryCallback(
            ndjson_dir=tmp_path / each_run, kafka=kafka_bootstrap, run_id=each_run, namespace=namespace.name
        )
        model.learn(ROLLOUTS * 128, callback=callback)

    keys = {baseline_id.encode(), run_id.encode()}
    messages = read_topic(kafka_config, namespace.epochs_topic, keys)
    codec = epoch_summary_codec()
    on_topic: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for message in messages:
        on_topic[message.key().decode()].append(codec.decode(message.value()))
    for each_run in (baseline_id, run_id):  # the same records as the NDJSON stream, offsets and all
        stream = [json.loads(line) for line in iter_segment_lines(tmp_path / each_run)]
        assert len(stream) == ROLLOUTS * EPOCHS
        assert on_topic[each_run] == stream

    validator = consumers("validate", "--namespace", namespace.name)
    watch = consumers("watch", "--namespace", namespace.name, "--rules", str(WATCH_RULES))
    drift = consumers("drift", "--namespace", namespace.name, "--idle-seconds", "1", "--baseline-run", baseline_id)
    backlog = Backlog(
        [(message.key(), message.value()) for message in messages],
        [(message.partition(), message.offset()) for message in messages],
    )
    expected = expected_outputs(backlog, Baseline.from_records(on_topic[baseline_id], [baseline_id]))
    assert expected.dead == {}

    for process, group in ((validator, namespace.validator_group), (watch, namespace.watch_group)):
        wait_for(lambda: caught_up(kafka_config, group, namespace.epochs_topic) or process.process.poll() is not None,
                 90, f"{group} to commit the runs")
    drift_codec = drift_record_codec()
    last_offset = on_topic[run_id][-1]["log_stream_offset"]

    def drift_outputs() -> list[dict[str, Any]]:
        return [drift_codec.decode(m.value()) for m in read_topic(kafka_config, namespace.drift_topic, {run_id.encode()})]

    wait_for(lambda: (out := drift_outputs()) and out[-1]["kind"] == "summary" and out[-1]["log_stream_offset"] == last_offset,
             90, "the drift summary of the run's last record")
    for process in (validator, watch, drift):
        assert process.terminate() == 0, process.log()

    assert read_topic(kafka_config, namespace.dlq_topic) == []
    alerts: dict[bytes, list[dict[str, Any]]] = defaultdict(list)
    for message in read_topic(kafka_config, namespace.alerts_topic, keys):
        alerts[message.key()].append(alert_codec().decode(message.value()))
    assert {key: alerts.get(key, []) for key in keys} == {key: expected.alerts.get(key, []) for key in keys}
    changes = verify_drift_summaries({run_id.encode(): drift_outputs()}, expected.drift_summaries)
    assert changes.get(run_id.encode(), []) == expected.drift.get(run_id.encode(), [])
    assert read_topic(kafka_config, namespace.drift_topic, {baseline_id.encode()}) == []  # not compared with itself
