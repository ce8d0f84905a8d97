"""The Kafka broker the Kafka benchmarks talk to: `KAFKA_BOOTSTRAP_SERVERS` when set, else a fresh local one.

A fresh local broker (`ppo_telemetry.broker.LocalBroker`) gets its own port (29192 by default, clear of
the integration tests' 29092/293xx and below the ephemeral port range) and a temporary home directory; both go at the end, whatever
happened in between. A benchmark on someone else's broker uses topic and group names of its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ppo_telemetry.broker import LocalBroker

__all__ = ["DEFAULT_PORT", "bench_bootstrap"]

DEFAULT_PORT = 29192


@contextmanager
def bench_bootstrap(port: int = DEFAULT_PORT) -> Iterator[tuple[str, bool]]:
    """(bootstrap address, whether this process started the broker); a started broker is stopped and removed."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        print(f"broker: {configured} (KAFKA_BOOTSTRAP_SERVERS)", flush=True)
        yield configured, False
        return
    home = Path(tempfile.mkdtemp(prefix="ppo-telemetry-bench-broker-"))
    broker = LocalBroker(port=port, home=home)
    try:
        started = time.perf_counter()
        bootstrap = broker.start()
        print(f"broker: a fresh local KRaft broker at {bootstrap} ({time.perf_counter() - started:.1f} s to start)",
              flush=True)
        yield bootstrap, True
    finally:
        broker.stop()
        shutil.rmtree(home, ignore_errors=True)
