"""A security-protocol mismatch is said in one line naming the likely mistake, not a transport failure
after 30 s (issue 9). The session's broker serves PLAINTEXT; SASL or TLS settings against it are the
mismatch. No timing is asserted: the processes only get a generous hang guard."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
