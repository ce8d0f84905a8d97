"""Prometheus metrics of one consumer group instance (SPEC §10), served on `/metrics`.

`ConsumerMetrics` owns a `CollectorRegistry` of its own (not prometheus_client's global one, so tests
and several groups in one process do not clash) and exactly these families, each labelled `group`
(validate, drift or watch):

- `ppo_telemetry_records_total{outcome}`: records consumed and committed, by outcome (valid, invalid,
  duplicate);
- `ppo_telemetry_dead_letters_total{rule}`: messages sent to the DLQ, by the rule that sent them;
- `ppo_telemetry_transaction_duration_seconds`: histogram, begin to commit of one Kafka transaction;
- `ppo_telemetry_consumer_lag_records{topic, partition}`: the partition's end offset minus the group's
  position on it;
- `ppo_telemetry_consumer_lag_seconds{topic, partition}`: 0 when that lag is 0, else how old the last
  record consumed from the partition is (now minus its Kafka timestamp): the group is at least that far
  behind the partition's writers; absent while that is not known;
- `ppo_telemetry_alerts_firing{rule, severity, run_id}`: 1 per alert firing now; the series goes on
  resolve (and when the run's partition moves to another instance);
- `ppo_telemetry_alert_transitions_total{rule, severity, state}`: alert transitions committed;
- `ppo_telemetry_last_record_timestamp_seconds`: the largest `timestamp_ms` / 1000 of the valid records
  consumed (absent until the first one).

Nothing here knows Kafka: `consumers.metering` turns what the runner sees into these calls. Counters
move only when a transaction commits, so a batch redone after an abort is counted once. Counters carry
no `_created` series (`disable_created_metrics`, process-wide): the page lists only these names.
"""

from __future__ import annotations

import threading
from types import TracebackType
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, start_http_server

from avro_schemas.errors import TelemetryError

__all__ = ["DEFAULT_METRICS_HOST", "ConsumerMetrics", "MetricsError", "MetricsServer", "OUTCOMES"]

DEFAULT_METRICS_HOST = "0.0.0.0"
"""Exporters listen on every interface by convention (a Prometheus in another container or host)."""
OUTCOMES = ("valid", "invalid", "duplicate")
TRANSACTION_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
"""Seconds: a transaction's round trips take ~5-15 ms; a large batch or a slow broker, seconds."""


class MetricsError(TelemetryError):
    """The metrics endpoint cannot be served (its port is taken, its host is not an address here)."""


class MetricsServer:
    """The HTTP server of one registry, in a daemon thread; `close()` (or leaving `with`) stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        """The port it listens on (the one asked for, or the kernel's choice for port 0)."""
        return self._server.server_address[1]

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


class ConsumerMetrics:
    """The metrics of one instance of consumer group `group` (validate, drift or watch)."""

    def __init__(self, group: str) -> None:
        disable_created_metrics()
        self.group = group
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        records = Counter("ppo_telemetry_records_total", "Records consumed and committed, by outcome.",
                          ["group", "outcome"], registry=registry)
        self._records = {outcome: records.labels(group, outcome) for outcome in OUTCOMES}
        self._dead_letters = Counter("ppo_telemetry_dead_letters_total", "Messages sent to the DLQ, by rule.",
                                     ["group", "rule"], registry=registry)
        self._transactions = Histogram(
            "ppo_telemetry_transaction_duration_seconds", "Begin to commit of one Kafka transaction.",
            ["group"], buckets=TRANSACTION_BUCKETS, registry=registry,
        ).labels(group)
        self._lag_records = Gauge("ppo_telemetry_consumer_lag_records", "End offset minus the group's position.",
                                  ["group", "topic", "partition"], registry=registry)
        self._lag_seconds = Gauge("ppo_telemetry_consumer_lag_seconds",
                                  "0 when caught up, else the age of the last record consumed from the partition.",
                                  ["group", "topic", "partition"], registry=registry)
        self._alerts_firing = Gauge("ppo_telemetry_alerts_firing", "1 per alert firing now.",
                                    ["group", "rule", "severity", "run_id"], registry=registry)
        self._alert_transitions = Counter("ppo_telemetry_alert_transitions_total", "Alert transitions, by state.",
                                          ["group", "rule", "severity", "state"], registry=registry)
        self._last_record = Gauge("ppo_telemetry_last_record_timestamp_seconds",
                                  "timestamp_ms / 1000 of the newest valid record consumed.",
                                  ["group"], registry=registry)
        self._newest_ms: int | None = None
        self._firing: dict[str, set[tuple[str, str]]] = {}  # run_id -> {(rule, severity)} with a series
        self._lag_partitions: set[tuple[str, int]] = set()

    # ------------------------------------------------------------------------------------ records

    def count_records(self, valid: int = 0, invalid: int = 0, duplicate: int = 0) -> None:
        """Add committed records by outcome."""
        for outcome, count in (("valid", valid), ("invalid", invalid), ("duplicate", duplicate)):
            if count:
                self._records[outcome].inc(count)

    def count_dead_letters(self, rule: str, count: int = 1) -> None:
        """Add `count` messages sent to the DLQ by `rule`."""
        self._dead_letters.labels(self.group, rule).inc(count)

    def observe_transaction(self, seconds: float) -> None:
        """One committed transaction took `seconds` from begin to commit."""
        self._transactions.observe(seconds)

    def saw_record_timestamp(self, timestamp_ms: int) -> None:
        """A valid record with this `timestamp_ms` was consumed: the gauge keeps the largest."""
        if self._newest_ms is None or timestamp_ms > self._newest_ms:
            self._newest_ms = timestamp_ms
            self._last_record.labels(self.group).set(timestamp_ms / 1000.0)

    # ------------------------------------------------------------------------------------ alerts

    def alert_transition(self, run_id: str, rule: str, severity: str, state: str) -> None:
        """A committed transition: counted; `firing` adds the run's series, `resolved` removes it."""
        self._alert_transitions.labels(self.group, rule, severity, state).inc()
        if state == "firing":
            self.alert_firing(run_id, rule, severity)
        else:
            self._remove_firing(run_id, rule, severity)

    def alert_firing(self, run_id: str, rule: str, severity: str) -> None:
        """`rule` is firing for `run_id` (a transition, or state read back after a restart): its series is 1."""
        self._alerts_firing.labels(self.group, rule, severity, run_id).set(1)
        self._firing.setdefault(run_id, set()).add((rule, severity))

    def forget_run(self, run_id: str) -> None:
        """Remove the run's firing series (its partition went to another instance, or its state is read again)."""
        for rule, severity in self._firing.pop(run_id, ()):
            self._alerts_firing.remove(self.group, rule, severity, run_id)

    def _remove_firing(self, run_id: str, rule: str, severity: str) -> None:
        firing = self._firing.get(run_id)
        if firing is None or (rule, severity) not in firing:
            return
        firing.discard((rule, severity))
        if not firing:
            del self._firing[run_id]
        self._alerts_firing.remove(self.group, rule, severity, run_id)

    # ------------------------------------------------------------------------------------ lag

    def set_lag(self, topic: str, partition: int, records: int, seconds: float | None) -> None:
        """The lag of one assigned partition; `seconds` None (not known) removes the seconds series."""
        labels = (self.group, topic, str(partition))
        self._lag_records.labels(*labels).set(records)
        if seconds is not None:
            self._lag_seconds.labels(*labels).set(seconds)
        else:
            self._remove_lag_seconds(labels)
        self._lag_partitions.add((topic, partition))

    def _remove_lag_seconds(self, labels: tuple[str, str, str]) -> None:
        try:
            self._lag_seconds.remove(*labels)
        except KeyError:
            pass  # not there

    def drop_lag(self, topic: str, partition: int) -> None:
        """Remove the lag series of a partition no longer assigned here."""
        if (topic, partition) not in self._lag_partitions:
            return
        self._lag_partitions.discard((topic, partition))
        labels = (self.group, topic, str(partition))
        self._lag_records.remove(*labels)
        self._remove_lag_seconds(labels)

    @property
    def lag_partitions(self) -> frozenset[tuple[str, int]]:
        """The (topic, partition) pairs with lag series."""
        return frozenset(self._lag_partitions)

    # ------------------------------------------------------------------------------------ serving

    def serve(self, port: int, host: str = DEFAULT_METRICS_HOST) -> MetricsServer:
        """Serve the registry on `http://host:port/metrics` until the returned server is closed."""
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise MetricsError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        return MetricsServer(server, thread)
