"""Helpers of the integration tests: read topics back, poll against deadlines."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

__all__ = ["read_topic", "wait_for"]


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
