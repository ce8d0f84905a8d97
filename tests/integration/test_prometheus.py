"""The consumers' metrics scraped by a real Prometheus server (SPEC §10, issue 11 item 1).

`consume validate`, `drift` and `watch` run with `--metrics-port` in a namespace of the test's own (so
what they count is what the test produced); a Prometheus (Debian package `prometheus`) scrapes them every
second, and the test asks Prometheus's HTTP API (`/api/v1/query`) until the values it expects appear.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from kafka_testing import free_ports, wait_for
from prometheus_client.parser import text_string_to_metric_families

from avro_schemas.codec import epoch_summary_codec
from avro_schemas.models import EpochSummary
from avro_schemas.topics import VERSION_HEADER, Namespace
from consumers.groups import ValidatorGroup
from consumers.telemetry_watch import Watch, load_rules
from ppo_telemetry.demo import synthetic_run
from producer.kafka_sink import KafkaSink

pytestmark = pytest.mark.integration

WATCH_RULES = Path(__file__).with_name("watch_rules.toml")
METRIC_NAMES = {  # common11.md's, less the Alertmanager poster's
    "ppo_telemetry_records_total", "ppo_telemetry_dead_letters_total", "ppo_telemetry_transaction_duration_seconds",
    "ppo_telemetry_consumer_lag_records", "ppo_telemetry_consumer_lag_seconds", "ppo_telemetry_alerts_firing",
    "ppo_telemetry_alert_transitions_total", "ppo_telemetry_last_record_timestamp_seconds",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


class Prometheus:
    """A Prometheus server scraping `targets` (job name -> host:port) every second, data in `home`."""

    def __init__(self, program: str, home: Path, targets: dict[str, str], port: int) -> None:
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: ['{address}']\n"
            for job, address in targets.items()
        )
        config = home / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}")
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = home / "prometheus.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [program, f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, 60, "Prometheus to be ready")

    def _ready(self) -> bool:
        assert self.process.poll() is None, self.log_path.read_text()
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, expression: str) -> dict[tuple[tuple[str, str], ...], float]:
        """The instant vector of `expression`: its series' labels (no job, instance) -> value."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return {
            tuple(sorted((k, v) for k, v in series["metric"].items() if k not in ("job", "instance"))):
                float(series["value"][1])
            for series in body["data"]["result"]
        }

    def values(self, expression: str, label: str) -> dict[str, float]:
        """`query`, each series named by one of its labels."""
        return {dict(labels).get(label, ""): value for labels, value in self.query(expression).items()}

    def wait_values(self, expression: str, label: str, expected: dict[str, float], what: str) -> None:
        """Ask `values(expression, label)` until it is `expected` (60 s at most: scraped every second)."""
        wait_for(lambda: self.values(expression, label) == expected, 60, what)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
        self._log.close()


@pytest.fixture
def prometheus(system_program: Callable[[str, str], str], tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """Start a Prometheus scraping the given targets; stopped at the end."""
    program = system_program("prometheus", "prometheus")
    started: list[Prometheus] = []

    def start(targets: dict[str, str], port: int) -> Prometheus:
        home = tmp_path / f"prometheus-{len(started)}"
        home.mkdir()
        server = Prometheus(program, home, targets, port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def metrics_page(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def family_names(page: str) -> set[str]:
    """The metric name of every sample on an exposition page (a histogram's suffixes taken off)."""
    names = set()
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            suffix = next((s for s in HISTOGRAM_SUFFIXES if family.type == "histogram" and sample.name.endswith(s)), "")
            names.add(sample.name[: len(sample.name) - len(suffix)])
    return names


def publish(config: dict[str, Any], namespace: Namespace, run_id: str) -> tuple[list[dict], dict[str, int]]:
    """A run of 30 records that makes the fast watch rules fire and resolve, then an undecodable message,
    an invalid record and a re-sent one (a duplicate). The records, and the dead letters expected by rule."""
    records = synthetic_run(run_id, 30, seed=5, unstable=True)
    sink = KafkaSink(config, namespace=namespace)
    for record in records:
        sink.publish(dict(record))
    sink.close()
    codec = epoch_summary_codec()
    producer = Producer({**config, "enable.idempotence": True, "partitioner": "murmur2_random"})
    key, headers = run_id.encode(), [(VERSION_HEADER, b"1.1")]
    for value in (b"\x07garbage", codec.encode(dict(records[4], policy_loss=math.nan)), codec.encode(records[2])):
        producer.produce(namespace.epochs_topic, key=key, value=value, headers=headers)
    assert producer.flush(30) == 0
    return records, {"wrong_header": 1, "finite": 1}


def expected_alerts(records: list[dict]) -> tuple[dict[tuple[str, str, str], int], set[tuple[str, str]]]:
    """What the watch group should report: transitions by (rule, severity, state), and (rule, severity) of
    the rules firing at the end."""
    watch = Watch(load_rules(WATCH_RULES))
    transitions: dict[tuple[str, str, str], int] = {}
    last: dict[tuple[str, str], str] = {}
    for record in records:
        for t in watch.observe(EpochSummary.from_dict(record)):
            transitions[(t.rule, t.severity, t.state)] = transitions.get((t.rule, t.severity, t.state), 0) + 1
            last[(t.rule, t.severity)] = t.state
    return transitions, {rule for rule, state in last.items() if state == "firing"}


def test_prometheus_scrapes_every_metric_of_the_three_groups(
    kafka_config, consumers, prometheus, unique_run_id, tmp_path
):
    namespace, run_id = Namespace(f"it-{uuid.uuid4().hex[:8]}-prom"), unique_run_id()
    records, dead_letters = publish(kafka_config, namespace, run_id)
    transitions, firing = expected_alerts(records)
    assert transitions and firing  # the run fires, resolves, and ends with something firing
    baseline = tmp_path / "baseline.ndjson"
    baseline.write_text("".join(json.dumps(r) + "\n" for r in synthetic_run(unique_run_id("base"), 30, 6, False)))

    first = free_ports(29600, 4)
    ports = {"validate": first, "drift": first + 1, "watch": first + 2}
    served = ("--namespace", namespace.name, "--metrics-host", "127.0.0.1", "--metrics-port")
    groups = {
        "validate": consumers("validate", *served, str(ports["validate"])),
        "drift": consumers("drift", "--baseline", str(baseline), "--idle-seconds", "1", *served, str(ports["drift"])),
        "watch": consumers("watch", "--rules", str(WATCH_RULES), *served, str(ports["watch"])),
    }
    server = prometheus({group: f"127.0.0.1:{port}" for group, port in ports.items()}, first + 3)

    for group, consumer in groups.items():
        consumer.wait_assigned(120)
        server.wait_values(f'ppo_telemetry_records_total{{group="{group}"}}', "outcome",
                           {"valid": len(records), "invalid": 2, "duplicate": 1}, f"the {group} group's records")
    server.wait_values('ppo_telemetry_dead_letters_total{group="validate"}', "rule", dead_letters, "the dead letters")
    assert server.query('ppo_telemetry_dead_letters_total{group!="validate"}') == {}  # only validate dead-letters

    for group in groups:
        counts = server.query(f'ppo_telemetry_transaction_duration_seconds_count{{group="{group}"}}')
        assert len(counts) == 1 and next(iter(counts.values())) > 0
        newest = server.values(f'ppo_telemetry_last_record_timestamp_seconds{{group="{group}"}}', "group")
        assert newest == {group: max(r["timestamp_ms"] for r in records) / 1000}
        for unit in ("records", "seconds"):  # every partition, caught up
            server.wait_values(f'ppo_telemetry_consumer_lag_{unit}{{group="{group}"}}', "partition",
                               {"0": 0, "1": 0, "2": 0}, f"the {group} group's lag in {unit} at 0")
        lag = server.query(f'ppo_telemetry_consumer_lag_records{{group="{group}"}}')
        assert {dict(labels)["topic"] for labels in lag} == {namespace.epochs_topic}

    def transitions_seen() -> dict[tuple[str, str, str], float]:
        found = server.query('ppo_telemetry_alert_transitions_total{group="watch"}')
        return {(dict(k)["rule"], dict(k)["severity"], dict(k)["state"]): v for k, v in found.items()}

    wait_for(lambda: transitions_seen() == transitions, 60, "the alert transitions")
    firing_now = server.query(f'ppo_telemetry_alerts_firing{{group="watch",run_id="{run_id}"}}')
    assert {(dict(k)["rule"], dict(k)["severity"]): v for k, v in firing_now.items()} == {f: 1 for f in firing}

    # every page lists only the agreed names; Prometheus holds no other name of ours
    for port in ports.values():
        assert family_names(metrics_page(port)) <= METRIC_NAMES
    ours = {dict(labels)["__name__"] for labels in server.query('{__name__=~"ppo_telemetry_.*"}')}
    assert {name for name in ours if not name.endswith(HISTOGRAM_SUFFIXES)} <= METRIC_NAMES

    # the watch group restarted on the same port: the alerts firing come back with the run's state
    assert groups["watch"].terminate() == 0
    watch = consumers("watch", "--rules", str(WATCH_RULES), *served, str(ports["watch"]))
    watch.wait_assigned()
    wait_for(lambda: server.query(f'ppo_telemetry_alerts_firing{{group="watch",run_id="{run_id}"}}') == firing_now
             and server.query('ppo_telemetry_alert_transitions_total{group="watch"}') == {}, 60,
             "the restarted watch group's alerts firing, with no transition of its own")
    assert watch.terminate() == 0
    assert groups["validate"].terminate() == 0 and groups["drift"].terminate() == 0


def test_a_metrics_port_in_use_is_one_line_and_exit_2(kafka_bootstrap, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "ppo_telemetry", "consume", "validate", "--bootstrap-servers", kafka_bootstrap,
             "--namespace", f"it-{uuid.uuid4().hex[:8]}-busy", "--metrics-port", str(port),
             "--metrics-host", "127.0.0.1"],
            capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ppo-telemetry: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ]


# ------------------------------------------------------------------------------------ lag, as the meter reads it


def no_deadline(what: str, timeout: float) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def lag(meter: Any, consumer: Any, topic: str, unit: str) -> float | None:
    """The meter's lag of partition 0 of `topic` in `unit` (records, seconds), updated from `consumer` now."""
    meter.tick(consumer, no_deadline)
    labels = {"group": meter.metrics.group, "topic": topic, "partition": "0"}
    return meter.metrics.registry.get_sample_value(f"ppo_telemetry_consumer_lag_{unit}", labels)


def consume_exactly(consumer: Any, count: int) -> list[Any]:
    consumed: list[Any] = []
    wait_for(lambda: consumed.extend(consumer.consume(count - len(consumed), 1.0)) or len(consumed) == count, 60,
             f"{count} records")
    return consumed


def test_the_lag_is_the_records_left_and_the_age_of_the_last_consumed_one_then_0(kafka_config, unique_run_id):
    from confluent_kafka import Consumer, TopicPartition

    from consumers.metering import RunnerMeter
    from consumers.metrics import ConsumerMetrics
    from consumers.runner import RunnerCounts
    from kafka_io import ensure_topics

    topic, group = f"ppo.telemetry.test.{unique_run_id('lag')}", f"lag-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_config, {topic: (1, {})})
    producer = Producer(kafka_config)
    written_at = 1_700_000_000_000
    for offset in range(10):
        producer.produce(topic, value=b"x", timestamp=written_at + offset)
    assert producer.flush(30) == 0
    settings = {**kafka_config, "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest"}
    a_minute_later = written_at / 1000 + 60.0
    meter = RunnerMeter(ConsumerMetrics("validate"), ValidatorGroup(), RunnerCounts(), clock=lambda: a_minute_later,
                        lag_interval=0)

    consumer = Consumer(settings)
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        meter.begin()
        meter.committed(consume_exactly(consumer, 4), 1)  # as the runner tells it after the transaction
        assert wait_for(lambda: lag(meter, consumer, topic, "records") == 6, 60, "a lag of 6 records")
        assert lag(meter, consumer, topic, "seconds") == pytest.approx(60.0 - 3 / 1000)  # offset 3's age
        consumer.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)
    finally:
        consumer.close()

    # a new instance that has consumed nothing yet: its committed offset stands for its position
    meter = RunnerMeter(ConsumerMetrics("validate"), ValidatorGroup(), RunnerCounts(), lag_interval=0)
    consumer = Consumer(settings)
    try:
        consumer.assign([TopicPartition(topic, 0)])  # fetches from the committed offset; nothing handed out yet
        assert wait_for(lambda: lag(meter, consumer, topic, "records") == 6, 60, "a lag of 6 from the committed offset")
        assert lag(meter, consumer, topic, "seconds") is None  # no record of it consumed: not known
        consume_exactly(consumer, 6)
        assert lag(meter, consumer, topic, "records") == 0 and lag(meter, consumer, topic, "seconds") == 0
    finally:
        consumer.close()
