"""Helpers of the integration tests: read topics back, poll against deadlines, run a consumer group."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "ConsumerProcess", "committed_offsets", "default_group_offsets", "end_offsets", "free_ports", "read_topic",
    "running", "wait_for",
]


def read_topic(config: dict[str, Any], topic: str, keys: set[bytes] | None = None, timeout: float = 60.0) -> list[Any]:
    """Every committed message of `topic` from the beginning (read_committed), optionally only `keys`."""
    from confluent_kafka import TopicPartition
    from kafka_io import partition_count, read_to_end

    count = partition_count(config, topic)
    if not count:
        return []
    messages = list(read_to_end(config, [TopicPartition(topic, p) for p in range(count)], timeout=timeout))
    return [m for m in messages if keys is None or m.key() in keys]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll `condition` until it returns something truthy (returned) or `timeout` passes (fail)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def committed_offsets(config: dict[str, Any], group: str, topic: str) -> dict[int, int]:
    """`group`'s committed offset per partition of `topic` (negative: none), read without joining the group."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
    from kafka_io import partition_count

    settling = (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.COORDINATOR_LOAD_IN_PROGRESS)
    consumer = Consumer({**config, "group.id": group, "enable.auto.commit": False, "isolation.level": "read_uncommitted"})
    partitions = [TopicPartition(topic, p) for p in range(partition_count(config, topic) or 0)]

    def fetch() -> dict[int, int] | None:
        try:
            return {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
        except KafkaException as exc:  # a fresh broker may still be electing the group's coordinator
            if not (exc.args[0].retriable() or exc.args[0].code() in settling):
                raise
            return None

    try:
        return wait_for(lambda: fetch() if partitions else {-1: -1}, 60, f"the committed offsets of {group}")
    finally:
        consumer.close()


def end_offsets(config: dict[str, Any], topic: str) -> dict[int, int]:
    """The end offset of each partition of `topic` (the offset its next message gets)."""
    from confluent_kafka import Consumer, TopicPartition
    from kafka_io import partition_count

    # a Consumer needs a group id; this one never joins or commits
    consumer = Consumer({**config, "group.id": "ppo-telemetry-test-probe"})
    try:
        count = partition_count(config, topic) or 0
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(count)}
    finally:
        consumer.close()


def default_group_offsets(config: dict[str, Any]) -> dict[str, dict[int, int]]:
    """The committed offsets of each SPEC §4 group (the default namespace's) on the default epochs topic."""
    from avro_schemas.topics import DEFAULT_NAMESPACE

    return {group: committed_offsets(config, group, DEFAULT_NAMESPACE.epochs_topic) for group in DEFAULT_NAMESPACE.groups}


class ConsumerProcess:
    """`ppo-telemetry consume ...` as a child process (so it can be SIGTERMed or killed -9)."""

    def __init__(self, bootstrap: str, group: str, *extra: str, instance_id: str = "0", log_dir: Path) -> None:
        self.log_path = log_dir / f"consume-{group}-{instance_id}-{uuid.uuid4().hex[:6]}.log"
        self.args = [
            sys.executable, "-m", "ppo_telemetry", "consume", group, "--bootstrap-servers", bootstrap,
            "--instance-id", instance_id, "--session-timeout-ms", "3000", *extra,
        ]
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_assigned(self, timeout: float = 60.0) -> None:
        wait_for(lambda: "assigned partitions" in self.log() or self.process.poll() is not None, timeout,
                 "the consumer to join its group")
        assert self.process.poll() is None, self.log()

    def terminate(self, timeout: float = 60.0) -> int:
        self.process.terminate()
        code = self.process.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)
        self._log.close()


@contextlib.contextmanager
def running(broker: Any, home: Path) -> Iterator[Any]:
    """A local broker started for the block, then stopped and its directory `home` removed."""
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(home, ignore_errors=True)


def free_ports(first: int, count: int) -> int:
    """The first port from `first` on (in steps of `count`) where `count` consecutive ports are free. Start
    below the kernel's ephemeral range (32768-60999 here), so no client connection can hold one; a broker
    left over by a killed session must not stop the next one."""
    for port in range(first, first + 100 * count, count):
        if all(_free(candidate) for candidate in range(port, port + count)):
            return port
    raise RuntimeError(f"no {count} free consecutive ports in {first}..{first + 100 * count}")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
