"""`consume watch --alertmanager URL` against a real Alertmanager (Debian package prometheus-alertmanager)
and a real broker: a firing is active with the SPEC §10 labels, a resolve resolves it, a consumer killed
-9 and restarted causes no second notification, and transitions made while Alertmanager is down reach
it once it is back.

Alertmanager's receiver is a webhook served by this test process, which records every notification.
Each alert is a group of its own (`group_by: ['...']`), notified 1 s after it changes
(`group_wait`, `group_interval`), and not repeated within the test (`repeat_interval: 1h`): so each
transition gives exactly one notification, and a duplicate would show as a second one. The records
are published chunk by chunk, each chunk ending at a record that makes a transition, and the test waits
for that transition's notification before the next chunk.
"""

from __future__ import annotations

import re
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alertmanager_testing import Alertmanager, Webhook
from kafka_testing import committed_offsets, free_ports, read_topic, wait_for

from avro_schemas.codec import alert_codec
from avro_schemas.models import EpochSummary
from avro_schemas.topics import Namespace
from consumers.alertmanager import (
    AlertmanagerUnavailable,
    AlertRejected,
    alertmanager_alert,
    alerts_endpoint,
    post_alerts,
    poster_group,
)
from consumers.telemetry_watch import Watch, load_rules
from ppo_telemetry.demo import synthetic_run
from producer.kafka_sink import KafkaSink

pytestmark = pytest.mark.integration

WATCH_RULES = Path(__file__).with_name("watch_rules.toml")

@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
def alertmanager(system_program, tmp_path: Path, webhook: Webhook) -> Iterator[Alertmanager]:
    manager = Alertmanager(system_program("prometheus-alertmanager", "prometheus-alertmanager"), tmp_path, webhook)
    manager.start()
    yield manager
    manager.stop()


@pytest.fixture
def namespace() -> Namespace:
    """A namespace of the test's own: its watch group, alerts topic and poster group are fresh."""
    return Namespace(f"am-{uuid.uuid4().hex[:10]}")


def run_and_transitions(run_id: str) -> tuple[list[dict[str, Any]], list[tuple[int, dict[str, Any]]]]:
    """A synthetic run with kl_spike and grad_explosion firing and resolving (the fast rules), and its
    transitions as (index of the record that made it, the Alert record)."""
    records = synthetic_run(run_id, 30, seed=5, unstable=True)
    watch = Watch(load_rules(WATCH_RULES))
    transitions = [
        (index, t.to_avro_dict())
        for index, record in enumerate(records) for t in watch.observe(EpochSummary.from_dict(record))
    ]
    return records, transitions


class Publisher:
    """Publishes a run's records into a namespace, chunk by chunk, remembering how far it got."""

    def __init__(self, config: dict[str, Any], namespace: Namespace, records: list[dict[str, Any]]) -> None:
        self.config, self.namespace, self.records, self.sent = config, namespace, records, 0

    def through(self, index: int) -> None:
        """Publish every record up to and including `index`."""
        sink = KafkaSink(self.config, namespace=self.namespace)
        for record in self.records[self.sent:index + 1]:
            sink.publish(dict(record))
        sink.close()
        self.sent = max(self.sent, index + 1)


def expected_statuses(transitions: list[tuple[int, dict[str, Any]]], through: int) -> dict[str, list[str]]:
    """Per rule, the states of the transitions made by records up to `through`."""
    by_rule: dict[str, list[str]] = {}
    for index, transition in transitions:
        if index <= through:
            by_rule.setdefault(transition["rule"], []).append(transition["state"])
    return by_rule


def notified(webhook: Webhook, run_id: str, expected: dict[str, list[str]], consumer: Any) -> bool:
    assert consumer.process.poll() is None, consumer.log()
    got = webhook.statuses(run_id)
    # never a notification more than the transitions, nor another
    assert all(got[rule] == expected.get(rule, [])[:len(got[rule])] for rule in got), (got, expected)
    return got == expected


def watch_consumer(consumers, namespace: Namespace, alertmanager_url: str, *extra: str):
    return consumers(
        "watch", "--namespace", namespace.name, "--rules", str(WATCH_RULES), "--alertmanager", alertmanager_url, *extra
    )


def posts_sent(metrics_port: int) -> float:
    """`ppo_telemetry_alertmanager_posts_total{outcome="sent"}` as the consumer's exporter serves it."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0.0  # not serving yet
    found = re.search(r'^ppo_telemetry_alertmanager_posts_total{outcome="sent"} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


# ------------------------------------------------------------------------------------------ tests


def test_a_firing_is_active_with_the_spec_labels_and_a_resolve_resolves_it(
    kafka_config, consumers, alertmanager, webhook, namespace, unique_run_id,
):
    run_id = unique_run_id()
    records, transitions = run_and_transitions(run_id)
    (fired_at, firing), (resolved_at, resolved) = transitions[:2]
    assert (firing["rule"], firing["state"], resolved["rule"], resolved["state"]) == (
        "kl_spike", "firing", "kl_spike", "resolved")
    publisher = Publisher(kafka_config, namespace, records)
    metrics_port = free_ports(29850, 1)
    watch = watch_consumer(consumers, namespace, alertmanager.url,
                           "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1")

    publisher.through(fired_at)
    active = wait_for(lambda: alertmanager.active(run_id), 90, "the firing to be active in Alertmanager")
    assert len(active) == 1
    assert active[0]["labels"] == {"alertname": "kl_spike", "run_id": run_id, "severity": "warning"}
    expected = alertmanager_alert(firing, 0)["annotations"]
    assert {key: active[0]["annotations"][key] for key in ("summary", "value", "reference")} == {
        key: expected[key] for key in ("summary", "value", "reference")}
    wait_for(lambda: notified(webhook, run_id, {"kl_spike": ["firing"]}, watch), 60, "the firing's notification")

    publisher.through(resolved_at)
    wait_for(lambda: notified(webhook, run_id, {"kl_spike": ["firing", "resolved"]}, watch), 60,
             "the resolve's notification")
    assert alertmanager.active(run_id) == []
    wait_for(lambda: posts_sent(metrics_port) >= 2, 30, "the exporter to count the two posts")
    last = [a for body in webhook.notifications for a in body["alerts"] if a["labels"]["run_id"] == run_id][-1]
    assert last["status"] == "resolved" and last["endsAt"] >= last["startsAt"]
    assert watch.terminate() == 0
    log = watch.log()
    assert f"as {namespace.watch_group}.alertmanager" in log, log
    assert "unreachable" not in log and "Traceback" not in log, log
    assert "Subscribed topic not available" not in log, log  # the poster waits for the runner to create it


def test_a_consumer_killed_and_restarted_causes_no_second_notification(
    kafka_config, consumers, alertmanager, webhook, namespace, unique_run_id,
):
    run_id = unique_run_id()
    records, transitions = run_and_transitions(run_id)
    publisher = Publisher(kafka_config, namespace, records)
    watch = watch_consumer(consumers, namespace, alertmanager.url)
    first_at = transitions[0][0]
    publisher.through(first_at)
    wait_for(lambda: notified(webhook, run_id, expected_statuses(transitions, first_at), watch), 90,
             "the first firing's notification")
    posted = alertmanager.received("firing")

    watch.kill()  # kill -9, right after the post: committed or not, the restart posts it again
    watch = watch_consumer(consumers, namespace, alertmanager.url)
    wait_for(lambda: alertmanager.received("firing") > posted, 90, "the restarted poster to post the firing again")
    for index in sorted({index for index, _ in transitions[1:]}):
        publisher.through(index)
        expected = expected_statuses(transitions, index)
        wait_for(lambda expected=expected: notified(webhook, run_id, expected, watch), 90,
                 f"the notifications of the transitions through record {index}")
    publisher.through(len(records) - 1)
    assert watch.terminate() == 0
    # one notification per transition: kl_spike fired and resolved twice, grad_explosion once, gae_sanity fired
    assert webhook.statuses(run_id) == expected_statuses(transitions, len(records))


def test_transitions_made_while_alertmanager_is_down_reach_it_when_it_is_back(
    kafka_config, consumers, alertmanager, webhook, namespace, unique_run_id,
):
    run_id = unique_run_id()
    records, transitions = run_and_transitions(run_id)
    indices = [index for index, _ in transitions]
    publisher = Publisher(kafka_config, namespace, records)
    watch = watch_consumer(consumers, namespace, alertmanager.url)
    publisher.through(indices[0])
    wait_for(lambda: notified(webhook, run_id, expected_statuses(transitions, indices[0]), watch), 90,
             "the first firing's notification")

    alertmanager.stop()
    during = indices[2]  # kl_spike resolves and grad_explosion fires while Alertmanager is away
    publisher.through(during)
    key = run_id.encode()
    wait_for(lambda: len(read_topic(kafka_config, namespace.alerts_topic, {key})) == 3, 90,
             "the watch group to write the transitions")
    wait_for(lambda: "unreachable" in watch.log(), 60, "the poster to say Alertmanager is unreachable")

    alertmanager.start()  # its alerts were in memory only: gone; its notification log is on disk
    wait_for(lambda: notified(webhook, run_id, expected_statuses(transitions, during), watch), 120,
             "the transitions held back to be notified")
    publisher.through(indices[3])
    wait_for(lambda: notified(webhook, run_id, expected_statuses(transitions, indices[3]), watch), 90,
             "the next transition's notification")
    assert watch.terminate() == 0
    log = watch.log()
    assert log.count("unreachable") == 1 and log.count("reachable again") == 1, log  # not one line per retry


def test_a_consumer_stopped_while_alertmanager_is_down_posts_the_transition_after_its_restart(
    kafka_config, consumers, alertmanager, webhook, namespace, unique_run_id,
):
    run_id = unique_run_id()
    records, transitions = run_and_transitions(run_id)
    first_at = transitions[0][0]
    alertmanager.stop()
    publisher = Publisher(kafka_config, namespace, records)
    watch = watch_consumer(consumers, namespace, alertmanager.url)
    publisher.through(first_at)
    wait_for(lambda: "unreachable" in watch.log(), 90, "the poster to say Alertmanager is unreachable")
    assert watch.terminate() == 0  # SIGTERM while retrying: it stops, the transition's offset not committed
    poster = poster_group(namespace.watch_group)
    assert all(offset < 0 for offset in committed_offsets(kafka_config, poster, namespace.alerts_topic).values())

    alertmanager.start()
    watch = watch_consumer(consumers, namespace, alertmanager.url)
    wait_for(lambda: notified(webhook, run_id, expected_statuses(transitions, first_at), watch), 90,
             "the transition to be posted after the restart")
    assert watch.terminate() == 0


def test_the_poster_re_posts_firing_alerts_that_a_restarted_alertmanager_lost_and_counts_its_posts(
    kafka_config, alertmanager, namespace, unique_run_id,
):
    from confluent_kafka import Producer
    from prometheus_client import CollectorRegistry

    from consumers.alertmanager import AlertmanagerPoster, Backoff
    from kafka_io import ensure_topics, quiet_logger

    run_id = unique_run_id()
    ensure_topics(kafka_config, {namespace.alerts_topic: (3, {})})
    producer = Producer({**kafka_config, "logger": quiet_logger()})
    codec = alert_codec()
    firing = {**_sample_transition(), "run_id": run_id, "state": "firing"}
    producer.produce(namespace.alerts_topic, key=run_id.encode(), value=codec.encode(firing))
    producer.flush(30)
    registry = CollectorRegistry()
    lines: list[str] = []

    def poster(registry: CollectorRegistry) -> AlertmanagerPoster:
        return AlertmanagerPoster(
            alertmanager.url, kafka_config, namespace.alerts_topic, poster_group(namespace.watch_group), lines.append,
            registry=registry, resend_interval=1.0, backoff=Backoff(first=0.1, cap=0.5), session_timeout_ms=3000,
        )

    def posts(outcome: str) -> float:
        return registry.get_sample_value("ppo_telemetry_alertmanager_posts_total", {"outcome": outcome}) or 0.0

    first = poster(registry)
    first.start()
    try:
        wait_for(lambda: alertmanager.active(run_id), 60, "the firing to be active")
        alertmanager.stop()
        wait_for(lambda: posts("failed") > 0, 60, "a re-post to fail while Alertmanager is away")
        alertmanager.start()  # it lost its alerts: the poster's re-post makes the firing active again
        wait_for(lambda: alertmanager.active(run_id), 60, "the firing to be active again after the restart")
    finally:
        first.stop()
    assert first.sent == 1 and first.error is None  # one transition; the rest were re-posts
    assert posts("sent") >= 2
    alertmanager.stop()
    alertmanager.start()
    # the transition is behind the committed offset now: read back from the topic and re-posted
    second = poster(CollectorRegistry())
    second.start()
    try:
        wait_for(lambda: alertmanager.active(run_id), 60, "a restarted poster to re-post the firing alert")
    finally:
        second.stop()
    assert second.sent == 0
    assert sum("unreachable" in line for line in lines) == 1, lines


def test_messages_on_the_alerts_topic_that_are_not_alerts_are_said_once_each_and_skipped(
    kafka_config, alertmanager, namespace, unique_run_id,
):
    from confluent_kafka import Producer

    from avro_schemas.codec import epoch_summary_codec
    from consumers.alertmanager import AlertmanagerPoster
    from kafka_io import ensure_topics, quiet_logger

    run_id = unique_run_id()
    key = run_id.encode()
    ensure_topics(kafka_config, {namespace.alerts_topic: (3, {})})
    # idempotent, and the alert sent only once the broken messages are written: a retried first batch on the
    # new topic can otherwise land after a later one, and the alert would be posted before them
    producer = Producer({**kafka_config, "enable.idempotence": True, "logger": quiet_logger()})
    an_epoch = epoch_summary_codec().encode(synthetic_run(run_id, 1, seed=1, unstable=False)[0])
    broken = [None, b"", b"\x00not avro", an_epoch]  # a tombstone, empty, not Avro, another schema
    for value in broken:
        producer.produce(namespace.alerts_topic, key=key, value=value)
    assert producer.flush(30) == 0
    firing = {**_sample_transition(), "run_id": run_id, "state": "firing"}
    producer.produce(namespace.alerts_topic, key=key, value=alert_codec().encode(firing))
    assert producer.flush(30) == 0
    lines: list[str] = []
    poster = AlertmanagerPoster(alertmanager.url, kafka_config, namespace.alerts_topic,
                                poster_group(namespace.watch_group), lines.append, session_timeout_ms=3000)
    poster.start()
    try:
        active = wait_for(lambda: alertmanager.active(run_id), 60, "the alert after the broken messages to be posted")
    finally:
        poster.stop()
    assert active[0]["labels"]["alertname"] == "kl_spike"
    skipped = [line for line in lines if "not an Alert, skipped" in line]
    assert [re.search(r"offset (\d+):", line).group(1) for line in skipped] == ["0", "1", "2", "3"], lines
    assert all("\n" not in line for line in lines)
    assert poster.sent == 1 and poster.error is None
    committed = committed_offsets(kafka_config, poster_group(namespace.watch_group), namespace.alerts_topic)
    assert sorted(committed.values())[-1] == len(broken) + 1  # past them all: not read again


def test_post_alerts_tells_a_rejected_alert_from_an_unreachable_alertmanager(alertmanager):
    endpoint = alerts_endpoint(alertmanager.url)
    with pytest.raises(AlertRejected, match="HTTP 400"):
        post_alerts(endpoint, [{"labels": {"alertname": "x"}, "startsAt": "not a time"}])
    closed = free_ports(29870, 1)
    with pytest.raises(AlertmanagerUnavailable):
        post_alerts(alerts_endpoint(f"http://127.0.0.1:{closed}"), [{"labels": {"alertname": "x"}}], timeout=2)
    with pytest.raises(AlertmanagerUnavailable, match="HTTP 404"):
        post_alerts(f"{alertmanager.url}/no/such/path", [{"labels": {"alertname": "x"}}])
    post_alerts(endpoint, [alertmanager_alert(_sample_transition(), 1_700_000_000_000)])


def _sample_transition() -> dict[str, Any]:
    codec = alert_codec()
    return codec.decode(codec.encode({
        "run_id": "post-alerts-check", "rule": "kl_spike", "state": "resolved", "severity": "warning", "epoch": 1,
        "global_step": 10, "log_stream_offset": 1, "value": 0.01, "reference": 0.05, "since_epoch": 1,
        "summary": "KL back under its threshold", "threshold": 0.05,
    }))
