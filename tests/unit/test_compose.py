"""compose/: the broker in KRaft mode, the three consumers with commands our CLI accepts, and Prometheus,
Alertmanager and Grafana configured for them (configs checked by the real promtool and amtool)."""

from __future__ import annotations

import json
import re
import subprocess
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


def test_the_brokers_data_is_on_the_mounted_volume():
    kafka = load()["services"]["kafka"]
    mounts = {volume.split(":")[1] for volume in kafka["volumes"]}
    assert kafka["environment"]["KAFKA_LOG_DIRS"] in mounts


def test_every_group_serves_metrics_and_watch_posts_to_the_stacks_alertmanager():
    services = load()["services"]
    for name in ("validator", "drift", "watch"):
        args = build_parser().parse_args([re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", p) for p in services[name]["command"]])
        assert args.metrics_port == 9464  # the port compose/prometheus/prometheus.yml scrapes
    watch = build_parser().parse_args(services["watch"]["command"])
    assert watch.alertmanager == "http://alertmanager:9093" and "alertmanager" in services
    scrape = yaml.safe_load((COMPOSE.parent / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert set(scrape["dns_sd_configs"][0]["names"]) == {"validator", "drift", "watch"}
    assert scrape["dns_sd_configs"][0]["port"] == 9464


def test_prometheus_and_alertmanager_accept_their_configs(system_program, tmp_path):
    promtool = system_program("promtool", "prometheus")
    amtool = system_program("amtool", "prometheus-alertmanager")
    for command in ([promtool, "check", "config", str(COMPOSE.parent / "prometheus" / "prometheus.yml")],
                    [amtool, "check-config", str(COMPOSE.parent / "alertmanager" / "alertmanager.yml")]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def dashboard_queries() -> list[str]:
    dashboard = json.loads((COMPOSE.parent / "grafana" / "dashboards" / "ppo-telemetry.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_dashboard_query_is_promql_that_prometheus_parses(system_program, tmp_path):
    promtool = system_program("promtool", "prometheus")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": expr} for index, expr in enumerate(dashboard_queries())
    ]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(dashboard_queries()) >= 10


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_the_dashboard():
    provisioning = COMPOSE.parent / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    provider = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())["providers"][0]
    grafana = load()["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in load()["services"]
    dashboard = json.loads((COMPOSE.parent / "grafana" / "dashboards" / "ppo-telemetry.json").read_text())
    assert all(target["datasource"]["uid"] == datasource["uid"] for panel in dashboard["panels"] for target in panel["targets"])


def exported_names() -> set[str]:
    """Every series name a consumer's exporter can serve: its families as the exposition format names them
    (a histogram's _bucket, _count and _sum), the Alertmanager poster's counter included."""
    from consumers.alertmanager import _posts_counter
    from consumers.metrics import ConsumerMetrics

    metrics = ConsumerMetrics("watch")
    _posts_counter(metrics.registry)
    names = set()
    for family in metrics.registry.collect():
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_count", f"{family.name}_sum"}
        elif family.type == "counter":
            names.add(f"{family.name}_total")
        else:
            names.add(family.name)
    return names


def test_the_dashboard_queries_only_metric_names_the_exporter_serves():
    names = exported_names()
    used = {name for expr in dashboard_queries() for name in re.findall(r"\bppo_telemetry_[a-z_]+", expr)}
    assert used and used <= names, used - names
    families = {re.sub(r"_(bucket|count|sum)$", "", name) for name in used}
    # every metric the exporter serves has a panel
    assert {re.sub(r"_(bucket|count|sum)$", "", name) for name in names} <= families
