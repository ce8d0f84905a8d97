"""compose/docker-compose.yml: the broker in KRaft mode and the three consumers, commands our CLI accepts."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ppo_telemetry.cli import build_parser

COMPOSE = Path(__file__).resolve().parents[2] / "compose" / "docker-compose.yml"


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_the_broker_runs_kraft_with_single_replica_internal_topics():
    kafka = load()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[key] == 1
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == 0
    assert "healthcheck" in kafka


def test_the_three_consumer_groups_are_services_whose_commands_the_cli_accepts():
    services = load()["services"]
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    groups = {}
    for name in ("validator", "drift", "watch"):
        service = services[name]
        command = [re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", part) for part in service["command"]]
        args = build_parser().parse_args(command)
        assert args.command == "consume"
        groups[name] = args.group
        bootstrap = service["environment"]["PPO_TELEMETRY_KAFKA_BOOTSTRAP_SERVERS"]
        assert bootstrap in advertised  # the consumers reach the broker on a listener it advertises
        assert service["stop_signal"] == "SIGTERM" and service["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert groups == {"validator": "validate", "drift": "drift", "watch": "watch"}
