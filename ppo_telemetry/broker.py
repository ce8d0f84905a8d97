"""A local Apache Kafka broker (KRaft combined mode) for machines without Docker: one node, or a
replicated cluster of three on loopback.

`ppo-telemetry broker start|stop|status [--port P] [--nodes N]`. The jars come from Maven Central through
`compose/kafka-local/pom.xml` (`mvn dependency:copy-dependencies`, once; later starts reuse them).
Each port has its own run directory, `compose/kafka-local/run/<port>/` (or under
`$PPO_TELEMETRY_BROKER_HOME`). One node keeps its files there: the rendered `server.properties`, the
data (`data/`), `broker.log` and `broker.pid`; its client port is P, its controller's P+1. A cluster of
N nodes records itself in `cluster.properties` (node count, cluster id) and keeps each node's files in
`node-<id>/`: node k (1..N) serves clients on P+2(k-1) and its controller on the port after that, and
all N controllers form the KRaft quorum (N voters, a majority needed). Its topics are replicated three
times (at most N) and need two in-sync replicas to accept a write (`server.properties.template`).

`start` formats each node's storage (keeping data already there, so a restarted node still has its
topics), launches the nodes not running yet, each `kafka.Kafka` in its own session, waits until every
node answers and the cluster lists all of them, and prints the bootstrap address (every node,
comma-separated); `stop` ends every node by its pid (SIGTERM, then SIGKILL after a grace period);
`status` says which nodes run and prints the address when all of them answer, else exits 1.

`start --secure` (`secure=True`) serves SASL_SSL with SCRAM-SHA-512 instead of PLAINTEXT, with the
principals and ACLs of SPEC §11 and each role's settings file in `<run dir>/secrets/`
(`broker_security.py`; docs/deployment.md, "A secured cluster"). A run directory is secured or not for
good: its data holds the credentials, or none.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from avro_schemas.errors import TelemetryError
from ppo_telemetry.local_process import await_exit, pid_alive, port_taken, send_signal

__all__ = [
    "BrokerError", "BrokerNode", "LocalBroker", "KAFKA_LOCAL_DIR", "DEFAULT_PORT", "MAX_NODES", "answers",
    "registered_brokers",
]

KAFKA_LOCAL_DIR = Path(__file__).resolve().parent.parent / "compose" / "kafka-local"
DEFAULT_PORT = 9092
MAX_NODES = 5  # loopback clusters for development and tests; more would only cost memory
START_TIMEOUT = 90.0
CLUSTER_START_TIMEOUT = 180.0  # N JVMs starting at once on a small machine, then electing a quorum
STOP_TIMEOUT = 30.0
SINGLE_NODE_HEAP = "-Xmx1g"
CLUSTER_NODE_HEAP = "-Xmx512m"  # three JVMs on one machine: a modest heap each is plenty for tests


class BrokerError(TelemetryError):
    """The local broker cannot be fetched, started, reached or stopped."""


def _find(program: str, install_hint: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise BrokerError(f"{program} not found on PATH: {install_hint}")
    return found


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    return _find("java", "install a Java 17+ runtime (Debian: apt install openjdk-17-jre-headless)")


def registered_brokers(bootstrap: str, timeout: float = 2.0, config: dict[str, str] | None = None) -> set[int] | None:
    """The node ids a Kafka cluster at `bootstrap` lists in a metadata answer within `timeout` seconds
    (None when nothing answers). KRaft lists the live, unfenced brokers only. `config`: the client's
    security settings, for a secured broker."""
    from confluent_kafka.admin import AdminClient

    from kafka_io import quiet_logger

    admin = AdminClient({**(config or {}), "bootstrap.servers": bootstrap, "logger": quiet_logger()})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception:  # KafkaException on timeout / transport failure: not answering
        return None
    return set(metadata.brokers) or None


def answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """Whether a Kafka broker at `bootstrap` answers a metadata request within `timeout` seconds."""
    return registered_brokers(bootstrap, timeout) is not None


@dataclass(frozen=True)
class BrokerNode:
    """One node of a local broker: broker and controller in one process, with a run directory of its own."""

    node_id: int
    port: int
    controller_port: int
    run_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "broker.log"

    def pid(self) -> int | None:
        """The pid of this node's process when it is alive, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def last_error(self) -> str:
        """The last ERROR or exception line of its output or log (for a one-line start failure)."""
        for path in (self.run_dir / "broker.out", self.log_file):
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in reversed(lines):
                if "ERROR" in line or "Exception" in line:
                    return line.strip()[:300]
        return f"see {self.log_file}"

    def signal_and_wait(self, signum: int, timeout: float) -> bool:
        """Send `signum` and wait up to `timeout` s for the process to end (SIGKILL after that).

        Returns whether it was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        send_signal(pid, signum)
        await_exit([pid], timeout)
        self.pid_file.unlink(missing_ok=True)
        return True


@dataclass(frozen=True)
class LocalBroker:
    """The local broker of one port on 127.0.0.1: one node, or a cluster of `nodes` (see the module
    docstring for the ports). `nodes=None`: as its run directory records, else one."""

    port: int = DEFAULT_PORT
    home: Path | None = None
    nodes: int | None = None
    secure: bool | None = None
    """SASL_SSL, SCRAM and ACLs (SPEC §11); None: as its run directory records (secrets there or not)."""

    # ---------------------------------------------------------------------------------- layout

    @property
    def run_dir(self) -> Path:
        base = self.home or Path(os.environ.get("PPO_TELEMETRY_BROKER_HOME", KAFKA_LOCAL_DIR / "run"))
        return base / str(self.port)

    @property
    def cluster_file(self) -> Path:
        return self.run_dir / "cluster.properties"

    def _cluster_record(self) -> dict[str, str]:
        """`cluster.properties` (nodes, cluster.id) as a dict; empty when there is none."""
        try:
            lines = self.cluster_file.read_text().splitlines()
        except OSError:
            return {}
        return dict(line.strip().split("=", 1) for line in lines if "=" in line)

    def recorded_nodes(self) -> int | None:
        """The node count the run directory records (1 for a single node's data; None when empty)."""
        with contextlib.suppress(KeyError, ValueError):
            return int(self._cluster_record()["nodes"])
        return 1 if (self.run_dir / "data").is_dir() else None

    @property
    def node_count(self) -> int:
        if self.nodes is not None:
            return self.nodes
        return self.recorded_nodes() or 1

    @property
    def secrets(self):
        """The secured broker's `secrets/` directory (`broker_security.BrokerSecrets`)."""
        from ppo_telemetry.broker_security import BrokerSecrets

        return BrokerSecrets(self.run_dir)

    @property
    def is_secure(self) -> bool:
        return self.secure if self.secure is not None else self.secrets.exists()

    def client_config(self, role: str = "admin", bootstrap: str | None = None) -> dict[str, str]:
        """librdkafka settings to reach it (a secured broker: as `role`, password revealed; do not log)."""
        bootstrap = bootstrap or self.bootstrap
        if not self.is_secure:
            return {"bootstrap.servers": bootstrap}
        return self.secrets.client_settings(role, bootstrap)

    def settings_file(self, role: str) -> Path:
        """A secured broker's `--kafka-config` file for `role` (trainer, validator, drift, watch, admin)."""
        return self.secrets.settings_file(role)

    @property
    def node_list(self) -> list[BrokerNode]:
        """Its nodes, by id: one node in the run directory itself, a cluster's in `node-<id>/`."""
        if self.node_count == 1:
            # the controller listener needs a port of its own: the next one, as in Kafka's own examples
            controller = self.port + 1 if self.port < 65535 else self.port - 1
            return [BrokerNode(1, self.port, controller, self.run_dir)]
        return [
            BrokerNode(index + 1, self.port + 2 * index, self.port + 2 * index + 1, self.run_dir / f"node-{index + 1}")
            for index in range(self.node_count)
        ]

    def node(self, node_id: int) -> BrokerNode:
        """The node with this id (1..N)."""
        for candidate in self.node_list:
            if candidate.node_id == node_id:
                return candidate
        raise BrokerError(f"the broker on port {self.port} has no node {node_id}")

    @property
    def bootstrap(self) -> str:
        """Every node's client address, comma-separated (clients need one that answers)."""
        return ",".join(node.bootstrap for node in self.node_list)

    @property
    def controller_port(self) -> int:
        return self.node_list[0].controller_port

    @property
    def pid_file(self) -> Path:
        return self.node_list[0].pid_file

    @property
    def log_file(self) -> Path:
        return self.node_list[0].log_file

    # ---------------------------------------------------------------------------------- state

    def pid(self) -> int | None:
        """The pid of its first live node's process, else None (no node runs)."""
        return next((pid for pid in self.pids().values() if pid is not None), None)

    def pids(self) -> dict[int, int | None]:
        """Each node's pid (None for a node that does not run), by node id."""
        return {node.node_id: node.pid() for node in self.node_list}

    def running(self) -> bool:
        """Every node's process is alive and the broker lists every node in a metadata answer."""
        if any(pid is None for pid in self.pids().values()):
            return False
        return registered_brokers(self.bootstrap, config=self.client_config()) == {node.node_id for node in self.node_list}

    # ---------------------------------------------------------------------------------- jars

    @staticmethod
    def jars_dir() -> Path:
        return KAFKA_LOCAL_DIR / "target" / "dependency"

    @classmethod
    def fetch_jars(cls) -> Path:
        """The broker's jars, fetched through Maven when not there yet."""
        jars = cls.jars_dir()
        if jars.is_dir() and any(jars.glob("kafka_2.13-*.jar")):
            return jars
        mvn = _find("mvn", "install Apache Maven 3.6+ (Debian: apt install maven)")
        proc = subprocess.run(
            [mvn, "-q", "-B", "-f", str(KAFKA_LOCAL_DIR / "pom.xml"), "dependency:copy-dependencies"],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not any(jars.glob("kafka_2.13-*.jar")):
            lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line] or ["no output"]
            raise BrokerError(f"mvn could not fetch the Kafka jars: {lines[0].strip()[:300]}")
        return jars

    # ---------------------------------------------------------------------------------- start

    def render_properties(self, node: BrokerNode) -> str:
        """`server.properties` of `node`: the template with its ports, id, the quorum and replication."""
        from kafka_io import replication_for

        # the broker's defaults (internal topics, topics created by others) as the project creates its own
        replicas, topic_config = replication_for(self.node_count)
        min_isr = topic_config.get("min.insync.replicas", "1")
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.node_list)
        template = (KAFKA_LOCAL_DIR / "server.properties.template").read_text()
        for placeholder, value in (
            ("@NODE_ID@", node.node_id),
            ("@VOTERS@", voters),
            ("@PORT@", node.port),
            ("@CONTROLLER_PORT@", node.controller_port),
            ("@LOG_DIR@", node.run_dir / "data"),
            ("@REPLICAS@", replicas),
            ("@MIN_ISR@", min_isr),
        ):
            template = template.replace(placeholder, str(value))
        if self.is_secure:
            template = self._secured(template, node)
        return template

    def _secured(self, text: str, node: BrokerNode) -> str:
        """`text` (a rendered template) with the secured listeners, authorizer and TLS of `broker_security`."""
        from ppo_telemetry.broker_security import server_properties

        settings = server_properties(
            port=node.port, controller_port=node.controller_port, run_dir=node.run_dir,
            secrets_dir=self.secrets.directory, broker_password=self.secrets.passwords()["broker"],
        )
        lines = [line for line in text.splitlines() if line.split("=", 1)[0].strip() not in settings]
        lines += ["", "# broker start --secure (ppo_telemetry/broker_security.py)"]
        lines += [f"{key}={value}" for key, value in settings.items()]
        return "\n".join(lines) + "\n"

    def _render_properties(self, node: BrokerNode | None = None) -> Path:
        from ppo_telemetry.broker_security import private_file

        node = node or self.node_list[0]
        path = node.run_dir / "server.properties"
        if self.is_secure:  # the inter-broker login's password is in it
            return private_file(path, self.render_properties(node))
        path.write_text(self.render_properties(node))
        return path

    def _java_command(self, main_class: str, *args: str, heap: str | None = None, node: BrokerNode | None = None) -> list[str]:
        node = node or self.node_list[0]
        return [
            _java(),
            "-Xms256m",
            heap or (SINGLE_NODE_HEAP if self.node_count == 1 else CLUSTER_NODE_HEAP),
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={node.run_dir}",
            f"-Dlog4j2.configurationFile={KAFKA_LOCAL_DIR / 'log4j2.properties'}",
            "-cp",
            str(self.jars_dir() / "*"),
            main_class,
            *args,
        ]

    def _cluster_id(self) -> str:
        """A cluster's id, recorded with its node count (every node is formatted with the same one)."""
        recorded = self._cluster_record().get("cluster.id")
        if recorded:
            return recorded
        cluster_id = _new_cluster_id()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cluster_file.write_text(f"nodes={self.node_count}\ncluster.id={cluster_id}\n")
        return cluster_id

    def _format_storage(self, node: BrokerNode, properties: Path, cluster_id: str) -> subprocess.Popen[str] | None:
        """Start formatting `node`'s storage (None when formatted before: its data, topics and committed
        offsets, are kept across restarts)."""
        if (node.run_dir / "data" / "meta.properties").exists():
            return None
        # `--cluster-id=`: one id in 64 starts with '-', which the tool's parser would take for an option
        arguments = ["format", f"--cluster-id={cluster_id}", "-c", str(properties), "--ignore-formatted"]
        command = self._java_command("kafka.tools.StorageTool", *arguments, heap="-Xmx256m", node=node)
        if self.is_secure:
            from ppo_telemetry.broker_security import private_file

            # the SCRAM passwords go through a Java argument file (0600), not the command line every
            # local user can read in /proc; the main class must come from the file too, after -cp
            lines = ["kafka.tools.StorageTool", *arguments, *self.secrets.scram_arguments()]
            argfile = private_file(node.run_dir / "format.args", "\n".join(_argfile_quote(line) for line in lines) + "\n")
            command = command[: command.index("kafka.tools.StorageTool")] + [f"@{argfile}"]
        return subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def _check_layout(self) -> None:
        """A port's data belongs to one layout: a cluster's nodes cannot start as one node, nor the reverse."""
        recorded = self.recorded_nodes()
        if self.nodes is not None and recorded is not None and recorded != self.nodes:
            held = "a single broker's data" if recorded == 1 else f"the data of a {recorded}-node cluster"
            raise BrokerError(
                f"{self.run_dir} holds {held}: start it with --nodes {recorded}, "
                f"or stop it and remove that directory for a fresh {self.nodes}-node broker"
            )
        secured = self.secrets.exists()
        if self.secure is False and secured:
            raise BrokerError(f"{self.run_dir} holds a secured broker's data: start it with --secure")
        if self.secure and recorded is not None and not secured:
            raise BrokerError(f"{self.run_dir} holds a plaintext broker's data: start it without --secure, or stop "
                              "it and remove that directory for a fresh secured broker")
        if not 1 <= self.node_count <= MAX_NODES:
            raise BrokerError(f"--nodes must be 1 to {MAX_NODES}, not {self.node_count}")
        highest = max(node.controller_port for node in self.node_list)
        if highest > 65535:
            raise BrokerError(f"{self.node_count} nodes from port {self.port} need ports up to {highest}; pick a lower --port")

    def _check_ports_free(self, nodes: list[BrokerNode]) -> None:
        for node in nodes:
            for port in (node.port, node.controller_port):
                if not port_taken(port):
                    continue
                # a taken client port that answers Kafka is someone's broker: say how to use it
                if port == node.port and registered_brokers(node.bootstrap, 1.0, self.client_config()) is not None:
                    raise BrokerError(f"port {port} is served by a Kafka broker this project did not start; "
                                      f"use it (KAFKA_BOOTSTRAP_SERVERS={node.bootstrap}) or pick another --port")
                raise BrokerError(f"port {port} (node {node.node_id}) is in use by another program; "
                                  "pick another --port")

    def start(self, timeout: float | None = None) -> str:
        """Start every node that does not run yet; returns the bootstrap address once every node answers
        and the cluster lists all of them."""
        self._check_layout()
        timeout = timeout or (START_TIMEOUT if self.node_count == 1 else CLUSTER_START_TIMEOUT)
        stopped = [node for node in self.node_list if node.pid() is None]
        if stopped:
            _java()  # the one-line 'install Java' error before anything is fetched
            self._check_ports_free(stopped)
            self.fetch_jars()
            if self.is_secure:
                self.secrets.passwords()
                self.secrets.ensure_certificates()
            cluster_id = self._cluster_id() if self.node_count > 1 else _new_cluster_id()
            formatting = []
            for node in stopped:
                node.run_dir.mkdir(parents=True, exist_ok=True)
                # one node: `_render_properties()` as subclasses that add listeners override it
                properties = self._render_properties(node) if self.node_count > 1 else self._render_properties()
                formatting.append(self._format_storage(node, properties, cluster_id))
            for node, proc in zip(stopped, formatting):  # the nodes format at once: one JVM start-up's wait, not N
                failed = proc is not None and proc.wait() != 0
                (node.run_dir / "format.args").unlink(missing_ok=True)  # the secured one's passwords
                if failed:
                    last = (proc.stderr.read() or proc.stdout.read()).strip().splitlines() or ["no output"]
                    raise BrokerError(f"formatting the broker's storage failed: {self._scrub(last[-1][:300])}")
            processes = {node.node_id: self._launch(node) for node in stopped}
        else:
            processes = {}
        self._await_cluster(processes, timeout)
        if self.is_secure:
            self._secure_setup()
        return self.bootstrap

    def _secure_setup(self) -> None:
        """The roles' ACLs, the SPEC's input topics (so a consumer group may start before the trainer,
        without rights to create them) and each role's settings file; all idempotent."""
        from avro_schemas.topics import DEFAULT_NAMESPACE as names
        from kafka_io import KafkaIOError, ensure_topics
        from ppo_telemetry.broker_security import SecurityError, apply_acls, role_acls

        admin = self.client_config("admin")
        apply_acls(admin, role_acls())
        try:
            ensure_topics(admin, {names.epochs_topic: (3, {}), names.schemas_topic: (1, {"cleanup.policy": "compact"})})
        except KafkaIOError as exc:
            raise SecurityError(f"the secured broker's topics: {exc}") from None
        self.secrets.write_settings_files(self.bootstrap)

    def _scrub(self, text: str) -> str:
        """`text` with every password of a secured broker replaced by `***`."""
        if not self.is_secure or not self.secrets.exists():
            return text
        for password in self.secrets.passwords().values():
            text = text.replace(password, "***")
        return text

    def _launch(self, node: BrokerNode) -> subprocess.Popen[bytes]:
        with open(node.run_dir / "broker.out", "ab") as out:
            process = subprocess.Popen(
                self._java_command("kafka.Kafka", str(node.run_dir / "server.properties"), node=node),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C at the terminal that started it does not stop it
                cwd=node.run_dir,
            )
        node.pid_file.write_text(f"{process.pid}\n")
        return process

    def _await_cluster(self, processes: dict[int, subprocess.Popen[bytes]], timeout: float) -> None:
        """Wait until every node answers and each lists all of them (a restarted node has rejoined)."""
        wanted = {node.node_id for node in self.node_list}
        waiting = list(self.node_list)
        deadline = time.monotonic() + timeout
        while waiting:
            for node_id, process in processes.items():
                if process.poll() is not None:
                    raise BrokerError(f"node {node_id} exited during start (code {process.returncode}): "
                                      f"{self.node(node_id).last_error()}")
            for node in list(waiting):
                if node.node_id not in processes and node.pid() is None:
                    raise BrokerError(f"node {node.node_id} stopped during start; see {node.log_file}")
                if registered_brokers(node.bootstrap, 1.0, self.client_config(bootstrap=node.bootstrap)) == wanted:
                    waiting.remove(node)
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(f"node {node.node_id} ({node.log_file})" for node in waiting)
                raise BrokerError(f"the broker did not answer within {timeout:.0f} s: see {names}")
            time.sleep(0.2)

    # ---------------------------------------------------------------------------------- stop

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """End every node by its pid (SIGTERM: a controlled shutdown; SIGKILL after `timeout`), all at
        once: a cluster's last node would otherwise wait for a quorum that has gone.

        Returns whether any was running."""
        live = {node: node.pid() for node in self.node_list}
        running = {node: pid for node, pid in live.items() if pid is not None}
        for pid in running.values():
            send_signal(pid, signal.SIGTERM)
        await_exit(list(running.values()), timeout)
        for node in self.node_list:
            node.pid_file.unlink(missing_ok=True)
        return bool(running)

    def stop_node(self, node_id: int, timeout: float = STOP_TIMEOUT) -> bool:
        """End one node (SIGTERM, SIGKILL after `timeout`); returns whether it was running."""
        return self.node(node_id).signal_and_wait(signal.SIGTERM, timeout)

    def kill_node(self, node_id: int) -> bool:
        """SIGKILL one node (for fault tests: no controlled shutdown); returns whether it was running."""
        return self.node(node_id).signal_and_wait(signal.SIGKILL, STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL every node (for fault tests: no controlled shutdown)."""
        pids = [pid for pid in self.pids().values() if pid is not None]
        for pid in pids:
            send_signal(pid, signal.SIGKILL)
        await_exit(pids, STOP_TIMEOUT)


def _new_cluster_id() -> str:
    # Kafka's own form: a URL-safe base64 UUID without padding
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _argfile_quote(argument: str) -> str:
    # a Java argument file splits on white space and reads quotes and backslashes: quote every argument
    return '"' + argument.replace("\\", "\\\\").replace('"', '\\"') + '"'
