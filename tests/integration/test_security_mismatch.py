"""A security-protocol mismatch is said in one line naming the likely mistake, not a transport failure
after 30 s (issue 9). The session's broker serves PLAINTEXT: SASL or TLS settings against it are one
mismatch. The other side comes from a broker of this module's own with a SASL_PLAINTEXT/PLAIN listener
besides its PLAINTEXT one: plaintext settings against it, a mechanism it does not offer, a wrong
password. No timing is asserted: the processes only get a generous hang guard."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kafka_testing import free_ports, running
from ppo_telemetry.broker import LocalBroker
from ppo_telemetry.kafka_probe import ListenerMismatchError, check_listener

pytestmark = pytest.mark.integration

PASSWORD = "a"  # one letter: it must neither leak nor garble the message
HANG_GUARD_SECONDS = 180


def sasl_env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("PPO_TELEMETRY_KAFKA_")}
    env.update(
        PPO_TELEMETRY_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        PPO_TELEMETRY_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        PPO_TELEMETRY_KAFKA_SASL_USERNAME="trainer",
        PPO_TELEMETRY_KAFKA_SASL_PASSWORD=PASSWORD,
        **extra,
    )
    return env


@pytest.mark.parametrize(
    "command",
    [
        ["consume", "validate", "--bootstrap-servers", "{bootstrap}"],
        ["train", "--kafka", "{bootstrap}", "--env", "CartPole-v1", "--total-steps", "256"],
    ],
    ids=["consume", "train"],
)
def test_sasl_settings_against_a_plaintext_listener_name_the_mismatch(kafka_bootstrap: str, command: list[str]) -> None:
    args = [part.format(bootstrap=kafka_bootstrap) for part in command]
    proc = subprocess.run([sys.executable, "-m", "ppo_telemetry", *args], env=sasl_env(), capture_output=True,
                          text=True, timeout=HANG_GUARD_SECONDS)

    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ppo-telemetry: error: the Kafka broker at ")
    assert kafka_bootstrap in lines[0] and "not a SASL listener" in lines[0]
    assert "is security_protocol right for this listener" in lines[0]
    assert "***" not in lines[0]  # nothing scrubbed: the one-letter password garbles no word


def test_tls_settings_against_a_plaintext_listener_name_the_mismatch(kafka_bootstrap: str) -> None:
    with pytest.raises(ListenerMismatchError, match="during the TLS handshake, as a PLAINTEXT listener does"):
        check_listener({"bootstrap.servers": kafka_bootstrap, "security.protocol": "SSL"}, timeout=60.0)


def test_matching_settings_pass_the_check(kafka_bootstrap: str) -> None:
    check_listener({"bootstrap.servers": kafka_bootstrap, "security.protocol": "PLAINTEXT"}, timeout=60.0)


# --- a SASL listener -----------------------------------------------------------------------------------

SASL_USER, SASL_PASSWORD = "trainer", "pw-Zq9-s3cret"


@dataclass(frozen=True)
class SaslListenerBroker(LocalBroker):
    """The local broker with one more listener: SASL_PLAINTEXT on `sasl_port`, mechanism PLAIN, one user."""

    sasl_port: int = 0

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    def _render_properties(self) -> Path:
        path = super()._render_properties()
        text = path.read_text()
        for key, extra in (
            ("listeners", f"SASLP://127.0.0.1:{self.sasl_port}"),
            ("advertised.listeners", f"SASLP://127.0.0.1:{self.sasl_port}"),
            ("listener.security.protocol.map", "SASLP:SASL_PLAINTEXT"),
        ):
            text = re.sub(rf"^{re.escape(key)}=(.*)$", lambda found: f"{key}={found[1]},{extra}", text, flags=re.M)
        text += (
            "\nsasl.enabled.mechanisms=PLAIN\n"
            "listener.name.saslp.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule "
            f'required user_{SASL_USER}="{SASL_PASSWORD}";\n'
        )
        path.write_text(text)
        return path


@pytest.fixture(scope="module")
def sasl_listener() -> Iterator[SaslListenerBroker]:
    """A broker of this module's own whose SASL_PLAINTEXT listener offers PLAIN to one user."""
    home = Path(tempfile.mkdtemp(prefix="ppo-telemetry-sasl-broker-"))
    port = free_ports(29500, 3)
    with running(SaslListenerBroker(port=port, home=home, sasl_port=port + 2), home) as broker:
        yield broker


def sasl_config(broker: SaslListenerBroker, **changes: str) -> dict[str, str]:
    config = {
        "bootstrap.servers": broker.sasl_bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": SASL_USER,
        "sasl.password": SASL_PASSWORD,
    }
    config.update(changes)
    return config


def test_settings_that_fit_the_sasl_listener_pass_the_check(sasl_listener: SaslListenerBroker) -> None:
    check_listener(sasl_config(sasl_listener), timeout=60.0)


def test_plaintext_settings_against_a_sasl_listener_name_the_mismatch(sasl_listener: SaslListenerBroker) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("PPO_TELEMETRY_KAFKA_")}
    proc = subprocess.run(
        [sys.executable, "-m", "ppo_telemetry", "consume", "validate", "--bootstrap-servers", sasl_listener.sasl_bootstrap],
        env=env, capture_output=True, text=True, timeout=HANG_GUARD_SECONDS,
    )

    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert sasl_listener.sasl_bootstrap in lines[0] and "as a SASL listener does" in lines[0]
    assert "(SASL_PLAINTEXT or SASL_SSL)" in lines[0]


def test_a_mechanism_the_listener_does_not_offer_is_named(sasl_listener: SaslListenerBroker) -> None:
    with pytest.raises(ListenerMismatchError, match="offers SASL mechanisms PLAIN, not sasl_mechanism SCRAM-SHA-512"):
        check_listener(sasl_config(sasl_listener, **{"sasl.mechanism": "SCRAM-SHA-512"}), timeout=60.0)


def test_a_wrong_password_is_named_without_showing_it(sasl_listener: SaslListenerBroker) -> None:
    with pytest.raises(ListenerMismatchError, match=f"refused the credentials of sasl_username '{SASL_USER}'") as caught:
        check_listener(sasl_config(sasl_listener, **{"sasl.password": "wrong-Pw-7"}), timeout=60.0)

    assert "wrong-Pw-7" not in str(caught.value) and SASL_PASSWORD not in str(caught.value)
