"""`ppo-telemetry report --bootstrap-servers B --run-id R` on a real broker: the run read from the epochs
topic of a namespace to its end gives the report the same records give from NDJSON; baseline runs named
with `--baseline-run` come from the topic too, and without them those the drift group compared the run
with (so the page shows the group's verdicts); an undecodable message of the run is counted; a missing
run or topic is one line and exit 2."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from kafka_testing import committed_offsets, end_offsets, read_topic, wait_for

from avro_schemas.codec import drift_record_codec, epoch_summary_codec
from avro_schemas.topics import Namespace
from consumers.telemetry_watch import load_rules
from consumers.validator import Validator
from ppo_telemetry.cli import main
from ppo_telemetry.demo import synthetic_run
from ppo_telemetry.report import gather_report
from producer.kafka_sink import KafkaSink

pytestmark = pytest.mark.integration

WATCH_RULES = Path(__file__).with_name("watch_rules.toml")


def embedded_data(page: str) -> dict:
    match = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


def publish(config, namespace: Namespace, records: list[dict]) -> None:
    sink = KafkaSink(config, namespace=namespace)
    for record in records:
        sink.publish(dict(record))
    sink.close()


def produce_raw(config, topic: str, key: str, values: list[bytes]) -> None:
    # the sink's (Java's) partitioner: a re-sent record lands on its run's partition, after the original
    producer = Producer({**config, "enable.idempotence": True, "partitioner": "murmur2_random"})
    for value in values:
        producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(60) == 0


def test_report_from_kafka_is_the_report_of_the_same_records(kafka_bootstrap, kafka_config, unique_run_id, tmp_path,
                                                             capsys):
    namespace = Namespace(f"it-{uuid.uuid4().hex[:8]}-report")
    run_id, base_a, base_b, other = (unique_run_id(tag) for tag in ("current", "base-a", "base-b", "other"))
    current = synthetic_run(run_id, 40, seed=3, unstable=True)
    baseline = synthetic_run(base_a, 40, seed=1, unstable=False) + synthetic_run(base_b, 40, seed=2, unstable=False)
    publish(kafka_config, namespace, current + baseline + synthetic_run(other, 10, seed=4, unstable=False))
    # the run's own broken messages: one that does not decode, one re-sent record (a duplicate)
    produce_raw(kafka_config, namespace.epochs_topic, run_id,
                [b"\xc3\x01not avro", epoch_summary_codec().encode(current[5])])
    out = tmp_path / "report.html"

    code = main(["report", "--bootstrap-servers", kafka_bootstrap, "--namespace", namespace.name, "--run-id", run_id,
                 "--baseline-run", base_a, "--baseline-run", base_b, "--rules", str(WATCH_RULES), "-o", str(out)])

    assert code == 0, capsys.readouterr().err
    data = embedded_data(out.read_text())
    validator = Validator()
    expected = gather_report([(f"line {i}", validator.validate(dict(r))) for i, r in enumerate(current)], baseline,
                             rules=load_rules(WATCH_RULES))
    assert data["run_id"] == run_id and data["records"] == 40
    for key in ("metrics", "alerts", "drift"):
        assert data[key] == expected[key], key
    assert data["alerts"] and data["drift"]["baseline_run_ids"] == [base_a, base_b]
    validity = data["validity"]
    assert (validity["valid"], validity["invalid"], validity["duplicate"]) == (40, 1, 1)
    assert validity["invalid_by_rule"] == {"decode": 1}
    assert validity["examples"][0]["where"].startswith("partition ")
    assert namespace.epochs_topic in data["source"]


def test_without_baseline_runs_the_baseline_is_the_drift_groups_and_the_watch_groups_alerts_are_compared(
    kafka_bootstrap, kafka_config, consumers, unique_run_id, tmp_path, capsys
):
    namespace = Namespace(f"it-{uuid.uuid4().hex[:8]}-report")
    run_id, base_a, base_b = (unique_run_id(tag) for tag in ("current", "base-a", "base-b"))
    publish(kafka_config, namespace, synthetic_run(base_a, 40, seed=1, unstable=False)
            + synthetic_run(base_b, 40, seed=2, unstable=False))
    drift = consumers("drift", "--namespace", namespace.name, "--baseline-run", base_a, "--baseline-run", base_b,
                      "--idle-seconds", "1")
    watch = consumers("watch", "--namespace", namespace.name, "--rules", str(WATCH_RULES))
    drift.wait_assigned()
    watch.wait_assigned()
    current = synthetic_run(run_id, 40, seed=3, unstable=True)
    publish(kafka_config, namespace, current)
    codec = drift_record_codec()

    def summary():
        records = [codec.decode(m.value()) for m in read_topic(kafka_config, namespace.drift_topic, {run_id.encode()})]
        return next((r for r in reversed(records) if r["kind"] == "summary"), None)

    written = wait_for(summary, 120, "the drift group's summary of the run")
    assert drift.terminate() == 0, drift.log()
    wait_for(lambda: caught_up(kafka_config, namespace.watch_group, namespace.epochs_topic), 120,
             "the watch group to read the run to its end")
    assert watch.terminate() == 0, watch.log()
    out = tmp_path / "report.html"

    code = main(["report", "--bootstrap-servers", kafka_bootstrap, "--namespace", namespace.name, "--run-id", run_id,
                 "--rules", str(WATCH_RULES), "-o", str(out)])

    assert code == 0, capsys.readouterr().err
    page = out.read_text()
    data = embedded_data(page)
    assert data["alerts"] and data["alerts_written"]["agree"], data["alerts_written"]
    assert 'id="alerts-written" data-agree="true"' in page
    assert data["drift"]["baseline_run_ids"] == [base_a, base_b] == written["baseline_run_ids"]
    assert data["drift"]["fields"] == written["fields"]
    assert all(metric["band"] for metric in data["metrics"])


def caught_up(config, group: str, topic: str) -> bool:
    """Whether `group` has committed every message of `topic` (a partition without messages has none)."""
    offsets = committed_offsets(config, group, topic)
    return all(end == 0 or offsets.get(p) == end for p, end in end_offsets(config, topic).items())


def test_a_run_not_on_the_topic_is_one_line_exit_2(kafka_bootstrap, kafka_config, unique_run_id, tmp_path, capsys):
    namespace = Namespace(f"it-{uuid.uuid4().hex[:8]}-report")
    present = unique_run_id("present")
    publish(kafka_config, namespace, synthetic_run(present, 8, seed=1, unstable=False))
    missing = unique_run_id("missing")

    code = main(["report", "--bootstrap-servers", kafka_bootstrap, "--namespace", namespace.name, "--run-id", missing,
                 "-o", str(tmp_path / "report.html")])

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and missing in err and present in err
    assert not (tmp_path / "report.html").exists()


def test_a_namespace_without_an_epochs_topic_is_one_line_exit_2(kafka_bootstrap, tmp_path, capsys):
    namespace = Namespace(f"it-{uuid.uuid4().hex[:8]}-empty")

    code = main(["report", "--bootstrap-servers", kafka_bootstrap, "--namespace", namespace.name, "--run-id", "any",
                 "-o", str(tmp_path / "report.html")])

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err and namespace.epochs_topic in err
