"""`ppo-telemetry broker`: what it needs from the machine, said in one line (no broker is started here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ppo_telemetry.broker import BrokerError, LocalBroker


def run_broker(args: list[str], path: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env.update(PATH=path, PPO_TELEMETRY_BROKER_HOME=str(tmp_path / "home"))
    return subprocess.run([sys.executable, "-m", "ppo_telemetry", "broker", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_no_java_is_one_line_naming_what_to_install(tmp_path):
    proc = run_broker(["start", "--port", "39901"], str(tmp_path / "empty-bin"), tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "java not found" in proc.stderr and "Java 17" in proc.stderr


def test_no_maven_is_one_line_naming_what_to_install(tmp_path, monkeypatch):
    java = shutil.which("java")
    assert java is not None, "these tests run where the local broker can run"
    only_java = tmp_path / "bin"
    only_java.mkdir()
    (only_java / "java").symlink_to(os.path.realpath(java))
    monkeypatch.setenv("PATH", str(only_java))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(LocalBroker, "jars_dir", staticmethod(lambda: tmp_path / "no-jars-yet"))
    with pytest.raises(BrokerError) as caught:
        LocalBroker(port=39902, home=tmp_path / "home").start()
    message = str(caught.value)
    assert "\n" not in message and "mvn not found" in message and "Maven" in message


def test_status_of_a_broker_that_does_not_run_exits_1(tmp_path):
    proc = run_broker(["status", "--port", "39903"], os.environ["PATH"], tmp_path)
    assert proc.returncode == 1 and "not running" in proc.stderr and proc.stdout == ""


def test_stop_without_a_broker_says_so_and_succeeds(tmp_path):
    proc = run_broker(["stop", "--port", "39904"], os.environ["PATH"], tmp_path)
    assert proc.returncode == 0 and "none was running" in proc.stderr
