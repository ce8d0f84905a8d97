"""Waiting for the drift group's baseline runs to be on the epochs topic (`consume drift --wait-for-baseline`).

A drift group started before its baseline run was trained (a fresh broker, a compose stack brought up
before the first training) waits instead of exiting: it reads the topic every few seconds and goes on once
each baseline run has records there and no new one for the quiet period (`--idle-seconds`, after which the
drift group itself counts a run as ended), so a run still being written is not taken as a whole baseline.
The reading is `fetch(run_id)`; the decision, `BaselineArrival`, is a pure core.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

Record = TypeVar("Record")


@dataclass
class BaselineArrival:
    """Has a baseline run arrived? Yes once it has records and their count has not changed for
    `quiet_seconds` (by the times passed to `observe`)."""

    quiet_seconds: float
    count: int = 0
    changed_at: float | None = None

    def observe(self, count: int, now: float) -> bool:
        """Record that the run has `count` records at `now`; whether it has arrived."""
        if count != self.count or self.changed_at is None:
            self.count, self.changed_at = count, now
        return self.count > 0 and now - self.changed_at >= self.quiet_seconds


def poll_interval(quiet_seconds: float) -> float:
    """Seconds between two readings of the topic: a quarter of the quiet period, within 0.2 to 5 s."""
    return min(5.0, max(0.2, quiet_seconds / 4))


def wait_for_baseline_runs(
    fetch: Callable[[str], Sequence[Record]],
    run_ids: Sequence[str],
    quiet_seconds: float,
    stop: threading.Event,
    say: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
) -> list[Record] | None:
    """Every baseline run's records, once each has arrived (see `BaselineArrival`); None if `stop` is set
    first. `say` gets one line when a run is waited for and one when it has arrived."""
    records: list[Any] = []
    interval = poll_interval(quiet_seconds)
    for run_id in run_ids:
        arrival = BaselineArrival(quiet_seconds)
        waited = False
        while True:
            found = fetch(run_id)
            if arrival.observe(len(found), clock()):
                break
            if not waited:
                say(f"waiting for baseline run {run_id!r}: {len(found)} records so far; going on once it has "
                    f"records and none new for {quiet_seconds:g} s")
                waited = True
            if stop.wait(interval):
                return None
        if waited:
            say(f"baseline run {run_id!r} has arrived: {len(found)} records")
        records += found
    return records
