"""`ppo_telemetry.broker_security`: the secured broker's ACLs, settings and files, without a broker (the
real secured broker is tests/integration/test_secure_broker.py's)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from avro_schemas.topics import DEFAULT_NAMESPACE as names
from avro_schemas.topics import state_topic
from ppo_telemetry.broker import LocalBroker
from ppo_telemetry.broker_security import (
    ROLES,
    SUPER_USERS,
    BrokerSecrets,
    private_file,
    role_acls,
)
from ppo_telemetry.kafka_settings import KafkaSettings


def rights(principal: str) -> set[tuple[str, str, str, bool]]:
    return {(grant.kind, grant.name, grant.operation, grant.prefixed) for grant in role_acls() if grant.principal == principal}


def test_the_trainer_may_write_epochs_and_schemas_only() -> None:
    written = {name for kind, name, operation, _ in rights("trainer") if operation == "WRITE"}
    assert written == {names.epochs_topic, names.schemas_topic}
    assert not any(operation == "READ" for _, _, operation, _ in rights("trainer"))


def test_each_group_reads_the_inputs_and_writes_only_its_own_outputs() -> None:
    for role, group, output in (("validator", names.validator_group, names.dlq_topic),
                                ("drift", names.drift_group, names.drift_topic),
                                ("watch", names.watch_group, names.alerts_topic)):
        granted = rights(role)
        assert {name for kind, name, operation, _ in granted if kind == "topic" and operation == "WRITE"} == {
            output, state_topic(group)}
        assert ("topic", names.epochs_topic, "READ", False) in granted
        assert {name for kind, name, operation, _ in granted if kind == "group" and operation == "READ"} <= {
            group, f"{group}.alertmanager"}
        assert {(name, prefixed) for kind, name, _, prefixed in granted if kind == "transactional_id"} == {(f"{group}-", True)}


def test_no_acl_names_the_super_users() -> None:
    assert not {grant.principal for grant in role_acls()} & set(SUPER_USERS)


def test_a_private_file_is_its_owners_alone(tmp_path: Path) -> None:
    path = private_file(tmp_path / "sub" / "secret.txt", "x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_each_roles_settings_file_is_private_and_loads_as_its_kafka_settings(tmp_path: Path) -> None:
    secrets = BrokerSecrets(tmp_path)
    secrets.write_settings_files("127.0.0.1:29600")
    passwords = json.loads(secrets.credentials_file.read_text())
    assert stat.S_IMODE(secrets.directory.stat().st_mode) == 0o700
    for role in ROLES:
        path = secrets.settings_file(role)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        settings = KafkaSettings.from_toml(path)
        config = settings.librdkafka_config()
        assert config["security.protocol"] == "SASL_SSL" and config["sasl.mechanism"] == "SCRAM-SHA-512"
        assert config["sasl.username"] == role and config["sasl.password"] == passwords[role]
        assert passwords[role] not in repr(settings)
    assert len(set(passwords.values())) == len(passwords)  # every principal its own password


def test_the_certificates_are_made_once_and_the_ca_key_is_not_kept(tmp_path: Path) -> None:
    secrets = BrokerSecrets(tmp_path)
    secrets.ensure_certificates()
    keystore = secrets.keystore_file.read_text()
    assert "BEGIN PRIVATE KEY" in keystore and keystore.count("BEGIN CERTIFICATE") == 2
    assert {path.name for path in secrets.directory.iterdir()} == {"broker.pem", "ca.pem"}
    secrets.ensure_certificates()
    assert secrets.keystore_file.read_text() == keystore


def test_the_secured_properties_have_no_plaintext_listener_and_keep_the_rest(tmp_path: Path) -> None:
    plain = LocalBroker(port=29600, home=tmp_path / "plain")
    secured = LocalBroker(port=29600, home=tmp_path / "secure", secure=True)
    plain_text = plain.render_properties(plain.node_list[0])
    text = secured.render_properties(secured.node_list[0])
    settings = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))

    assert settings["listener.security.protocol.map"] == "SECURE:SASL_SSL,CONTROLLER:SSL"
    assert settings["allow.everyone.if.no.acl.found"] == "false"
    assert settings["authorizer.class.name"].endswith("StandardAuthorizer")
    assert settings["listener.name.controller.ssl.client.auth"] == "required"
    assert settings["min.insync.replicas"] == "1" and settings["auto.create.topics.enable"] == "false"
    assert sum(line.startswith("listeners=") for line in text.splitlines()) == 1
    assert "SASL" not in plain_text  # without --secure the broker is exactly as before


def test_a_secured_run_directory_starts_only_secured_and_a_plaintext_one_only_plaintext(tmp_path: Path) -> None:
    import pytest

    from ppo_telemetry.broker import BrokerError

    secured = LocalBroker(port=29600, home=tmp_path / "a")
    secured.secrets.passwords()  # what a first `start --secure` leaves, even one that failed later
    with pytest.raises(BrokerError, match="start it with --secure"):
        LocalBroker(port=29600, home=tmp_path / "a", secure=False)._check_layout()
    assert LocalBroker(port=29600, home=tmp_path / "a").is_secure  # status and stop: as the directory says

    (tmp_path / "b" / "29600" / "data").mkdir(parents=True)
    with pytest.raises(BrokerError, match="holds a plaintext broker's data"):
        LocalBroker(port=29600, home=tmp_path / "b", secure=True)._check_layout()
