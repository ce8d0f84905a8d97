"""The secured local broker of `broker start --secure` (SPEC §11, issue 12): TLS material, SCRAM
credentials, the roles' ACLs and the clients' settings files.

What a secured run directory holds, beside the broker's own files (`broker.py`):

- `secrets/` (0700), every file in it 0600:
  - `ca.pem`: the CA made at the first start (its private key is deleted once it has signed the broker's
    certificate: nothing signs anything later, so nothing needs it);
  - `broker.pem`: the broker's private key (PKCS#8, unencrypted) and its certificate (CN `broker`,
    names `localhost` and `127.0.0.1`), the keystore of every node (`ssl.keystore.type=PEM`);
  - `credentials.json`: each principal's SCRAM-SHA-512 password (random, 32 bytes), the source the
    other files are written from;
  - `<role>.toml` for `trainer`, `validator`, `drift`, `watch`, `admin`: that role's `[kafka]` settings
    (`--kafka-config`): SASL_SSL, SCRAM-SHA-512, its name and password, the CA, the bootstrap list.
- the nodes' `server.properties` (0600: the inter-broker login holds the `broker` principal's password).

Listeners (decided in docs/deployment.md, "A secured cluster"): clients and the brokers among themselves
use one SASL_SSL listener (SCRAM-SHA-512; the brokers as principal `broker`); the KRaft controllers use
mutual TLS (`ssl.client.auth=required`): only a holder of `broker.pem` gets in, as principal `broker`
(`ssl.principal.mapping.rules`). SCRAM cannot serve the controller listener: the credentials live in
the metadata the controllers serve. `broker` and `admin` are super users; every other principal may do
only what `role_acls` grants (StandardAuthorizer, `allow.everyone.if.no.acl.found=false`).

SCRAM credentials are stored at format time (`kafka.tools.StorageTool format --add-scram`); the tool's
arguments go through a 0600 Java argument file, not its command line, which every local user can read.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from avro_schemas.errors import TelemetryError
from avro_schemas.topics import DEFAULT_NAMESPACE, Namespace, state_topic

__all__ = [
    "ROLES", "PRINCIPALS", "SUPER_USERS", "READER_GROUP", "SecurityError", "Grant", "BrokerSecrets",
    "role_acls", "server_properties", "private_file", "apply_acls",
]

ROLES = ("trainer", "validator", "drift", "watch", "admin")
"""The client principals of SPEC §11, one per role."""

PRINCIPALS = (*ROLES, "broker")
"""Every SCRAM principal: the roles and the brokers' own (inter-broker) one."""

SUPER_USERS = ("broker", "admin")
"""Principals the authorizer lets do anything: the brokers themselves and the operator."""

SCRAM = "SCRAM-SHA-512"
READER_GROUP = "ppo-telemetry-reader"  # kafka_io._reader's group id
CERT_DAYS = 825  # a development CA: long enough not to expire under a kept broker, short of forever


class SecurityError(TelemetryError):
    """The secured broker's certificates, credentials or ACLs cannot be made or applied."""


@dataclass(frozen=True, slots=True)
class Grant:
    """One ALLOW ACL: `principal` may do `operation` on the resource (`kind` `topic`, `group` or
    `transactional_id`) named `name` (`prefixed`: every name starting with it)."""

    principal: str
    kind: str
    name: str
    operation: str
    prefixed: bool = False


def private_file(path: Path, text: str) -> Path:
    """Write `text` to `path` so that only its owner can ever read it (created 0600, not chmodded after)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    return path


def role_acls(namespace: Namespace = DEFAULT_NAMESPACE) -> list[Grant]:
    """The ACLs of SPEC §11 on `namespace`'s names: the trainer writes epochs and schemas; each consumer
    group reads them and writes its own outputs, state topic, group and transactional ids. The
    `admin` and `broker` super users need none."""
    grants: list[Grant] = []

    def allow(principal: str, kind: str, name: str, operations: Iterable[str], prefixed: bool = False) -> None:
        grants.extend(Grant(principal, kind, name, operation, prefixed) for operation in operations)

    inputs = (namespace.epochs_topic, namespace.schemas_topic)
    for topic in inputs:
        allow("trainer", "topic", topic, ("DESCRIBE", "CREATE", "WRITE"))
    for role, group, outputs in (
        ("validator", namespace.validator_group, (namespace.dlq_topic,)),
        ("drift", namespace.drift_group, (namespace.drift_topic,)),
        ("watch", namespace.watch_group, (namespace.alerts_topic,)),
    ):
        for topic in inputs:
            allow(role, "topic", topic, ("DESCRIBE", "READ"))
        # its outputs and state: created by the group at its first start, read back on restore; their
        # configs read for the largest message a batch may hold
        for topic in (*outputs, state_topic(group)):
            allow(role, "topic", topic, ("DESCRIBE", "DESCRIBE_CONFIGS", "CREATE", "WRITE", "READ"))
        allow(role, "group", group, ("DESCRIBE", "READ"))
        # kafka_io's group-less reader (a baseline, a topic's end) names a group it never joins or commits
        # to; librdkafka still looks up its coordinator, which takes DESCRIBE (READ would allow commits)
        allow(role, "group", READER_GROUP, ("DESCRIBE",))
        # `<group>-<instance id>` (consumers/runner.py): the prefix ends in '-' so that it cannot cover a
        # group whose name merely starts the same
        allow(role, "transactional_id", f"{group}-", ("DESCRIBE", "WRITE"), prefixed=True)
        if role == "watch":
            # `consume watch --alertmanager` posts from its own group over the alerts topic
            allow(role, "group", f"{group}.alertmanager", ("DESCRIBE", "READ"))
    return grants


def server_properties(*, port: int, controller_port: int, run_dir: Path, secrets_dir: Path, broker_password: str) -> dict[str, str]:
    """The settings a node's `server.properties` gets in place of the plaintext listeners."""
    jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="broker" '
            f'password="{broker_password}";')
    keystore = str(secrets_dir / "broker.pem")
    truststore = str(secrets_dir / "ca.pem")
    return {
        "listeners": f"SECURE://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SECURE://127.0.0.1:{port}",
        "inter.broker.listener.name": "SECURE",
        "listener.security.protocol.map": "SECURE:SASL_SSL,CONTROLLER:SSL",
        "sasl.enabled.mechanisms": SCRAM,
        "sasl.mechanism.inter.broker.protocol": SCRAM,
        "listener.name.secure.sasl.enabled.mechanisms": SCRAM,
        f"listener.name.secure.{SCRAM.lower()}.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": keystore,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": truststore,
        "ssl.endpoint.identification.algorithm": "https",
        # the controllers: mutual TLS, the certificate's CN as the principal (User:broker)
        "listener.name.controller.ssl.client.auth": "required",
        "ssl.principal.mapping.rules": "RULE:^CN=([^,]+).*$/$1/,DEFAULT",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": ";".join(f"User:{name}" for name in SUPER_USERS),
    }


class BrokerSecrets:
    """The `secrets/` directory of a secured broker's run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.directory = run_dir / "secrets"

    @property
    def credentials_file(self) -> Path:
        return self.directory / "credentials.json"

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def keystore_file(self) -> Path:
        return self.directory / "broker.pem"

    def exists(self) -> bool:
        return self.credentials_file.is_file()

    def settings_file(self, role: str) -> Path:
        """The `--kafka-config` file of `role`."""
        return self.directory / f"{role}.toml"

    def passwords(self) -> dict[str, str]:
        """Each principal's password (made on the first call)."""
        try:
            return json.loads(self.credentials_file.read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            raise SecurityError(f"cannot read {self.credentials_file}: {exc.__class__.__name__}") from None
        self._private_directory()
        made = {name: secrets.token_urlsafe(32) for name in PRINCIPALS}
        private_file(self.credentials_file, json.dumps(made, indent=2) + "\n")
        return made

    def _private_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)

    def ensure_certificates(self) -> None:
        """A CA and the broker's certificate signed by it, made once (kept across restarts)."""
        if self.ca_file.is_file() and self.keystore_file.is_file():
            return
        self._private_directory()
        with tempfile.TemporaryDirectory(dir=self.directory) as work_dir:
            work = Path(work_dir)
            ca_key, ca_cert = work / "ca.key", work / "ca.pem"
            key, request, cert = work / "broker.key", work / "broker.csr", work / "broker.crt"
            extensions = work / "broker.ext"
            extensions.write_text(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
            )
            old_umask = os.umask(0o077)  # every key file is the owner's alone from its creation
            try:
                _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(ca_key))
                _openssl("req", "-x509", "-new", "-key", str(ca_key), "-sha256", "-days", str(CERT_DAYS),
                         "-subj", "/CN=ppo-telemetry local CA", "-out", str(ca_cert))
                _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key))
                _openssl("req", "-new", "-key", str(key), "-subj", "/CN=broker", "-out", str(request))
                _openssl("x509", "-req", "-in", str(request), "-CA", str(ca_cert), "-CAkey", str(ca_key),
                         "-CAcreateserial", "-days", str(CERT_DAYS), "-sha256", "-extfile", str(extensions),
                         "-out", str(cert))
            finally:
                os.umask(old_umask)
            private_file(self.keystore_file, key.read_text() + cert.read_text() + ca_cert.read_text())
            private_file(self.ca_file, ca_cert.read_text())
        # the temporary directory, the CA's key in it, is gone: nothing can sign another certificate

    def client_settings(self, role: str, bootstrap: str) -> dict[str, str]:
        """`role`'s librdkafka settings (password revealed: for programs, not for logs)."""
        return {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": SCRAM,
            "sasl.username": role,
            "sasl.password": self.passwords()[role],
            "ssl.ca.location": str(self.ca_file),
        }

    def write_settings_files(self, bootstrap: str) -> list[Path]:
        """Each role's `[kafka]` settings file (0600), for `--kafka-config`."""
        written = []
        for role in ROLES:
            settings = self.client_settings(role, bootstrap)
            lines = [
                f"# ppo-telemetry broker start --secure: the {role} principal's settings (--kafka-config)",
                "[kafka]",
                f'bootstrap_servers = "{bootstrap}"',
                'security_protocol = "SASL_SSL"',
                f'sasl_mechanism = "{SCRAM}"',
                f'sasl_username = "{role}"',
                f'sasl_password = "{settings["sasl.password"]}"',
                f"ssl_ca_location = {json.dumps(settings['ssl.ca.location'])}",
            ]
            written.append(private_file(self.settings_file(role), "\n".join(lines) + "\n"))
        return written

    def scram_arguments(self) -> list[str]:
        """`--add-scram` arguments of `StorageTool format` for every principal (for an argument file only)."""
        arguments = []
        for name, password in self.passwords().items():
            arguments += ["--add-scram", f'{SCRAM}=[name={name},password={password}]']
        return arguments


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SecurityError(f"openssl {args[0]} failed: {last[:300]}")


def apply_acls(config: dict[str, str], grants: list[Grant], timeout: float = 30.0) -> None:
    """Create `grants` through the admin principal's `config` (creating an existing ACL is a no-op)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    from kafka_io import quiet_logger, reason

    kinds = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP, "transactional_id": ResourceType.TRANSACTIONAL_ID}
    bindings = [
        AclBinding(kinds[grant.kind], grant.name,
                   ResourcePatternType.PREFIXED if grant.prefixed else ResourcePatternType.LITERAL,
                   f"User:{grant.principal}", "*", AclOperation[grant.operation], AclPermissionType.ALLOW)
        for grant in grants
    ]
    admin = AdminClient({**config, "logger": quiet_logger()})
    for binding, future in admin.create_acls(bindings, request_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            raise SecurityError(f"cannot create the ACL {binding}: {reason(exc)}") from None
