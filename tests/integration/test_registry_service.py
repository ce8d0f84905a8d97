"""The local Schema Registry (Apicurio Registry) started for real: its Confluent-compatible API, loopback
only, and its life cycle from the command line. The session's registry (`local_registry`) serves the tests
that leave it running; the life-cycle test starts and stops one of its own."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from kafka_testing import free_ports

from ppo_telemetry.registry_service import LocalRegistry, RegistryError, answers

pytestmark = pytest.mark.integration


def run_registry(args: list[str], home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PPO_TELEMETRY_REGISTRY_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "ppo_telemetry", "registry", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def listening_addresses(pid: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses process `pid` listens on (TCP, IPv4 and IPv6), from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                addresses.append(_proc_address(local.split(":")[0]))
    return addresses


def process_ended(pid: int) -> bool:
    """Whether process `pid` is gone (or a zombie its parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _proc_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # /proc/net/tcp*: each 32-bit word of the address in host (little-endian) byte order
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[index:index + 4][::-1] for index in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    return getattr(address, "ipv4_mapped", None) or address


def test_it_serves_the_confluent_compatible_api(local_registry):
    with urllib.request.urlopen(f"{local_registry.url}/subjects", timeout=10) as response:
        assert response.status == 200 and isinstance(json.load(response), list)
    schema = json.dumps({"type": "record", "name": "Probe", "fields": [{"name": "x", "type": "int"}]})
    request = urllib.request.Request(
        f"{local_registry.url}/subjects/registry-service-probe-value/versions",
        data=json.dumps({"schema": schema}).encode(),
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        schema_id = json.load(response)["id"]
    with urllib.request.urlopen(f"{local_registry.url}/schemas/ids/{schema_id}", timeout=10) as response:
        assert json.loads(json.load(response)["schema"]) == json.loads(schema)


def test_it_listens_on_loopback_only(local_registry):
    addresses = listening_addresses(local_registry.pid())
    assert len(addresses) == 2  # the API and Quarkus's management interface
    assert all(address.is_loopback for address in addresses), addresses


def test_status_prints_the_url_and_a_second_start_keeps_the_running_one(local_registry):
    status = run_registry(["status", "--port", str(local_registry.port)], local_registry.run_dir.parent)
    assert status.returncode == 0 and status.stdout == f"{local_registry.url}\n"
    pid = local_registry.pid()
    again = run_registry(["start", "--port", str(local_registry.port)], local_registry.run_dir.parent)
    assert again.returncode == 0 and again.stdout == f"{local_registry.url}\n"
    assert f"pid {pid}" in again.stderr and local_registry.pid() == pid


def test_a_port_served_by_a_registry_started_elsewhere_is_one_line(local_registry, tmp_path):
    with pytest.raises(RegistryError) as caught:
        LocalRegistry(port=local_registry.port, home=tmp_path).start()
    assert str(caught.value) == (f"port {local_registry.port} is served by a Schema Registry this project did not "
                                 f"start; use it (--schema-registry {local_registry.url}) or pick another --port")


def test_a_port_held_by_another_program_is_one_line(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_ports(28181, 1)))
        holder.listen()
        port = holder.getsockname()[1]
        proc = run_registry(["start", "--port", str(port)], tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"ppo-telemetry: error: port {port} is in use by another program; pick another --port\n"
    assert not (tmp_path / str(port) / "registry.pid").exists()


def test_start_status_stop_from_the_command_line_leave_nothing_behind(tmp_path):
    port = free_ports(28181, 1)
    registry = LocalRegistry(port=port, home=tmp_path)
    started = run_registry(["start", "--port", str(port)], tmp_path)
    try:
        assert started.returncode == 0, started.stderr
        assert started.stdout == f"http://127.0.0.1:{port}/apis/ccompat/v7\n"
        assert "running (pid" in started.stderr and started.stderr.count("\n") == 1
        pid = registry.pid()
        assert pid is not None and registry.running()
        stopped = run_registry(["stop", "--port", str(port)], tmp_path)
        assert stopped.returncode == 0 and stopped.stderr == f"ppo-telemetry registry: stopped on port {port}\n"
        assert process_ended(pid) and not answers(registry.url, 1.0)
        assert not registry.pid_file.exists()
        again = run_registry(["stop", "--port", str(port)], tmp_path)
        assert again.returncode == 0 and "none was running" in again.stderr
        status = run_registry(["status", "--port", str(port)], tmp_path)
        assert status.returncode == 1 and status.stdout == ""
    finally:
        registry.stop()
