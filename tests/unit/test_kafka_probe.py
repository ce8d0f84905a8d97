"""`ppo_telemetry.kafka_probe.diagnose`: librdkafka's reports of a failed connection, turned into the
likely settings mistake. The report texts are librdkafka 2.x's own, as seen against real brokers
(a PLAINTEXT listener, a SASL_PLAINTEXT/PLAIN one) or as written in rdkafka_broker.c."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppo_telemetry.kafka_probe import BrokerReport, ListenerMismatchError, check_listener, diagnose
from ppo_telemetry.kafka_settings import SettingsError

SASL = {
    "bootstrap.servers": "127.0.0.1:29092",
    "security.protocol": "SASL_PLAINTEXT",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "trainer",
    "sasl.password": "hunter2-s3cret",
}
PLAIN = {"bootstrap.servers": "127.0.0.1:29092", "security.protocol": "PLAINTEXT"}
TLS = {"bootstrap.servers": "127.0.0.1:29092", "security.protocol": "SSL"}


def test_sasl_settings_against_a_plaintext_listener() -> None:
    report = BrokerReport(
        "_AUTHENTICATION",
        "sasl_plaintext://127.0.0.1:29092/bootstrap: SASL SCRAM-SHA-512 mechanism handshake failed: Broker: "
        "Request not valid in current SASL state: broker's supported mechanisms:  (after 5ms in state AUTH_HANDSHAKE)",
    )

    message = diagnose(report, SASL)

    assert message is not None
    assert "127.0.0.1:29092" in message and "not a SASL listener" in message
    assert "security_protocol is SASL_PLAINTEXT" in message and "is security_protocol right for this listener" in message


def test_a_mechanism_the_listener_does_not_offer() -> None:
    report = BrokerReport(
        "_AUTHENTICATION",
        "sasl_plaintext://127.0.0.1:29396/bootstrap: SASL SCRAM-SHA-512 mechanism handshake failed: Broker: "
        "Unsupported SASL mechanism: broker's supported mechanisms: PLAIN (after 2ms in state AUTH_HANDSHAKE)",
    )

    assert diagnose(report, SASL) == (
        "the Kafka broker at 127.0.0.1:29396 offers SASL mechanisms PLAIN, not sasl_mechanism SCRAM-SHA-512: "
        "use one of those"
    )


def test_wrong_credentials_name_the_user_never_the_password() -> None:
    report = BrokerReport(
        "_AUTHENTICATION",
        "sasl_plaintext://127.0.0.1:29396/bootstrap: SASL authentication error: Authentication failed: Invalid "
        "username or password (after 3ms in state AUTH_REQ)",
    )

    message = diagnose(report, SASL)

    assert message is not None and "'trainer'" in message and "check the username and password" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("config", "code", "text", "expected"),
    [
        (TLS, "_TRANSPORT",
         "ssl://127.0.0.1:29092/bootstrap: SSL handshake failed: Disconnected: SSL connection closed by peer: "
         "connecting to a PLAINTEXT broker listener? (after 1ms in state SSL_HANDSHAKE)",
         ["during the TLS handshake", "security_protocol is SSL", "(PLAINTEXT or SASL_PLAINTEXT)"]),
        (PLAIN, "_TRANSPORT",
         "127.0.0.1:29092/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect "
         "security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10 "
         "(see api.version.request) (after 1ms in state APIVERSION_QUERY)",
         ["as a TLS listener does", "security_protocol is PLAINTEXT", "(SSL or SASL_SSL)"]),
        (PLAIN, "_TRANSPORT",
         "127.0.0.1:29092/bootstrap: Disconnected: verify that security.protocol is correctly configured, broker "
         "might require SASL authentication (after 1ms in state UP)",
         ["as a SASL listener does", "(SASL_PLAINTEXT or SASL_SSL)"]),
        (TLS, "_SSL",
         "ssl://broker:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: "
         "broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA "
         "certificates are installed (after 12ms in state SSL_HANDSHAKE)",
         ["the Kafka broker at broker:9093", "check ssl_ca_location"]),
    ],
    ids=["tls-against-plaintext", "plaintext-against-tls", "plaintext-against-sasl", "untrusted-certificate"],
)
def test_a_listener_mismatch_is_named_with_the_setting_to_check(
    config: dict[str, str], code: str, text: str, expected: list[str]
) -> None:
    message = diagnose(BrokerReport(code, text), config)

    assert message is not None and message.startswith("the Kafka broker at ")
    for fragment in expected:
        assert fragment in message


@pytest.mark.parametrize(
    "report",
    [
        BrokerReport("_TRANSPORT", "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused "
                                   "(after 0ms in state CONNECT)"),
        BrokerReport("_RESOLVE", "nohost:9092/bootstrap: Failed to resolve 'nohost:9092': Name or service not known "
                                 "(after 5ms in state CONNECT)"),
        BrokerReport("_ALL_BROKERS_DOWN", "1/1 brokers are down"),
        BrokerReport("_TRANSPORT", "127.0.0.1:9092/1: Disconnected (after 65000ms in state UP)"),
    ],
)
def test_a_broker_that_is_merely_down_is_not_diagnosed(report: BrokerReport) -> None:
    assert diagnose(report, SASL) is None and diagnose(report, PLAIN) is None


def test_a_mismatch_is_a_settings_error_so_exit_2() -> None:
    assert issubclass(ListenerMismatchError, SettingsError)


def test_checking_an_address_where_nothing_listens_returns_at_once() -> None:
    # nothing to diagnose: the command goes on and reports an unreachable broker as before
    check_listener({"bootstrap.servers": "127.0.0.1:1"}, timeout=60.0)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [({"no.such.property": "1"}, 'No such configuration property: "no.such.property"'),
     ({"linger.ms": "abc"}, "Invalid value for configuration property")],
)
def test_a_config_librdkafka_refuses_is_one_settings_line(extra: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError, match="^invalid Kafka settings: librdkafka: ") as caught:
        check_listener({"bootstrap.servers": "127.0.0.1:1", **extra}, timeout=60.0)

    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_the_command_line_says_it_in_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ppo_telemetry.cli import main

    monkeypatch.setenv("PPO_TELEMETRY_KAFKA_EXTRA", '{"no.such.property": "1"}')

    assert main(["consume", "validate", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no.such.property" in err


@settings(max_examples=300, deadline=None)
@given(code=st.sampled_from(["_AUTHENTICATION", "_TRANSPORT", "_SSL", "_RESOLVE", "_ALL_BROKERS_DOWN"]),
       text=st.text(max_size=300) | st.sampled_from(
           ["x/bootstrap: SSL handshake failed: a\nb (after 1ms in state SSL_HANDSHAKE)",
            "a:1/bootstrap: broker's supported mechanisms: \n (after 1ms in state AUTH_HANDSHAKE)"]))
def test_any_report_gives_none_or_one_line(code: str, text: str) -> None:
    message = diagnose(BrokerReport(code, text), SASL)

    assert message is None or (message and "\n" not in message and "\r" not in message)


def test_a_plaintext_client_closed_on_by_a_tls_listener_is_told_apart() -> None:
    from ppo_telemetry.kafka_probe import _closed_before_answering

    # librdkafka 2.16 against a SASL_SSL listener (broker start --secure) with plaintext settings
    report = BrokerReport("_LOG", "127.0.0.1:29600/bootstrap: Disconnected: connection closed by peer: receive 0 "
                                  "after POLLIN (after 3ms in state APIVERSION_QUERY)")

    assert _closed_before_answering(report, PLAIN)
    assert not _closed_before_answering(report, TLS)  # a TLS client closed on there is another story
    assert not _closed_before_answering(BrokerReport("_LOG", report.text.replace("3ms", "5000ms")), PLAIN)
