"""The consumer metrics (consumers.metrics) and what the runner's meter tells them (consumers.metering),
without Kafka: the cores are the real groups, the HTTP server a real one on 127.0.0.1."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Message
from prometheus_client.parser import text_string_to_metric_families

from avro_schemas.models import EpochSummary
from consumers.dead_letter import Rejection
from consumers.groups import ValidatorGroup, WatchGroup
from consumers.metering import RunnerMeter
from consumers.metrics import ConsumerMetrics, MetricsError
from consumers.runner import RunnerCounts
from consumers.telemetry_watch import load_rules
from consumers.validator import StreamTracker, validate_record
from ppo_telemetry.demo import synthetic_run

# common11.md's names, less the Alertmanager poster's (consumers/alertmanager.py)
METRIC_NAMES = {
    "ppo_telemetry_records_total", "ppo_telemetry_dead_letters_total", "ppo_telemetry_transaction_duration_seconds",
    "ppo_telemetry_consumer_lag_records", "ppo_telemetry_consumer_lag_seconds", "ppo_telemetry_alerts_firing",
    "ppo_telemetry_alert_transitions_total", "ppo_telemetry_last_record_timestamp_seconds",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
WATCH_RULES = Path(__file__).parents[2] / "integration" / "watch_rules.toml"


def value(metrics: ConsumerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"group": metrics.group, **labels})


def sample_names(page: str) -> set[str]:
    """The name of every sample line of an exposition page, histogram suffixes taken off."""
    names = set()
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            name = sample.name
            for suffix in HISTOGRAM_SUFFIXES:
                if family.type == "histogram" and name.endswith(suffix):
                    name = name[: -len(suffix)]
            names.add(name)
    return names


def exposition(metrics: ConsumerMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


def filled(group: str = "watch") -> ConsumerMetrics:
    """Metrics with one sample of every family."""
    metrics = ConsumerMetrics(group)
    metrics.count_records(valid=3, invalid=1, duplicate=1)
    metrics.count_dead_letters("finite")
    metrics.observe_transaction(0.012)
    metrics.set_lag("ppo.telemetry.epochs", 0, 5, 2.5)
    metrics.alert_transition("run-a", "kl_spike", "warning", "firing")
    metrics.saw_record_timestamp(1_700_000_000_500)
    return metrics


# ------------------------------------------------------------------------------------ ConsumerMetrics


def test_the_page_lists_only_the_common_metric_names_and_no_created_series():
    names = sample_names(exposition(filled()))
    assert names == METRIC_NAMES
    assert not any(name.endswith("_created") for name in names)


def test_records_are_counted_by_outcome_and_each_outcome_is_there_from_the_start():
    metrics = ConsumerMetrics("validate")
    outcomes = ("valid", "invalid", "duplicate")
    assert [value(metrics, "ppo_telemetry_records_total", outcome=o) for o in outcomes] == [0, 0, 0]
    metrics.count_records(valid=7, invalid=2)
    metrics.count_records(valid=1, duplicate=3)
    assert value(metrics, "ppo_telemetry_records_total", outcome="valid") == 8
    assert value(metrics, "ppo_telemetry_records_total", outcome="invalid") == 2
    assert value(metrics, "ppo_telemetry_records_total", outcome="duplicate") == 3


def test_dead_letters_are_counted_by_rule():
    metrics = ConsumerMetrics("validate")
    metrics.count_dead_letters("finite", 2)
    metrics.count_dead_letters("wrong_header")
    assert value(metrics, "ppo_telemetry_dead_letters_total", rule="finite") == 2
    assert value(metrics, "ppo_telemetry_dead_letters_total", rule="wrong_header") == 1


def test_transaction_durations_go_to_the_histogram():
    metrics = ConsumerMetrics("drift")
    metrics.observe_transaction(0.004)
    metrics.observe_transaction(0.3)
    assert value(metrics, "ppo_telemetry_transaction_duration_seconds_count") == 2
    assert value(metrics, "ppo_telemetry_transaction_duration_seconds_bucket", le="0.005") == 1
    assert value(metrics, "ppo_telemetry_transaction_duration_seconds_sum") == pytest.approx(0.304)


def test_the_last_record_timestamp_is_absent_until_a_record_then_keeps_the_newest():
    metrics = ConsumerMetrics("validate")
    assert value(metrics, "ppo_telemetry_last_record_timestamp_seconds") is None
    metrics.saw_record_timestamp(1_700_000_002_000)
    metrics.saw_record_timestamp(1_700_000_001_000)  # an older run's record, consumed later
    assert value(metrics, "ppo_telemetry_last_record_timestamp_seconds") == 1_700_000_002.0


def test_a_firing_alert_is_a_series_of_its_run_until_it_resolves():
    metrics = ConsumerMetrics("watch")
    metrics.alert_transition("run-a", "kl_spike", "warning", "firing")
    metrics.alert_transition("run-b", "kl_spike", "warning", "firing")
    firing = {"rule": "kl_spike", "severity": "warning"}
    assert value(metrics, "ppo_telemetry_alerts_firing", run_id="run-a", **firing) == 1
    metrics.alert_transition("run-a", "kl_spike", "warning", "resolved")
    assert value(metrics, "ppo_telemetry_alerts_firing", run_id="run-a", **firing) is None
    assert value(metrics, "ppo_telemetry_alerts_firing", run_id="run-b", **firing) == 1
    assert value(metrics, "ppo_telemetry_alert_transitions_total", state="firing", **firing) == 2
    assert value(metrics, "ppo_telemetry_alert_transitions_total", state="resolved", **firing) == 1


def test_a_resolve_without_its_firing_is_counted_and_removes_nothing():
    metrics = ConsumerMetrics("watch")
    metrics.alert_transition("run-a", "grad_explosion", "critical", "resolved")
    assert value(metrics, "ppo_telemetry_alert_transitions_total", rule="grad_explosion", severity="critical",
                 state="resolved") == 1
    assert "ppo_telemetry_alerts_firing{" not in exposition(metrics)


def test_forgetting_a_run_removes_its_firing_series_without_a_transition():
    metrics = ConsumerMetrics("watch")
    metrics.alert_firing("run-a", "kl_spike", "warning")
    metrics.alert_firing("run-a", "gae_sanity", "warning")
    metrics.forget_run("run-a")
    metrics.forget_run("never-seen")
    assert "ppo_telemetry_alerts_firing{" not in exposition(metrics)
    assert "ppo_telemetry_alert_transitions_total{" not in exposition(metrics)


def test_lag_series_per_partition_and_dropped_when_the_partition_goes():
    metrics = ConsumerMetrics("validate")
    metrics.set_lag("epochs", 0, 12, 3.5)
    metrics.set_lag("epochs", 1, 4, None)  # seconds not known yet: no series
    assert value(metrics, "ppo_telemetry_consumer_lag_records", topic="epochs", partition="0") == 12
    assert value(metrics, "ppo_telemetry_consumer_lag_seconds", topic="epochs", partition="0") == 3.5
    assert value(metrics, "ppo_telemetry_consumer_lag_seconds", topic="epochs", partition="1") is None
    assert metrics.lag_partitions == {("epochs", 0), ("epochs", 1)}
    metrics.set_lag("epochs", 0, 12, None)  # no longer known (reassigned, nothing consumed): no series
    assert value(metrics, "ppo_telemetry_consumer_lag_seconds", topic="epochs", partition="0") is None
    metrics.drop_lag("epochs", 1)
    metrics.drop_lag("epochs", 7)  # never had series
    assert value(metrics, "ppo_telemetry_consumer_lag_records", topic="epochs", partition="1") is None
    assert metrics.lag_partitions == {("epochs", 0)}


def test_two_groups_in_one_process_keep_their_own_registries():
    first, second = ConsumerMetrics("validate"), ConsumerMetrics("validate")
    first.count_records(valid=5)
    assert value(first, "ppo_telemetry_records_total", outcome="valid") == 5
    assert value(second, "ppo_telemetry_records_total", outcome="valid") == 0


# ------------------------------------------------------------------------------------ serving


def test_served_on_metrics_over_http_until_closed():
    metrics = filled()
    with metrics.serve(0, "127.0.0.1") as server:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            page = response.read().decode()
        assert sample_names(page) == METRIC_NAMES
        port = server.port
    with socket.socket() as probe:  # nothing listens there any more (the connection may be in TIME_WAIT)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()


def test_a_port_in_use_is_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError) as caught:
            ConsumerMetrics("validate").serve(port, "127.0.0.1")
    assert f"cannot serve metrics on 127.0.0.1:{port}" in str(caught.value) and "\n" not in str(caught.value)


def test_a_host_that_is_not_an_address_here_is_one_line_error():
    with pytest.raises(MetricsError) as caught:
        ConsumerMetrics("validate").serve(0, "192.0.2.1")  # TEST-NET-1: not this machine's
    assert "cannot serve metrics on 192.0.2.1:0" in str(caught.value) and "\n" not in str(caught.value)


# ------------------------------------------------------------------------------------ the runner's meter


def valid_verdicts(records: list[dict]) -> list:
    tracker = StreamTracker()
    return [tracker.check(validate_record(record)) for record in records]


def test_the_meter_counts_a_committed_transaction_by_outcome_with_its_dead_letters_and_newest_timestamp():
    metrics, counts = ConsumerMetrics("validate"), RunnerCounts()
    meter = RunnerMeter(metrics, ValidatorGroup(), counts)
    records = synthetic_run("run-a", 4, seed=1, unstable=False)
    meter.begin()
    for verdict in valid_verdicts(records):  # as the runner does: it counts, the core sees the record
        counts.processed += 1
        meter.core.on_record(None, verdict)
    for offset, rule in ((9, "finite"), (10, "wrong_header"), (11, "finite")):
        counts.rejected += 1
        meter.core.on_rejected(Message(topic="epochs", partition=0, offset=offset, value=b"x"),
                               Rejection("validate", rule, "a reason"))
    counts.duplicates += 2
    meter.committed()
    assert value(metrics, "ppo_telemetry_records_total", outcome="valid") == 4
    assert value(metrics, "ppo_telemetry_records_total", outcome="invalid") == 3
    assert value(metrics, "ppo_telemetry_records_total", outcome="duplicate") == 2
    assert value(metrics, "ppo_telemetry_dead_letters_total", rule="finite") == 2
    assert value(metrics, "ppo_telemetry_dead_letters_total", rule="wrong_header") == 1
    assert value(metrics, "ppo_telemetry_transaction_duration_seconds_count") == 1
    newest = max(record["timestamp_ms"] for record in records)
    assert value(metrics, "ppo_telemetry_last_record_timestamp_seconds") == newest / 1000


def test_a_transaction_that_did_not_commit_is_not_counted_when_its_batch_is_redone():
    metrics, counts = ConsumerMetrics("validate"), RunnerCounts()
    meter = RunnerMeter(metrics, ValidatorGroup(), counts)
    rejected = Message(topic="epochs", partition=0, offset=3, value=b"x")
    for _attempt in range(2):  # aborted, then redone and committed
        meter.begin()
        counts.rejected += 1
        meter.core.on_rejected(rejected, Rejection("decode", "wrong_header", "a reason"))
    meter.committed()
    assert value(metrics, "ppo_telemetry_records_total", outcome="invalid") == 1
    assert value(metrics, "ppo_telemetry_dead_letters_total", rule="wrong_header") == 1
    assert value(metrics, "ppo_telemetry_transaction_duration_seconds_count") == 1


def test_groups_that_dead_letter_nothing_count_no_dead_letters():
    metrics, counts = ConsumerMetrics("watch"), RunnerCounts()
    meter = RunnerMeter(metrics, WatchGroup(), counts)
    meter.begin()
    counts.rejected += 1
    meter.core.on_rejected(Message(topic="epochs", partition=0, offset=3, value=b"x"), Rejection("decode", "r", "m"))
    meter.committed()
    assert value(metrics, "ppo_telemetry_records_total", outcome="invalid") == 1
    assert "ppo_telemetry_dead_letters_total{" not in exposition(metrics)


def watch_alerts(meter: RunnerMeter, records: list[dict]) -> list[tuple[str, str]]:
    """Feed `records` to the meter's (watch) core in one committed transaction; the (rule, state) of each alert."""
    meter.begin()
    transitions = []
    for verdict in valid_verdicts(records):
        for output in meter.core.on_record(EpochSummary.from_dict(verdict.record), verdict):
            alert = meter.core.codec.decode(output.value)
            transitions.append((alert["rule"], alert["state"]))
    meter.committed()
    return transitions


def firing_series(metrics: ConsumerMetrics) -> set[tuple[str, str, str]]:
    families = text_string_to_metric_families(exposition(metrics))
    return {
        (s.labels["run_id"], s.labels["rule"], s.labels["severity"])
        for family in families if family.name == "ppo_telemetry_alerts_firing" for s in family.samples
    }


def test_the_watch_groups_alerts_become_transitions_and_the_series_of_what_fires_now():
    metrics = ConsumerMetrics("watch")
    core = WatchGroup(load_rules(WATCH_RULES))
    meter = RunnerMeter(metrics, core, RunnerCounts())
    transitions = watch_alerts(meter, synthetic_run("run-a", 30, seed=5, unstable=True))
    assert len(transitions) >= 4
    rules = core.watch.config
    for rule in {rule for rule, _ in transitions}:
        severity = getattr(rules, rule).severity
        for state in ("firing", "resolved"):
            expected = sum(1 for r, s in transitions if (r, s) == (rule, state))
            got = value(metrics, "ppo_telemetry_alert_transitions_total", rule=rule, severity=severity, state=state)
            assert (got or 0) == expected
    last_state = dict(transitions)  # each rule's last transition
    still_firing = {rule for rule, state in last_state.items() if state == "firing"}
    assert firing_series(metrics) == {("run-a", rule, getattr(rules, rule).severity) for rule in still_firing}
    assert still_firing  # the seed leaves something firing: the series is exercised


def test_a_restored_run_brings_back_its_firing_series_and_a_forgotten_one_takes_them_away():
    first = RunnerMeter(ConsumerMetrics("watch"), WatchGroup(load_rules(WATCH_RULES)), RunnerCounts())
    watch_alerts(first, synthetic_run("run-a", 30, seed=5, unstable=True))
    state = first.core.run_state("run-a")

    metrics = ConsumerMetrics("watch")  # the instance that restarts, or takes the partition over
    meter = RunnerMeter(metrics, WatchGroup(load_rules(WATCH_RULES)), RunnerCounts())
    meter.core.restore_run("run-a", state)
    assert firing_series(metrics) == firing_series(first.metrics) != set()
    assert "ppo_telemetry_alert_transitions_total{" not in exposition(metrics)  # nothing new happened
    meter.core.forget_run("run-a")
    assert firing_series(metrics) == set()


def test_the_metered_core_is_the_core_to_the_runner():
    core = ValidatorGroup()
    meter = RunnerMeter(ConsumerMetrics("validate"), core, RunnerCounts())
    assert meter.core.group == core.group and meter.core.output_topics == core.output_topics
    assert meter.core.needs_model is False and meter.core.topic_configs is core.topic_configs
    assert getattr(meter.core, "on_idle", None) is None  # optional hooks stay absent
    meter.core.limit_records({"ppo.telemetry.epochs.dlq": 2_000_000})
    assert core.dlq_record_limit == meter.core.dlq_record_limit
