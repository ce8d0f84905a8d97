"""A first look at the broker before a command settles in: a security mismatch said in seconds (issue 9).

SASL settings against a PLAINTEXT listener used to end after 30 s in "Broker transport failure", the
text librdkafka gives every failed request, whatever the cause. librdkafka knows better on the way:
its error callback reports each failed connection with the state it failed in and, for the usual
mismatches, a hint of its own. `check_listener` opens an admin client, asks for metadata with short
timeouts and reads those reports; `diagnose` (the pure core) turns the ones that point at the settings
into one line naming the likely mistake:

| librdkafka reports (error code, text)                                        | likely mistake |
|------------------------------------------------------------------------------|----------------|
| `_AUTHENTICATION` "... broker's supported mechanisms: " (none)                 | SASL settings, listener without SASL |
| `_AUTHENTICATION` "Unsupported SASL mechanism: broker's supported mechanisms: X" | `sasl_mechanism` not offered |
| `_AUTHENTICATION` "... Authentication failed ..."                              | wrong username or password |
| "SSL handshake failed ... connecting to a PLAINTEXT broker listener?"         | TLS settings, plaintext listener |
| "SSL handshake failed ... certificate verify failed"                         | CA not trusted (`ssl_ca_location`) |
| "Disconnected while requesting ApiVersion ... (connecting to a SSL listener?)" | plaintext settings, TLS listener |
| "Disconnected: verify that security.protocol ... might require SASL"          | no SASL settings, SASL listener |
| "Disconnected ... (after Nms in state UP)", twice, N < 2000, no SASL settings | the same (librdkafka 2.x words it so) |
| "Disconnected ... (after Nms in state APIVERSION_QUERY)", twice, N < 2000, no TLS settings | plaintext settings, TLS listener (librdkafka 2.16 words it so) |

The last two come as log lines (`FAIL`), not through the error callback, so the check reads both.
Anything else (a refused connection, an unknown host, a broker still starting) is not diagnosed here:
the check returns and the command goes on to report or wait as it always did, so a broker that is
merely down costs at most one short check.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from kafka_io import reason
from ppo_telemetry.kafka_settings import SettingsError, scrub

__all__ = ["CHECK_SECONDS", "BrokerReport", "ListenerMismatchError", "check_listener", "diagnose"]

CHECK_SECONDS = 5.0
"""How long `check_listener` looks at most: a mismatch shows within milliseconds of the first connection."""

_REQUEST_SECONDS = 0.5  # each metadata request; the reports are read between them

# "sasl_plaintext://127.0.0.1:9092/bootstrap: ..." or "127.0.0.1:9092/1: ..." at the head of a report
_BROKER_NAME = re.compile(r"^(?:[a-z_]+://)?(?P<address>[^/\s]+)/(?:bootstrap|\d+):\s*")
_OFFERED = re.compile(r"broker's supported mechanisms:\s*(?P<mechanisms>[A-Z0-9_,\- ]*?)\s*(?:\(after|$)")
_TAIL = re.compile(r"\s*\(after (?P<ms>\d+)ms in state (?P<state>[A-Z_]+)(?:, \d+ identical error\(s\) suppressed)?\)\s*$")
# a librdkafka log line: "FAIL [rdkafka#producer-1] [thrd:...]: <report>"
_LOG_LINE = re.compile(r"^(?P<facility>[A-Z_]+) \[[^\]]*\] \[[^\]]*\]: (?P<text>.*)$", re.DOTALL)
_SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
_TLS_PROTOCOLS = ("SSL", "SASL_SSL")


class ListenerMismatchError(SettingsError):
    """The broker answered in a way that shows the security settings do not fit its listener."""


@dataclass(frozen=True, slots=True)
class BrokerReport:
    """One report of librdkafka's error callback: its error code name (`_AUTHENTICATION`) and text."""

    code: str
    text: str


def diagnose(report: BrokerReport, config: Mapping[str, str]) -> str | None:
    """One line naming the likely settings mistake behind `report`, or None when it shows none.

    `config` is the librdkafka config the client ran with (its `security.protocol`, `sasl.mechanism`,
    `sasl.username` and `bootstrap.servers` go into the message; no secret does).
    """
    match = _BROKER_NAME.match(report.text)
    address = match["address"] if match else config.get("bootstrap.servers", "?")
    detail = " ".join(_TAIL.sub("", report.text[match.end() :] if match else report.text).split())
    protocol = config.get("security.protocol", "PLAINTEXT").upper()
    at = f"the Kafka broker at {address}"
    settings = f"security_protocol is {protocol}"
    if report.code == "_AUTHENTICATION":
        offered = _OFFERED.search(detail)
        if offered is not None and not offered["mechanisms"]:
            return (f"{at} offers no SASL mechanism on this listener, so it is not a SASL listener, but "
                    f"{settings}: is security_protocol right for this listener (PLAINTEXT or SSL)?")
        if offered is not None:
            return (f"{at} offers SASL mechanisms {offered['mechanisms']}, not sasl_mechanism "
                    f"{config.get('sasl.mechanism', '?')}: use one of those")
        if "authentication failed" in detail.lower():
            return (f"{at} refused the credentials of sasl_username {config.get('sasl.username', '?')!r} "
                    f"(SASL {config.get('sasl.mechanism', '?')}): check the username and password")
        return f"{at} refused the SASL authentication: {detail}"
    if "connecting to a PLAINTEXT broker listener" in detail:
        return (f"{at} closed the connection during the TLS handshake, as a PLAINTEXT listener does, but "
                f"{settings}: is security_protocol right for this listener (PLAINTEXT or SASL_PLAINTEXT)?")
    if "certificate verify failed" in detail or "could not be verified" in detail:
        return f"{at} has a TLS certificate this client does not trust: check ssl_ca_location ({detail})"
    if "connecting to a SSL listener" in detail:
        return (f"{at} closed the connection before answering, as a TLS listener does to a plaintext "
                f"client, but {settings}: is security_protocol right for this listener (SSL or SASL_SSL)?")
    if "might require SASL authentication" in detail:
        return (f"{at} closed the connection right after connecting, as a SASL listener does to a client "
                f"that does not authenticate, but {settings}: is security_protocol right for this listener "
                "(SASL_PLAINTEXT or SASL_SSL)?")
    if "SSL handshake failed" in detail:
        return f"{at}: the TLS handshake failed ({detail}); check the ssl_* settings and security_protocol"
    return None


def _closed_on_arrival(report: BrokerReport, config: Mapping[str, str]) -> bool:
    # A SASL listener closes the connection of a client that sends anything but the SASL requests,
    # within milliseconds of it coming up; librdkafka 2.x reports this as "Disconnected: connection
    # closed by peer ... (after 1ms in state UP)" without its older SASL hint.
    return _closed_at_once(report, config, "UP", _SASL_PROTOCOLS)


def _closed_before_answering(report: BrokerReport, config: Mapping[str, str]) -> bool:
    # A TLS listener reads a plaintext client's first request as a broken handshake and closes the
    # connection; librdkafka 2.16 reports "Disconnected: connection closed by peer ... (after 2ms in state
    # APIVERSION_QUERY)" without its older "(connecting to a SSL listener?)" hint.
    return _closed_at_once(report, config, "APIVERSION_QUERY", _TLS_PROTOCOLS)


def _closed_at_once(report: BrokerReport, config: Mapping[str, str], state: str, protocols: Iterable[str]) -> bool:
    """The broker closed the connection within 2 s of it reaching `state`, for a client whose
    security protocol is none of `protocols`."""
    tail = _TAIL.search(report.text)
    return (
        "Disconnected" in report.text
        and tail is not None
        and tail["state"] == state
        and int(tail["ms"]) < 2000
        and config.get("security.protocol", "PLAINTEXT").upper() not in protocols
    )


def _unreachable(reports: list[BrokerReport], config: Mapping[str, str]) -> bool:
    # Every bootstrap address failed before a connection existed (refused, unresolved, no route):
    # there is no listener to diagnose, and the command reports an unreachable broker as it always did.
    failed = set()
    for report in reports:
        name = _BROKER_NAME.match(report.text)
        if name is not None and (report.code == "_RESOLVE" or "in state CONNECT)" in report.text):
            failed.add(name["address"])
    wanted = {entry.strip() for entry in config.get("bootstrap.servers", "").split(",") if entry.strip()}
    return bool(wanted) and wanted <= failed


class _ReportLog(logging.Handler):
    """Keeps librdkafka's `FAIL` log lines as reports: some connection failures come only as logs."""

    def __init__(self, reports: list[BrokerReport]) -> None:
        super().__init__()
        self.reports = reports

    def emit(self, record: logging.LogRecord) -> None:
        line = _LOG_LINE.match(record.getMessage())
        if line is not None and line["facility"] == "FAIL":
            self.reports.append(BrokerReport("_LOG", line["text"]))


def check_listener(config: Mapping[str, str], timeout: float = CHECK_SECONDS) -> None:
    """Ask the brokers of `config` for metadata for at most `timeout` seconds; raise a one-line
    `ListenerMismatchError` (exit 2) when librdkafka's reports show that the security settings do not
    fit the listener. Returns as soon as the brokers answer, or when every broker is down for another
    reason (the command then reports that as it always did), or at the deadline. A config librdkafka
    itself refuses (an unknown property, a value out of range) is a one-line `SettingsError`.
    """
    reports: list[BrokerReport] = []

    def collect(error: KafkaError) -> None:
        reports.append(BrokerReport(error.name(), error.str()))

    # A logger of this check's own, outside the logging tree: two checks at once (threads) must not
    # read each other's reports, and nothing else should see librdkafka's lines through it.
    logger = logging.Logger("ppo_telemetry.librdkafka.check", logging.DEBUG)
    logger.addHandler(_ReportLog(reports))
    admin = _client({**config, "logger": logger, "error_cb": collect}, config)
    _look(admin, reports, config, timeout)


def _client(client_config: dict[str, object], config: Mapping[str, str]) -> AdminClient:
    # librdkafka checks every property here: an unknown one or a bad value is a settings error, said
    # before any command starts rather than as a traceback from whichever client is made first.
    try:
        return AdminClient(client_config)
    except KafkaException as exc:
        raise SettingsError(scrub(f"invalid Kafka settings: librdkafka: {' '.join(reason(exc).split())}", config)) from None


def _look(admin: AdminClient, reports: list[BrokerReport], config: Mapping[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            admin.list_topics(timeout=max(0.05, min(_REQUEST_SECONDS, remaining)))
            return
        except KafkaException:
            pass
        admin.poll(0)  # the error callback and the logger run here
        for report in reports:
            found = diagnose(report, config)
            if found is not None:
                raise ListenerMismatchError(scrub(found, config))
        # Twice, and never a refused connection among the reports: a broker shutting down also closes
        # connections, but then refuses the next ones.
        never_refused = not any("in state CONNECT)" in report.text for report in reports)
        if never_refused and sum(_closed_on_arrival(report, config) for report in reports) >= 2:
            address = config.get("bootstrap.servers", "?")
            raise ListenerMismatchError(
                f"the Kafka broker at {address} closes the connection as soon as it is up, as a SASL listener "
                f"does to a client that does not authenticate, but security_protocol is "
                f"{config.get('security.protocol', 'PLAINTEXT')}: is security_protocol right for this listener "
                "(SASL_PLAINTEXT or SASL_SSL)?"
            )
        if never_refused and sum(_closed_before_answering(report, config) for report in reports) >= 2:
            address = config.get("bootstrap.servers", "?")
            raise ListenerMismatchError(
                f"the Kafka broker at {address} closed the connection before answering, as a TLS listener does "
                f"to a plaintext client, but security_protocol is {config.get('security.protocol', 'PLAINTEXT')}: "
                "is security_protocol right for this listener (SSL or SASL_SSL)?"
            )
        if _unreachable(reports, config) or remaining <= 0:
            return
