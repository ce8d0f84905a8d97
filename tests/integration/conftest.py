"""The real Kafka broker the integration tests talk to, and helpers to drive and read it.

The broker, in order of preference (issue 4):
1. `KAFKA_BOOTSTRAP_SERVERS` when set (a broker someone else runs);
2. testcontainers' Kafka container when a Docker engine answers;
3. the project's local KRaft broker (`ppo_telemetry.broker.LocalBroker`: jars through Maven on first
   use), started for this test session in a fresh directory on port `PPO_TELEMETRY_TEST_BROKER_PORT`
   (default: the first free pair from 29092 on, below the kernel's ephemeral port range, 32768-60999
   here, so no client connection can hold it) and stopped at the end, also on SIGTERM.

Topics are the SPEC's and shared by the session's tests, so each test uses run ids of its own
(`unique_run_id`) and reads back only its runs' messages.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ppo_telemetry.broker import LocalBroker
from ppo_telemetry.registry_service import LocalRegistry

sys.path.insert(0, str(Path(__file__).parent))  # the tests import kafka_testing (importlib mode)

from kafka_testing import ConsumerProcess, free_ports, running, wait_for  # noqa: E402


def _docker_answers() -> bool:
    if shutil.which("docker") is None and not os.path.exists("/var/run/docker.sock"):
        return False
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # no engine, no permission, no client library: not usable
        return False


@pytest.fixture(scope="session")
def local_broker() -> Iterator[LocalBroker | None]:
    """The broker this session started (None when the tests use one from elsewhere)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield None
        return
    if _docker_answers():
        yield None
        return
    home = Path(tempfile.mkdtemp(prefix="ppo-telemetry-broker-"))
    configured = os.environ.get("PPO_TELEMETRY_TEST_BROKER_PORT")
    broker = LocalBroker(port=int(configured) if configured else free_ports(29092, 2), home=home)
    # SIGTERM (a CI timeout, `timeout`) would end pytest without its finalizers and leave the broker
    # running: make it an interrupt, which pytest unwinds through them
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with running(broker, home):
            yield broker
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@pytest.fixture(scope="session")
def local_registry() -> Iterator[LocalRegistry]:
    """The Schema Registry this session started (Apicurio Registry, in memory: it starts empty; the app
    through Maven on first use), on the first free port from 28081 on, stopped at the end, also on SIGTERM."""
    home = Path(tempfile.mkdtemp(prefix="ppo-telemetry-registry-"))
    registry = LocalRegistry(port=free_ports(28081, 1), home=home)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # as for local_broker: finalizers run
    try:
        with running(registry, home):
            yield registry
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def schema_registry(local_registry: LocalRegistry) -> str:
    """The base URL of the real Schema Registry's Confluent-compatible API (`--schema-registry`)."""
    return local_registry.url


@pytest.fixture(scope="session")
def kafka_bootstrap(local_broker: LocalBroker | None) -> Iterator[str]:
    """The bootstrap address of the real broker."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
    elif local_broker is not None:
        yield local_broker.bootstrap
    else:
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()


@pytest.fixture
def kafka_config(kafka_bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": kafka_bootstrap}


@pytest.fixture
def unique_run_id(request) -> Callable[[str], str]:
    """Run ids no other test uses: `<test name>-<tag>-<random>`."""
    stem = request.node.name.replace("[", "-").replace("]", "")[:60]

    def make(tag: str = "run") -> str:
        return f"{stem}-{tag}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def consumers(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Callable[..., ConsumerProcess]]:
    """Start consumer processes; whatever still runs at the end is killed."""
    started: list[ConsumerProcess] = []

    def start(group: str, *extra: str, instance_id: str = "0") -> ConsumerProcess:
        consumer = ConsumerProcess(kafka_bootstrap, group, *extra, instance_id=instance_id, log_dir=tmp_path)
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        if consumer.process.poll() is None:
            consumer.kill()
