"""compose/: the broker in KRaft mode, the three consumers with commands our CLI accepts, and Prometheus,
Alertmanager and Grafana configured for them (configs checked by the real promtool and amtool)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from ppo_telemetry.cli import build_parser

COMPOSE = Path(__file__).resolve().parents[2] / "compose" / "docker-compose.yml"


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# compose's interpolation: ${NAME}, ${NAME:-default}, ${NAME:?message} (refuses to run when NAME is unset or empty)
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:-|:\?)([^}]*))?\}")
ENVIRONMENT = {"PPO_TELEMETRY_BASELINE_RUN": "Conflict-v0.seed0.20261202T120000Z"}  # set where compose runs


class ComposeRefuses(Exception):
    """A ${NAME:?message} whose variable is not set: compose prints the message and starts nothing."""


def interpolate(text: str, environment: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name, operator, word = match.groups()
        if environment.get(name):
            return environment[name]
        if operator == ":?":
            raise ComposeRefuses(f"{name}: {word}")
        return word if operator == ":-" else ""

    return VARIABLE.sub(value, text)


def command_of(service: dict, environment: dict[str, str] = ENVIRONMENT) -> list[str]:
    return [interpolate(part, environment) for part in service["command"]]


def mounts_of(service: dict, environment: dict[str, str] = ENVIRONMENT) -> dict[str, str]:
    """A service's volumes, container path → host path or volume name."""
    pairs = [interpolate(volume, environment).split(":")[:2] for volume in service.get("volumes", [])]
    return {target: source for source, target in pairs}


CONSUMERS = {"validator": "validate", "drift": "drift", "watch": "watch"}
SECURE_CONSUMERS = {f"{name}-secure": group for name, group in CONSUMERS.items()}


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
        args = build_parser().parse_args(command_of(service))
        assert args.command == "consume"
        groups[name] = args.group
        bootstrap = service["environment"]["PPO_TELEMETRY_KAFKA_BOOTSTRAP_SERVERS"]
        assert bootstrap in advertised  # the consumers reach the broker on a listener it advertises
        assert service["stop_signal"] == "SIGTERM" and service["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert groups == {"validator": "validate", "drift": "drift", "watch": "watch"}


def test_the_brokers_data_is_on_the_mounted_volume():
    compose = load()
    for name in ("kafka", "kafka-secure"):
        kafka = compose["services"][name]
        mounts = mounts_of(kafka)
        assert mounts[kafka["environment"]["KAFKA_LOG_DIRS"]] in compose["volumes"], name  # a named volume


def test_every_group_serves_metrics_and_watch_posts_to_the_stacks_alertmanager():
    services = load()["services"]
    for name in ("validator", "drift", "watch"):
        args = build_parser().parse_args(command_of(services[name]))
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


def test_every_service_on_our_image_in_every_profile_runs_a_command_the_cli_accepts():
    services = load()["services"]
    ours = {name: service for name, service in services.items() if "build" in service}
    assert set(ours) == set(CONSUMERS) | set(SECURE_CONSUMERS)
    for name, service in ours.items():
        assert service["build"] == {"context": "..", "dockerfile": "compose/Dockerfile"}, name
        args = build_parser().parse_args(command_of(service))
        assert args.command == "consume" and args.group == {**CONSUMERS, **SECURE_CONSUMERS}[name], name
        assert args.metrics_port == 9464 and service["stop_signal"] == "SIGTERM", name
        if args.kafka_config is not None:  # the settings file is in a directory mounted into the container
            assert any(args.kafka_config.startswith(target + "/") for target in mounts_of(service)), name


def test_compose_refuses_to_start_without_a_baseline_run_and_drift_then_waits_for_it():
    services = load()["services"]
    for name, service in services.items():
        if name in ("drift", "drift-secure"):
            with pytest.raises(ComposeRefuses, match="PPO_TELEMETRY_BASELINE_RUN"):
                command_of(service, {})
            args = build_parser().parse_args(command_of(service))
            assert args.baseline_run == [ENVIRONMENT["PPO_TELEMETRY_BASELINE_RUN"]] and not args.baseline
            assert args.wait_for_baseline  # on a fresh broker: waits, instead of exiting 2 and restarting
        elif "command" in service:
            command_of(service, {})  # nothing else needs a variable


# The local broker's property ↔ the apache/kafka image's variable (KAFKA_ + the name upper-cased, dots as
# underscores): the settings a consumer's behaviour depends on, the same on a Docker host as in the tests.
# Not compared: listeners, node ids, data directories, and the internal topics' partition counts (10 for
# a small machine's quick start; compose keeps Kafka's 50).
BROKER_SETTINGS = {
    "process.roles": "KAFKA_PROCESS_ROLES",
    "controller.listener.names": "KAFKA_CONTROLLER_LISTENER_NAMES",
    "offsets.topic.replication.factor": "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
    "transaction.state.log.replication.factor": "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
    "transaction.state.log.min.isr": "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    "share.coordinator.state.topic.replication.factor": "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
    "share.coordinator.state.topic.min.isr": "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
    "default.replication.factor": "KAFKA_DEFAULT_REPLICATION_FACTOR",
    "min.insync.replicas": "KAFKA_MIN_INSYNC_REPLICAS",
    "unclean.leader.election.enable": "KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE",
    "group.initial.rebalance.delay.ms": "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS",
    "group.min.session.timeout.ms": "KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS",
    "auto.create.topics.enable": "KAFKA_AUTO_CREATE_TOPICS_ENABLE",
}


def local_broker_properties(tmp_path: Path) -> dict[str, str]:
    """server.properties as `ppo-telemetry broker start` renders it for one node."""
    from ppo_telemetry.broker import LocalBroker

    broker = LocalBroker(port=29092, home=tmp_path, nodes=1)
    text = broker.render_properties(broker.node_list[0])
    pairs = [line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def test_the_compose_brokers_run_the_settings_of_the_local_broker(tmp_path):
    local = local_broker_properties(tmp_path)
    assert set(BROKER_SETTINGS) <= set(local)
    assert all(variable == "KAFKA_" + key.upper().replace(".", "_") for key, variable in BROKER_SETTINGS.items())
    for name in ("kafka", "kafka-secure"):
        environment = load()["services"][name]["environment"]
        differ = {key: (local[key], environment.get(variable)) for key, variable in BROKER_SETTINGS.items()
                  if str(environment.get(variable)).lower() != local[key].lower()}  # YAML's false is "false"
        assert not differ, (name, differ)


def listener_protocols(environment: dict) -> dict[str, str]:
    pairs = [entry.split(":") for entry in environment["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")]
    return dict(pairs)


def advertised(environment: dict) -> dict[str, str]:
    """Listener name → host:port it advertises."""
    return dict(entry.split("://") for entry in environment["KAFKA_ADVERTISED_LISTENERS"].split(","))


def test_the_secure_profile_serves_only_sasl_ssl_with_scram_sha_512_to_clients():
    services = load()["services"]
    # the plaintext stack stays the default: none of its services is in a profile
    default_stack = ("kafka", *CONSUMERS, "prometheus", "alertmanager", "grafana")
    assert all("profiles" not in services[name] for name in default_stack)
    secure = {name for name, service in services.items() if "secure" in service.get("profiles", [])}
    assert secure == {"kafka-secure", "kafka-secure-users", *SECURE_CONSUMERS}
    kafka = services["kafka-secure"]
    environment = kafka["environment"]
    protocols = listener_protocols(environment)
    for listener, address in advertised(environment).items():
        host = address.rsplit(":", 1)[0]
        # reachable from other containers or the host: SASL_SSL; plaintext only on the container's loopback
        assert protocols[listener] == "SASL_SSL" or host == "localhost", (listener, address)
    assert all(f"{listener}://localhost:" in environment["KAFKA_LISTENERS"]
               for listener, protocol in protocols.items() if protocol == "PLAINTEXT")
    assert environment["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    secrets = mounts_of(kafka)["/etc/kafka/secrets"]
    assert secrets == "./secrets"  # PPO_TELEMETRY_SECRETS_DIR, when set, names the user's directory
    chosen = mounts_of(kafka, {"PPO_TELEMETRY_SECRETS_DIR": "/srv/kafka-secrets"})
    assert chosen["/etc/kafka/secrets"] == "/srv/kafka-secrets"
    assert "/etc/kafka/secrets/" in environment["KAFKA_OPTS"]  # the broker's JAAS file
    assert environment["KAFKA_SSL_KEYSTORE_LOCATION"].startswith("/etc/kafka/secrets/")
    assert all(volume.endswith(":ro") for volume in kafka["volumes"] if "secrets" in volume)
    # every role of SPEC §11 gets its SCRAM credential before any consumer starts
    users = services["kafka-secure-users"]
    assert users["network_mode"] == "service:kafka-secure"
    script = " ".join(users["command"])
    assert "SCRAM-SHA-512" in script and "trainer validator drift watch admin" in script
    client_listeners = {address: listener for listener, address in advertised(environment).items()}
    for name in SECURE_CONSUMERS:
        service = services[name]
        assert service["depends_on"] == {"kafka-secure-users": {"condition": "service_completed_successfully"}}
        bootstrap = service["environment"]["PPO_TELEMETRY_KAFKA_BOOTSTRAP_SERVERS"]
        assert protocols[client_listeners[bootstrap]] == "SASL_SSL", name
        args = build_parser().parse_args(command_of(service))
        assert args.kafka_config.endswith(f"/{name.removesuffix('-secure')}.toml")  # its own principal
        # Prometheus finds it under the plaintext service's name, as it finds that service's replicas
        assert service["networks"]["default"]["aliases"] == [name.removesuffix("-secure")]
    # the plaintext broker has no SASL, and the two stacks do not share a host port or a data volume
    assert "KAFKA_SASL_ENABLED_MECHANISMS" not in services["kafka"]["environment"]
    assert set(kafka["ports"]).isdisjoint(services["kafka"]["ports"])
    assert mounts_of(kafka)["/var/lib/kafka/data"] != mounts_of(services["kafka"])["/var/lib/kafka/data"]
