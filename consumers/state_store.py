"""Per-run state beside the Kafka offsets (SPEC §4): what a consumer group instance must remember of each run
to resume exactly where its committed offsets are.

For each run an instance holds: the last `log_stream_offset` it processed (the dedupe mark of
`consumers.validator.StreamTracker`, so a re-sent record is a duplicate), its core's own state (such as
the watch rules' firing states), and the input partition the run's records come from (records are keyed
by `run_id`, so a run lives in one partition). The runner writes a run's state message to the compacted
`<group>.state` topic, into the partition of the run's input partition, in the same transaction as the
outputs and offsets of the batch that changed it; when a partition is assigned, it reads that state
partition back and hands the messages to `restore`; when revoked, `forget` drops its runs.

This module is pure: it sees (run id, partition, value) triples and gives message values; the runner does
the Kafka reading and writing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from avro_schemas.errors import TelemetryError

from .validator import StreamTracker

__all__ = ["RunStates", "StatefulCore"]


class StatefulCore(Protocol):
    """The part of a `consumers.runner.ConsumerCore` whose per-run state the store keeps."""

    def run_state(self, run_id: str) -> Any: ...

    def restore_run(self, run_id: str, state: Any) -> None: ...

    def forget_run(self, run_id: str) -> None: ...


class RunStates:
    """The runs an instance holds: their dedupe marks (`tracker`), their core's state, their partitions."""

    def __init__(self, core: StatefulCore, say: Callable[[str], None] = lambda text: None) -> None:
        self.core = core
        self.say = say
        self.tracker = StreamTracker()
        """The stream rules, with each held run's last processed `log_stream_offset`."""
        self.partition_of: dict[str, int] = {}
        """The input partition of each run this instance has state for."""

    def processed(self, run_id: str, partition: int) -> None:
        """A record of `run_id` from input `partition` was processed: the run's state may have changed."""
        self.partition_of[run_id] = partition

    def message(self, run_id: str) -> bytes:
        """The run's state as the value of its state-topic message."""
        return json.dumps(
            {"last_log_stream_offset": self.tracker.last_offsets.get(run_id), "core": self.core.run_state(run_id)},
            separators=(",", ":"),
        ).encode("utf-8")

    def forget(self, partitions: set[int]) -> None:
        """Drop every run of these input partitions (revoked, or about to be read back)."""
        for run_id in [run for run, partition in self.partition_of.items() if partition in partitions]:
            del self.partition_of[run_id]
            self.tracker.last_offsets.pop(run_id, None)
            self.core.forget_run(run_id)

    def restore(self, messages: Iterable[tuple[str, int, bytes | None]]) -> None:
        """Take back the state messages of some partitions, as (run id, partition, value) in topic order: the
        last value per run wins; a tombstone (None) drops the run; an unreadable value is said and the run
        starts afresh."""
        latest: dict[str, tuple[int, bytes | None]] = {}
        for run_id, partition, value in messages:
            latest[run_id] = (partition, value)
        for run_id, (partition, value) in latest.items():
            if value is None:
                continue
            try:
                state = json.loads(value)
                last = state.get("last_log_stream_offset")
                if last is not None:
                    self.tracker.last_offsets[run_id] = int(last)
                self.core.restore_run(run_id, state.get("core"))
            except (ValueError, TypeError, AttributeError, TelemetryError) as exc:
                self.say(f"state of run {run_id} is unreadable, starting it afresh: {exc}")
                continue
            self.partition_of[run_id] = partition
