"""`broker start --secure` on the real broker (SPEC §11, issue 12): SASL_SSL with SCRAM-SHA-512 refuses a
client without credentials or with a wrong password in one clear line, each role does its own work
through `--kafka-config` and nothing of another's, and no password shows in any output or log file.

The module starts a secured single-node broker of its own (the session's broker is plaintext); the
three-node cluster is the last test's own. Every subprocess's output is kept, so the last tests can
look for the passwords in all of it and in every file the brokers wrote outside `secrets/`.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from kafka_testing import committed_offsets, end_offsets, free_ports, read_topic, running, wait_for

from avro_schemas.topics import DEFAULT_NAMESPACE as names
from kafka_io import ensure_topics, quiet_logger
from ppo_telemetry.broker import LocalBroker
from ppo_telemetry.broker_security import ROLES
from ppo_telemetry.kafka_probe import ListenerMismatchError, check_listener

pytestmark = pytest.mark.integration

HANG_GUARD_SECONDS = 240
OUTPUTS: list[str] = []  # everything the module's subprocesses printed, for the leak check


def cli(*args: str, timeout: float = HANG_GUARD_SECONDS, **environment: str) -> subprocess.CompletedProcess[str]:
    """`ppo-telemetry ARGS` with no Kafka settings from the environment (but `environment`); its output is kept
    for the leak check."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("PPO_TELEMETRY_KAFKA_") and name != "KAFKA_BOOTSTRAP_SERVERS"} | environment
    proc = subprocess.run([sys.executable, "-m", "ppo_telemetry", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    OUTPUTS.append(proc.stdout + proc.stderr)
    return proc


@pytest.fixture(scope="module")
def secured() -> Iterator[LocalBroker]:
    """A secured single-node broker of this module's own, started through the CLI."""
    home = Path(tempfile.mkdtemp(prefix="ppo-telemetry-secure-broker-"))
    broker = LocalBroker(port=free_ports(29600, 2), home=home, secure=True)
    with running(broker, home):
        yield broker


def passwords(broker: LocalBroker) -> dict[str, str]:
    return json.loads(broker.secrets.credentials_file.read_text())


def client(broker: LocalBroker, role: str, **extra: object) -> dict[str, object]:
    return {**broker.client_config(role), "logger": quiet_logger(), **extra}


def test_the_secrets_are_readable_by_their_owner_only(secured: LocalBroker) -> None:
    directory = secured.secrets.directory
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    private = [*directory.iterdir(), *(node.run_dir / "server.properties" for node in secured.node_list)]
    assert {path.name for path in directory.iterdir()} >= {f"{role}.toml" for role in ROLES} | {"ca.pem", "broker.pem"}
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not any(path.name.endswith(".key") for path in directory.rglob("*"))  # the CA's key is gone


def test_a_client_without_credentials_is_refused(secured: LocalBroker) -> None:
    # plaintext: the TLS listener closes the connection; the CLI says so in one line
    proc = cli("consume", "validate", "--bootstrap-servers", secured.bootstrap)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "(SSL or SASL_SSL)" in lines[0], proc.stderr
    # TLS that trusts the CA but does not authenticate: still nothing is served
    with pytest.raises(ListenerMismatchError):
        check_listener({"bootstrap.servers": secured.bootstrap, "security.protocol": "SSL",
                        "ssl.ca.location": str(secured.secrets.ca_file)}, timeout=60.0)


def test_a_wrong_password_is_refused_in_one_clear_line(secured: LocalBroker, tmp_path: Path) -> None:
    settings = secured.settings_file("validator").read_text()
    real = passwords(secured)["validator"]
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(settings.replace(real, "not-the-Password-9"))

    proc = cli("consume", "validate", "--kafka-config", str(wrong))

    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "refused the credentials of sasl_username 'validator'" in lines[0]
    assert "check the username and password" in lines[0]
    assert "not-the-Password-9" not in proc.stderr + proc.stdout and real not in proc.stderr + proc.stdout


@pytest.fixture(scope="module")
def all_topics(secured: LocalBroker) -> None:
    """Every SPEC §4 topic exists (made by the admin), so refusals are about rights, not absence."""
    ensure_topics(secured.client_config("admin"),
                  {topic: (1, {}) for topic in (names.dlq_topic, names.drift_topic, names.alerts_topic)})


def delivery_error(config: dict[str, object], topic: str) -> KafkaError | None:
    errors: list[KafkaError | None] = []
    producer = Producer({**config, "delivery.timeout.ms": 20000})
    producer.produce(topic, b"x", on_delivery=lambda err, msg: errors.append(err))
    producer.flush(60)
    assert errors, f"no delivery report for {topic}"
    return errors[0]


def fetch_error(config: dict[str, object], topic: str) -> KafkaError:
    consumer = Consumer({**config, "group.id": f"probe-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    try:
        def first_error() -> KafkaError | None:
            message = consumer.poll(0.5)
            return message.error() if message is not None and message.error() is not None else None

        return wait_for(first_error, 60, f"an error reading {topic}")
    finally:
        consumer.close()


@pytest.mark.usefixtures("all_topics")
def test_the_trainer_cannot_read_alerts_or_write_the_dlq(secured: LocalBroker) -> None:
    trainer = client(secured, "trainer")
    assert delivery_error(trainer, names.dlq_topic).code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert fetch_error(trainer, names.alerts_topic).code() in (
        KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED)
    # what it may do: write epochs
    assert delivery_error(trainer, names.epochs_topic) is None


@pytest.mark.usefixtures("all_topics")
def test_the_validator_cannot_write_alerts(secured: LocalBroker) -> None:
    validator = client(secured, "validator")
    assert delivery_error(validator, names.alerts_topic).code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert delivery_error(validator, names.epochs_topic).code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


@pytest.mark.usefixtures("all_topics")
def test_the_watch_group_cannot_commit_the_validators_group_or_use_its_transactional_id(secured: LocalBroker) -> None:
    watch = client(secured, "watch")
    admin = AdminClient(watch)
    commit = ConsumerGroupTopicPartitions(names.validator_group, [TopicPartition(names.epochs_topic, 0, 0)])
    for future in admin.alter_consumer_group_offsets([commit], request_timeout=30).values():
        with pytest.raises(KafkaException) as refused:
            future.result()
        assert refused.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED

    producer = Producer({**watch, "transactional.id": f"{names.validator_group}-0"})
    with pytest.raises(KafkaException) as refused:
        producer.init_transactions(30)
    assert refused.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    # its own transactional id is served
    Producer({**watch, "transactional.id": f"{names.watch_group}-probe"}).init_transactions(60)


def test_each_role_does_its_work_through_its_settings_file(secured: LocalBroker, tmp_path: Path) -> None:
    run_id = f"secure-{uuid.uuid4().hex[:8]}"
    trained = cli("train", "--kafka", secured.bootstrap, "--kafka-config", str(secured.settings_file("trainer")),
                  "--env", "CartPole-v1", "--total-steps", "512", "--run-id", run_id)
    assert trained.returncode == 0, trained.stderr

    admin = secured.client_config("admin")
    ends = end_offsets(admin, names.epochs_topic)
    groups = {  # each group as its own principal, the drift group against the run itself as its baseline
        "validate": (names.validator_group, "validator", []),
        "drift": (names.drift_group, "drift", ["--baseline-run", run_id]),
        "watch": (names.watch_group, "watch", []),
    }
    logs = {name: tmp_path / f"{name}.log" for name in groups}
    procs = {}
    try:
        for name, (_, role, extra) in groups.items():
            with open(logs[name], "w") as out:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "ppo_telemetry", "consume", name, "--kafka-config",
                     str(secured.settings_file(role)), "--instance-id", "secure", *extra],
                    stdout=out, stderr=subprocess.STDOUT,
                )

        def caught_up(group: str) -> bool:
            committed = committed_offsets(admin, group, names.epochs_topic)
            # a partition that holds nothing has no commit
            return all(committed.get(partition, -1) >= end for partition, end in ends.items() if end > 0)

        for name, (group, _, _) in groups.items():
            wait_for(lambda name=name, group=group: procs[name].poll() is not None or caught_up(group), 120,
                     f"consume {name} to commit the run")
            assert procs[name].poll() is None, logs[name].read_text()
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(60)
    for name, proc in procs.items():
        OUTPUTS.append(logs[name].read_text())
        assert proc.returncode == 0, logs[name].read_text()

    report = tmp_path / "report.html"
    reported = cli("report", "--kafka-config", str(secured.settings_file("admin")), "--run-id", run_id, "-o", str(report))
    assert reported.returncode == 0, reported.stderr
    assert report.stat().st_size > 0
    assert read_topic(secured.client_config("admin"), names.epochs_topic, {run_id.encode()})


def test_the_demo_runs_as_the_admin_through_its_settings_file(secured: LocalBroker) -> None:
    proc = cli("demo", "--kafka-config", str(secured.settings_file("admin")), timeout=600)

    assert proc.returncode == 0, proc.stderr
    assert f"using the Kafka broker at {secured.bootstrap}" in proc.stdout
    assert "demo finished" in proc.stdout and "deleted the topics and groups of namespace" in proc.stdout
    logs = [line.split("their log: ", 1)[1].rstrip("):") for line in proc.stdout.splitlines() if "their log: " in line]
    assert logs, proc.stdout
    OUTPUTS.extend(Path(log).read_text() for log in logs)


def test_the_watch_principal_pages_alertmanager_from_its_own_poster_group(
    secured: LocalBroker, system_program, tmp_path: Path,
) -> None:
    """`consume watch --alertmanager` as the watch role: its group, the alerts it writes, and the poster's own
    group (`<watch group>.alertmanager`) reading them back, all within the watch principal's ACLs."""
    from alertmanager_testing import Alertmanager, Webhook

    from ppo_telemetry.demo import synthetic_run
    from producer.kafka_sink import KafkaSink

    run_id = f"secure-alerts-{uuid.uuid4().hex[:8]}"
    sink = KafkaSink(client(secured, "trainer"))  # an unstable run: the test rules fire kl_spike (and more)
    for record in synthetic_run(run_id, 30, seed=5, unstable=True):
        sink.publish(record)
    sink.close()
    webhook = Webhook()
    manager = Alertmanager(system_program("prometheus-alertmanager", "prometheus-alertmanager"), tmp_path, webhook)
    manager.start()
    log = tmp_path / "watch.log"
    rules = Path(__file__).with_name("watch_rules.toml")
    with open(log, "w") as out:
        watch = subprocess.Popen(
            [sys.executable, "-m", "ppo_telemetry", "consume", "watch", "--kafka-config", str(secured.settings_file("watch")),
             "--rules", str(rules), "--instance-id", "pager", "--alertmanager", manager.url],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        admin = secured.client_config("admin")
        ends = end_offsets(admin, names.epochs_topic)

        def caught_up() -> bool:
            committed = committed_offsets(admin, names.watch_group, names.epochs_topic)
            return all(committed.get(partition, -1) >= end for partition, end in ends.items() if end > 0)

        wait_for(lambda: watch.poll() is not None or caught_up(), 120, "the watch group to commit the run")
        assert watch.poll() is None, log.read_text()
        transitions = read_topic(admin, names.alerts_topic, {run_id.encode()})
        assert transitions
        # every transition posted: Alertmanager counts what it received (an alert that fired and resolved within
        # one group_wait is never notified, so the webhook alone cannot tell), and what still fires is active
        wait_for(lambda: manager.received("firing") + manager.received("resolved") >= len(transitions), 120,
                 f"Alertmanager to receive the {len(transitions)} transitions")
        assert manager.active(run_id)
        poster = f"{names.watch_group}.alertmanager"
        last = transitions[-1]
        wait_for(lambda: committed_offsets(admin, poster, names.alerts_topic).get(last.partition(), -1) > last.offset(),
                 60, "the poster to commit what it posted")
    finally:
        watch.terminate()
        watch.wait(60)
        manager.stop()
        webhook.close()
        OUTPUTS.append(log.read_text())
    assert watch.returncode == 0, log.read_text()
    assert "not authorized" not in log.read_text().lower(), log.read_text()


def test_a_restarted_secured_broker_refuses_a_plaintext_start_and_keeps_its_credentials(
    secured: LocalBroker, tmp_path: Path,
) -> None:
    home = {"PPO_TELEMETRY_BROKER_HOME": str(secured.run_dir.parent)}
    port = str(secured.port)
    assert cli("broker", "stop", "--port", port, **home).returncode == 0
    plain = cli("broker", "start", "--port", port, **home)
    assert plain.returncode == 2 and len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    assert "holds a secured broker's data: start it with --secure" in plain.stderr
    again = cli("broker", "start", "--port", port, "--secure", **home)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == secured.bootstrap
    # the same CA, credentials and ACLs: the trainer's settings file works as before, and a client without
    # credentials is still refused
    run_id = f"secure-restart-{uuid.uuid4().hex[:8]}"
    trained = cli("train", "--kafka", secured.bootstrap, "--kafka-config", str(secured.settings_file("trainer")),
                  "--env", "CartPole-v1", "--total-steps", "512", "--run-id", run_id)
    assert trained.returncode == 0, trained.stderr
    assert read_topic(secured.client_config("admin"), names.epochs_topic, {run_id.encode()})
    assert delivery_error(client(secured, "trainer"), names.alerts_topic) is not None
    refused = cli("consume", "validate", "--bootstrap-servers", secured.bootstrap)
    assert refused.returncode == 2 and "(SSL or SASL_SSL)" in refused.stderr, refused.stderr


def test_no_password_shows_in_any_output_or_log_file(secured: LocalBroker) -> None:
    secrets = passwords(secured)
    assert OUTPUTS
    for text in OUTPUTS:
        for name, password in secrets.items():
            assert password not in text, f"the {name} password in a command's output"
    # every file the brokers wrote, but the secrets and the (0600) settings they run with
    for path in secured.run_dir.rglob("*"):
        if not path.is_file() or secured.secrets.directory in path.parents or path.name == "server.properties":
            continue
        content = path.read_bytes()
        for name, password in secrets.items():
            assert password.encode() not in content, f"the {name} password in {path}"


def test_a_secured_three_node_cluster_serves_the_roles_through_the_cli(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_ports(29640, 6)
    env = {**{name: value for name, value in os.environ.items() if not name.startswith("PPO_TELEMETRY_KAFKA_")},
           "PPO_TELEMETRY_BROKER_HOME": str(home)}

    def broker_cli(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "ppo_telemetry", "broker", *args, "--port", str(port)],
                              env=env, capture_output=True, text=True, timeout=HANG_GUARD_SECONDS)
        OUTPUTS.append(proc.stdout + proc.stderr)
        return proc

    cluster = LocalBroker(port=port, home=home)
    try:
        started = broker_cli("start", "--secure", "--nodes", "3")
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip().splitlines()[-1] == cluster.bootstrap
        assert cluster.is_secure and cluster.node_count == 3
        status = broker_cli("status")
        assert status.returncode == 0 and status.stdout.strip() == cluster.bootstrap, status.stderr

        run_id = f"secure3-{uuid.uuid4().hex[:8]}"
        trained = cli("train", "--kafka", cluster.bootstrap, "--kafka-config", str(cluster.settings_file("trainer")),
                      "--env", "CartPole-v1", "--total-steps", "256", "--run-id", run_id)
        assert trained.returncode == 0, trained.stderr
        assert len(read_topic(cluster.client_config("admin"), names.epochs_topic, {run_id.encode()})) > 0
        # the roles' rights hold on every node: the trainer still cannot write the DLQ
        ensure_topics(cluster.client_config("admin"), {names.dlq_topic: (1, {})})
        assert delivery_error(client(cluster, "trainer"), names.dlq_topic).code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        # a secured cluster's data does not start as a plaintext one
        refused = broker_cli("start")
        assert refused.returncode == 2 and "start it with --secure" in refused.stderr, refused.stderr

        secrets = passwords(cluster)
        for text in OUTPUTS:
            assert not any(password in text for password in secrets.values()), "a password in a command's output"
        for path in home.rglob("*"):
            if path.is_file() and cluster.secrets.directory not in path.parents and path.name != "server.properties":
                for name, password in secrets.items():
                    assert password.encode() not in path.read_bytes(), f"the {name} password in {path}"
    finally:
        cluster.stop()
