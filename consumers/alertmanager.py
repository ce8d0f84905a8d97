"""Alert transitions to Alertmanager (SPEC §10 "Notifications"): `consume watch --alertmanager URL`.

The pure core turns one `ppo.telemetry.Alert` record (a transition on the alerts topic) into the alert
object of Alertmanager's v2 API (`alertmanager_alert`): labels `alertname` (the rule), `run_id`,
`severity`; annotations `summary`, `value`, `reference` (and `epoch`, `global_step`, `since_epoch`);
`startsAt` the transition's Kafka timestamp; on a resolve, `endsAt` that timestamp too.

`AlertmanagerPoster` delivers them, in a thread beside the watch group's runner:

- It reads the alerts topic itself, `read_committed`, as consumer group `<watch group id>.alertmanager`
  (in the watch group's namespace), so it never touches the watch group's transactions and sees only
  committed transitions. Each transition is posted (`POST URL/api/v2/alerts`) in topic order, and its
  offset is committed only once Alertmanager accepted it: at least once. A transition posted again
  after a crash carries the same labels and times, and Alertmanager merges it into the alert it has;
  its notification log sends no second notification for it within `repeat_interval`.
- Alertmanager unreachable (connection refused, timeout, HTTP 5xx or 429, or any answer but 2xx and
  400): the same transition is retried with exponential backoff (`Backoff`) until accepted, so none is
  lost; one line when Alertmanager goes away, one when it is back. HTTP 400 is Alertmanager rejecting
  that alert: retrying cannot help, so it is said and skipped. While it waits, the poster does not
  poll and keeps its partitions (`max.poll.interval.ms` is a day).
- Alertmanager keeps alerts in memory only, and times out one with no `endsAt` after its
  `resolve_timeout` (5 minutes by default): as Prometheus re-sends its alerts, the poster re-posts every
  alert still firing every `resend_interval` seconds (60) while it is idle. Which alerts fire
  (`FiringAlerts`) is read back, when a partition is assigned, from its transitions before the group's
  committed offset, so a restarted poster (or an Alertmanager that lost its alerts in a restart) has
  them again; the first re-post waits until the transitions after that offset are posted, so it never
  undoes a newer one.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from avro_schemas.codec import alert_codec
from avro_schemas.errors import DecodeError, TelemetryError

__all__ = [
    "ALERTS_PATH", "AlertmanagerError", "AlertmanagerURLError", "AlertmanagerUnavailable", "AlertRejected",
    "AlertmanagerPoster", "Backoff", "FiringAlerts", "alertmanager_alert", "alerts_endpoint", "post_alerts",
    "poster_group",
]

ALERTS_PATH = "/api/v2/alerts"
"""Alertmanager's v2 endpoint for posting alerts, under the URL given."""


class AlertmanagerError(TelemetryError):
    """Something about Alertmanager: a bad URL, or a post it did not accept."""


class AlertmanagerURLError(AlertmanagerError):
    """`--alertmanager URL` is not an http(s) URL with a host."""


class AlertmanagerUnavailable(AlertmanagerError):
    """Alertmanager did not accept a post but may later: unreachable, a timeout, HTTP 5xx or similar."""


class AlertRejected(AlertmanagerError):
    """Alertmanager answered HTTP 400: it will never accept these alerts as they are."""


# ------------------------------------------------------------------------------------------ pure core


def alerts_endpoint(url: str) -> str:
    """The v2 alerts endpoint (`<url>/api/v2/alerts`) of the Alertmanager at `url`; a one-line
    `AlertmanagerURLError` when `url` is not http(s) with a host (a path prefix is kept)."""
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number raises here
    except ValueError as exc:
        raise AlertmanagerURLError(f"--alertmanager {url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise AlertmanagerURLError(f"--alertmanager {url!r}: the URL must start with http:// or https://")
    if not parts.hostname:
        raise AlertmanagerURLError(f"--alertmanager {url!r}: the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise AlertmanagerURLError("--alertmanager: credentials in the URL are not supported (they would show in logs)")
    if parts.query or parts.fragment:
        raise AlertmanagerURLError(f"--alertmanager {url!r}: give Alertmanager's base URL, without '?' or '#'")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}{ALERTS_PATH}"


def _rfc3339(timestamp_ms: int) -> str:
    """A Kafka timestamp (ms since the epoch) as the RFC 3339 UTC time Alertmanager reads."""
    moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(value: float | None) -> str:
    """A number as an annotation (Alertmanager annotations are strings): 6 significant digits."""
    return "n/a" if value is None else f"{value:.6g}"


def alertmanager_alert(transition: dict[str, Any], timestamp_ms: int) -> dict[str, Any]:
    """The Alertmanager v2 alert of one transition (a decoded `ppo.telemetry.Alert`, v1.0 or v1.1)
    written to the alerts topic at `timestamp_ms`.

    The labels are the alert's identity (what Alertmanager merges by): the rule as `alertname`, the
    run and the severity. A firing has `startsAt` and no `endsAt` (Alertmanager applies its
    `resolve_timeout`; the poster re-posts firing alerts); a resolve has `endsAt` = `startsAt` = its own
    time (Alertmanager keeps the earlier start of the alert it merges it into)."""
    reference = transition.get("reference")
    if reference is None:
        reference = transition.get("threshold")  # a v1.0 alert: the threshold was its reference
    summary = transition.get("summary") or (
        f"{transition['rule']} {transition['state']} for run {transition['run_id']} "
        f"(value {_number(transition['value'])}, reference {_number(reference)})"
    )
    annotations = {
        "summary": summary,
        "value": _number(transition["value"]),
        "reference": _number(reference),
        "epoch": str(transition["epoch"]),
    }
    for optional in ("global_step", "since_epoch"):
        if transition.get(optional) is not None:
            annotations[optional] = str(transition[optional])
    at = _rfc3339(timestamp_ms)
    alert = {
        "labels": {
            "alertname": transition["rule"],
            "run_id": transition["run_id"],
            "severity": transition.get("severity") or "warning",
        },
        "annotations": annotations,
        "startsAt": at,
    }
    if transition["state"] == "resolved":
        alert["endsAt"] = at
    return alert


@dataclass
class Backoff:
    """Exponential backoff with a cap: `first`, 2x, 4x ... up to `cap` seconds; `reset` after a success."""

    first: float = 0.5
    cap: float = 30.0
    _next: float = 0.0

    def delay(self) -> float:
        """The wait before the next attempt (and doubles the one after)."""
        current = self._next or self.first
        self._next = min(current * 2, self.cap)
        return min(current, self.cap)

    def reset(self) -> None:
        """Start again from `first`."""
        self._next = 0.0


def poster_group(watch_group_id: str) -> str:
    """The poster's consumer group: the watch group's id (in its namespace) + `.alertmanager`."""
    return f"{watch_group_id}.alertmanager"


class FiringAlerts:
    """The alerts firing on a poster's partitions, as far as it has posted, for re-posting them.

    When a partition is assigned, its transitions are read back (`read_back`): those before the group's
    committed offset were posted and make the table; the last one after it marks the partition behind.
    Until the poster has posted that one (`posted`), what the table says is older than what Alertmanager
    may hold (a resolve posted just before a crash, not committed): `to_repost` gives None, not a re-post
    that would undo it.
    """

    def __init__(self) -> None:
        self._firing: dict[int, dict[tuple[str, str], dict[str, Any]]] = {}  # partition -> (run, rule) -> alert
        self._behind: dict[int, int] = {}  # partition -> the last offset not posted when it was assigned

    def assigned(self, partition: int) -> None:
        """A partition (re)assigned: its table starts empty, to be read back."""
        self._firing[partition] = {}
        self._behind.pop(partition, None)

    def revoked(self, partition: int) -> None:
        """A partition gone to another poster: its alerts are that poster's to re-post."""
        self._firing.pop(partition, None)
        self._behind.pop(partition, None)

    def read_back(self, partition: int, offset: int, committed: int,
                  transition: dict[str, Any] | None, alert: dict[str, Any] | None) -> None:
        """One transition of an assigned partition read back (None: not an alert); `committed` is the
        group's committed offset there (negative: none)."""
        if offset >= committed:
            self._behind[partition] = max(offset, self._behind.get(partition, -1))
        elif transition is not None and alert is not None:
            self._remember(partition, transition, alert)

    def posted(self, partition: int, offset: int,
               transition: dict[str, Any] | None, alert: dict[str, Any] | None) -> None:
        """A transition accepted by Alertmanager (or a message skipped: None) at `offset`."""
        if transition is not None and alert is not None:
            self._remember(partition, transition, alert)
        if offset >= self._behind.get(partition, offset + 1):
            del self._behind[partition]

    def _remember(self, partition: int, transition: dict[str, Any], alert: dict[str, Any]) -> None:
        firing = self._firing.setdefault(partition, {})
        key = (transition["run_id"], transition["rule"])
        if transition["state"] == "firing":
            firing[key] = alert
        else:
            firing.pop(key, None)

    def to_repost(self) -> list[dict[str, Any]] | None:
        """Every alert firing now, or None while a partition is behind."""
        if self._behind:
            return None
        return [alert for partition in self._firing.values() for alert in partition.values()]


# ------------------------------------------------------------------------------------------ HTTP


def post_alerts(endpoint: str, alerts: list[dict[str, Any]], timeout: float = 5.0) -> None:
    """POST `alerts` to Alertmanager's v2 `endpoint`; returns once it accepted them (HTTP 2xx).

    `AlertRejected` on HTTP 400 (retrying cannot help), `AlertmanagerUnavailable` on anything else."""
    body = json.dumps(alerts).encode("utf-8")
    request = urllib.request.Request(endpoint, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
        text = f"HTTP {exc.code}" + (f": {detail}" if detail else "")
        raise (AlertRejected if exc.code == 400 else AlertmanagerUnavailable)(text) from None
    except urllib.error.URLError as exc:
        raise AlertmanagerUnavailable(str(exc.reason)) from None
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed answer
        raise AlertmanagerUnavailable(str(exc) or type(exc).__name__) from None


# ------------------------------------------------------------------------------------------ the poster


def _posts_counter(registry: Any) -> Any:
    """`ppo_telemetry_alertmanager_posts_total{outcome}` in `registry` (None: not counted)."""
    if registry is None:
        return None
    from prometheus_client import Counter

    posts = Counter(
        "ppo_telemetry_alertmanager_posts_total",
        "Posts to Alertmanager's v2 API by outcome: sent (accepted) or failed (an attempt not accepted).",
        ["outcome"], registry=registry,
    )
    for outcome in ("sent", "failed"):
        posts.labels(outcome=outcome)  # both series exist from the start, at 0
    return posts


class AlertmanagerPoster:
    """Posts every transition of the alerts topic to Alertmanager, in a thread (see the module docstring).

    `config` is the librdkafka config of the watch group (connection and security) and
    `session_timeout_ms` its session timeout (a killed poster's partitions move on after it); `say` prints
    one line; `on_fatal(message)` is called if the poster cannot go on (its consumer failed), after which
    `error` holds the message; `registry`, a prometheus_client `CollectorRegistry`, counts the posts.
    `resend_interval`, `timeout` (of one post) and `backoff` are in seconds.
    """

    def __init__(
        self, url: str, config: dict[str, Any], alerts_topic: str, group_id: str,
        say: Callable[[str], None], *, registry: Any = None, on_fatal: Callable[[str], None] | None = None,
        resend_interval: float = 60.0, timeout: float = 5.0, backoff: Backoff | None = None,
        session_timeout_ms: int = 10_000,
    ) -> None:
        self.endpoint = alerts_endpoint(url)
        self.config = config
        self.alerts_topic = alerts_topic
        self.group_id = group_id
        self.say = say
        self.on_fatal = on_fatal
        self.resend_interval = resend_interval
        self.timeout = timeout
        self.session_timeout_ms = session_timeout_ms
        self.backoff = backoff if backoff is not None else Backoff()
        self.posts = _posts_counter(registry)
        self.error: str | None = None
        self.sent = 0  # transitions accepted (re-posts of firing alerts not counted)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._codec = alert_codec()
        self._down = False
        self.firing = FiringAlerts()
        self._resent_at = -1e9
        self._consumer: Any = None
        self._errors_said: set[int] = set()

    # -------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start posting in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="alertmanager-poster", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop after the post in flight (at most `timeout` seconds): its offset is committed only if accepted."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        try:
            self._consume()
        except Exception as exc:  # noqa: BLE001 - one line, and the watch group is told to stop
            from kafka_io import reason

            self.error = f"Alertmanager poster stopped: {reason(exc)}"
            self.say(self.error)
            if self.on_fatal is not None:
                self.on_fatal(self.error)

    # -------------------------------------------------------------------------------- Kafka

    def _consume(self) -> None:
        from confluent_kafka import Consumer

        from kafka_io import group_consumer_config

        if not self._wait_for_topic():
            return
        self._consumer = Consumer({
            # the session as short as the watch group's: a killed instance's partitions move on as soon as
            # the group's do
            **group_consumer_config(self.config, self.group_id, self.session_timeout_ms),
            # while Alertmanager is away the poster holds its transition and does not poll, on purpose: it
            # keeps its partitions (any other poster would wait for the same Alertmanager) for up to a day
            "max.poll.interval.ms": 86_400_000,
            "error_cb": self._on_client_error,
        })
        try:
            self._consumer.subscribe(
                [self.alerts_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
            )
            self.say(f"posting {self.alerts_topic} to {self.endpoint} as {self.group_id}")
            while not self._stopping.is_set():
                message = self._consumer.poll(0.5)
                if message is None:
                    self._resend_if_due()
                elif message.error() is not None:
                    self._on_client_error(message.error())
                elif not self._handle(message):
                    return  # stopping with this transition not accepted: its offset stays uncommitted
        finally:
            try:
                self._consumer.close()
            except Exception:  # noqa: BLE001 - leaving the group is best effort; the offsets are committed
                pass
            self._consumer = None

    def _wait_for_topic(self) -> bool:
        """Wait until the alerts topic exists (the watch group's runner creates it as it starts): subscribed
        before, the consumer would say the topic is unknown. False when stopped first."""
        from kafka_io import KafkaIOError, partition_count

        while not self._stopping.is_set():
            try:
                if partition_count(self.config, self.alerts_topic, timeout=10):
                    return True
            except KafkaIOError:
                pass  # Kafka unreachable: the runner says so (and stops) or it comes back
            self._stopping.wait(0.5)
        return False

    def _on_client_error(self, error: Any) -> None:
        if error.code() in self._errors_said:
            return
        self._errors_said.add(error.code())
        self.say(f"Kafka client: {error.str()}")

    def _handle(self, message: Any) -> bool:
        """Post one transition and commit past it; False when stopped before Alertmanager accepted it."""
        transition = self._decode(message)
        alert = None if transition is None else alertmanager_alert(transition, self._timestamp(message))
        if alert is not None:
            if not self._deliver([alert], f"{transition['rule']} {transition['state']} of run {transition['run_id']}"):
                return False
            self.sent += 1
        self.firing.posted(message.partition(), message.offset(), transition, alert)
        self._commit(message)
        return True

    def _decode(self, message: Any, quiet: bool = False) -> dict[str, Any] | None:
        try:
            return self._codec.decode(message.value())
        except (DecodeError, TypeError) as exc:
            if quiet:
                return None
            where = f"{message.topic()} [{message.partition()}] offset {message.offset()}"
            self.say(f"{where}: not an Alert, skipped: {exc}")
            return None

    @staticmethod
    def _timestamp(message: Any) -> int:
        kind, timestamp_ms = message.timestamp()
        return timestamp_ms if kind != 0 and timestamp_ms > 0 else int(time.time() * 1000)  # 0: not available

    def _commit(self, message: Any) -> None:
        from confluent_kafka import KafkaException

        from kafka_io import reason

        try:
            self._consumer.commit(message=message, asynchronous=False)
        except KafkaException as exc:
            # a rebalance or a coordinator move: the transition comes again and is posted again (merged)
            self.say(f"offset commit failed, the transition will be posted again: {reason(exc)}")

    # -------------------------------------------------------------------------------- firing alerts

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        """Read each assigned partition's transitions back into `firing` (see `FiringAlerts`)."""
        from confluent_kafka import KafkaException, TopicPartition

        from kafka_io import KafkaIOError, read_to_end, reason

        for tp in partitions:
            self.firing.assigned(tp.partition)
        try:
            committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=30)}
            for message in read_to_end(self.config, [TopicPartition(self.alerts_topic, p) for p in committed]):
                partition, offset = message.partition(), message.offset()
                transition = self._decode(message, quiet=True) if offset < committed[partition] else None
                alert = None if transition is None else alertmanager_alert(transition, self._timestamp(message))
                self.firing.read_back(partition, offset, committed[partition], transition, alert)
        except (KafkaException, KafkaIOError) as exc:
            self.say(f"cannot read back the firing alerts (each is posted again at its next transition): {reason(exc)}")
        self._resent_at = -1e9  # re-post what fires as soon as caught up

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            self.firing.revoked(tp.partition)

    def _resend_if_due(self) -> None:
        """Re-post every alert firing on this poster's partitions, every `resend_interval` seconds, once
        caught up with what they held when assigned."""
        if time.monotonic() - self._resent_at < self.resend_interval:
            return
        alerts = self.firing.to_repost()
        if alerts is None:
            return
        if alerts and not self._deliver(alerts, f"{len(alerts)} firing alerts, re-posted"):
            return
        self._resent_at = time.monotonic()

    # -------------------------------------------------------------------------------- HTTP

    def _count(self, outcome: str) -> None:
        if self.posts is not None:
            self.posts.labels(outcome=outcome).inc()

    def _deliver(self, alerts: list[dict[str, Any]], what: str) -> bool:
        """Post until Alertmanager accepts (True) or rejects (True: said and skipped); False when stopped."""
        while not self._stopping.is_set():
            try:
                post_alerts(self.endpoint, alerts, self.timeout)
            except AlertRejected as exc:
                self._count("failed")
                self.say(f"Alertmanager rejected {what}, skipped: {exc}")
                return True
            except AlertmanagerUnavailable as exc:
                self._count("failed")
                if not self._down:
                    self._down = True
                    self.say(f"Alertmanager at {self.endpoint} unreachable ({exc}); retrying with backoff "
                             f"up to {self.backoff.cap:g} s, nothing is lost")
                self._stopping.wait(self.backoff.delay())
                continue
            self._count("sent")
            self.backoff.reset()
            if self._down:
                self._down = False
                self.say(f"Alertmanager at {self.endpoint} reachable again; posting the transitions held back")
            return True
        return False
