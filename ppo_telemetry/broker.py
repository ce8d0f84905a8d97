"""A local single-node Apache Kafka broker (KRaft combined mode) for machines without Docker.

`ppo-telemetry broker start|stop|status [--port P]`. The jars come from Maven Central through
`compose/kafka-local/pom.xml` (`mvn dependency:copy-dependencies`, once; later starts reuse them).
Each port has its own run directory, `compose/kafka-local/run/<port>/` (or under
`$PPO_TELEMETRY_BROKER_HOME`): the rendered `server.properties`, the data (`data/`), `broker.log` and
`broker.pid`. `start` formats the storage (keeping data already there, so a restarted broker still
has its topics), launches `kafka.Kafka` in its own session, waits until it answers a metadata request
and prints the bootstrap address; `stop` ends it by its pid (SIGTERM, then SIGKILL after a grace
period); `status` prints the address when it runs and answers, else exits 1.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from avro_schemas.errors import TelemetryError

__all__ = ["BrokerError", "LocalBroker", "KAFKA_LOCAL_DIR", "DEFAULT_PORT"]

KAFKA_LOCAL_DIR = Path(__file__).resolve().parent.parent / "compose" / "kafka-local"
DEFAULT_PORT = 9092
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (a child of ours not yet reaped) is not a running broker
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """Whether a Kafka broker at `bootstrap` answers a metadata request within `timeout` seconds."""
    from confluent_kafka.admin import AdminClient

    from kafka_io import quiet_logger

    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": quiet_logger()})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception:  # KafkaException on timeout / transport failure: not answering
        return False
    return bool(metadata.brokers)


@dataclass(frozen=True)
class LocalBroker:
    """The broker of one port on 127.0.0.1; its controller listens on the next port."""

    port: int = DEFAULT_PORT
    home: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def controller_port(self) -> int:
        # the controller listener needs a port of its own: the next one, as in Kafka's own examples
        return self.port + 1 if self.port < 65535 else self.port - 1

    @property
    def run_dir(self) -> Path:
        base = self.home or Path(os.environ.get("PPO_TELEMETRY_BROKER_HOME", KAFKA_LOCAL_DIR / "run"))
        return base / str(self.port)

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "broker.log"

    # ---------------------------------------------------------------------------------- state

    def pid(self) -> int | None:
        """The pid of this port's broker process when it is alive, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def running(self) -> bool:
        """Its process is alive and it answers a metadata request."""
        return self.pid() is not None and answers(self.bootstrap)

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

    def _render_properties(self) -> Path:
        template = (KAFKA_LOCAL_DIR / "server.properties.template").read_text()
        text = (
            template.replace("@PORT@", str(self.port))
            .replace("@CONTROLLER_PORT@", str(self.controller_port))
            .replace("@LOG_DIR@", str(self.run_dir / "data"))
        )
        path = self.run_dir / "server.properties"
        path.write_text(text)
        return path

    def _java_command(self, main_class: str, *args: str, heap: str = "-Xmx1g") -> list[str]:
        return [
            _java(),
            "-Xms256m",
            heap,
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.run_dir}",
            f"-Dlog4j2.configurationFile={KAFKA_LOCAL_DIR / 'log4j2.properties'}",
            "-cp",
            str(self.jars_dir() / "*"),
            main_class,
            *args,
        ]

    def _format_storage(self, properties: Path) -> None:
        if (self.run_dir / "data" / "meta.properties").exists():
            return  # formatted before: keep the data (topics, committed offsets) across restarts
        # Kafka's own form (a URL-safe base64 UUID); one in 64 starts with '-', which the tool's
        # argument parser would take for an option, hence `--cluster-id=` below
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        proc = subprocess.run(
            self._java_command(
                "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(properties), "--ignore-formatted",
                heap="-Xmx256m",
            ),
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
            raise BrokerError(f"formatting the broker's storage failed: {last[-1][:300]}")

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start the broker unless it runs already; returns the bootstrap address once it answers."""
        if self.pid() is not None:
            if self._await_answer(timeout):
                return self.bootstrap
            raise BrokerError(f"a broker process for port {self.port} runs (pid {self.pid()}) but does not answer; "
                              f"see {self.log_file}")
        _java()  # the one-line 'install Java' error before anything is fetched
        self.fetch_jars()
        if answers(self.bootstrap, timeout=1.0):
            raise BrokerError(f"port {self.port} is served by a Kafka broker this project did not start; "
                              f"use it (KAFKA_BOOTSTRAP_SERVERS={self.bootstrap}) or pick another --port")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        properties = self._render_properties()
        self._format_storage(properties)
        with open(self.run_dir / "broker.out", "ab") as out:
            process = subprocess.Popen(
                self._java_command("kafka.Kafka", str(properties)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C at the terminal that started it does not stop it
                cwd=self.run_dir,
            )
        self.pid_file.write_text(f"{process.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BrokerError(f"the broker exited during start (code {process.returncode}): {self._last_error()}")
            if answers(self.bootstrap, timeout=1.0):
                return self.bootstrap
            time.sleep(0.2)
        raise BrokerError(f"the broker did not answer within {timeout:.0f} s; see {self.log_file}")

    def _await_answer(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid() is None:
                return False
            if answers(self.bootstrap, timeout=1.0):
                return True
            time.sleep(0.2)
        return False

    def _last_error(self) -> str:
        for path in (self.run_dir / "broker.out", self.log_file):
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in reversed(lines):
                if "ERROR" in line or "Exception" in line:
                    return line.strip()[:300]
        return f"see {self.log_file}"

    # ---------------------------------------------------------------------------------- stop

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """End the broker by its pid (SIGTERM: a controlled shutdown; SIGKILL after `timeout`).

        Returns whether one was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            _reap(pid)
            time.sleep(0.1)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _pid_alive(pid):
                _reap(pid)
                time.sleep(0.05)
        _reap(pid)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL the broker (for fault tests: no controlled shutdown)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            while _pid_alive(pid):
                _reap(pid)
                time.sleep(0.05)
            _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
