"""Security settings reach librdkafka, and no password ever shows in what the programs print."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

PASSWORD = "hunter2-s3cret-Zq9"
KEY_PASSWORD = "keypass-7Yw-s3cret"


def test_sasl_scram_settings_from_the_environment_never_leak_into_logs_or_errors(kafka_bootstrap, tmp_path):
    # SCRAM over SASL_PLAINTEXT against the plaintext broker: the handshake cannot succeed, so the
    # programs fail; what they print on the way (librdkafka errors included) must not hold the secrets
    env = dict(
        os.environ,
        PPO_TELEMETRY_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        PPO_TELEMETRY_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        PPO_TELEMETRY_KAFKA_SASL_USERNAME="trainer",
        PPO_TELEMETRY_KAFKA_SASL_PASSWORD=PASSWORD,
        PPO_TELEMETRY_KAFKA_SSL_KEY_PASSWORD=KEY_PASSWORD,
        PPO_TELEMETRY_KAFKA_EXTRA='{"socket.connection.setup.timeout.ms": "2000"}',
    )
    base = [sys.executable, "-m", "ppo_telemetry"]
    commands = {
        "consume": base + ["consume", "validate", "--bootstrap-servers", kafka_bootstrap],
        "train": base + ["train", "--kafka", kafka_bootstrap, "--env", "CartPole-v1", "--total-steps", "256"],
    }
    procs = {name: subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, cmd in commands.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 2, (name, err)
        last = err.strip().splitlines()[-1]
        assert last.startswith("ppo-telemetry: error:") and "Kafka" in last, (name, err)
        for secret in (PASSWORD, KEY_PASSWORD):
            assert secret not in out and secret not in err, name


def test_a_bad_security_setting_is_one_line_naming_the_field_without_the_password(kafka_bootstrap, tmp_path):
    config = tmp_path / "kafka.toml"
    config.write_text(
        '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-256"\nsasl_username = "u"\n'
        f'sasl_password = "{PASSWORD}"\nssl_key_location = "/no/cert/for/this/key.pem"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "ppo_telemetry", "consume", "watch", "--kafka-config", str(config)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "ssl" in proc.stderr, proc.stderr
    assert PASSWORD not in proc.stderr + proc.stdout
