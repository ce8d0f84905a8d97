"""The three groups under a supervisor while `train --kafka` publishes, for the fault tests that take brokers
away (test_outages.py: the single broker stopped or killed; test_cluster.py: a cluster's partition leader
bounced).

A consumer may exit during a fault (one line, exit 2) but must never hang: the supervisor loop starts an
exited consumer again, as compose `restart:` or systemd would. At the end `finish_and_verify` stops train
with SIGINT (its stream flushed: every record it published was acknowledged), checks that the epochs
topic holds each of those records once (log_stream_offset 0..N-1 of each run, N as train reports it),
waits until every group has caught up, ends each within a bound on SIGTERM, and compares every output
topic with what the pure cores compute (`exactly_once.verify_outputs`).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException

from avro_schemas.codec import epoch_summary_codec
from avro_schemas.topics import DRIFT_GROUP, EPOCHS_TOPIC, VALIDATOR_GROUP, WATCH_GROUP
from consumers.drift import Baseline
from exactly_once import (
    WATCH_RULES, GroupOffsets, backlog_on_topic, drift_summaries_out, expected_outputs, verify_outputs,
)
from kafka_testing import ConsumerProcess, read_topic

__all__ = ["GROUP_IDS", "STOP_BOUND", "Supervised", "SupervisedPipeline", "records_on_topic", "train", "train_records"]

GROUP_IDS = {"validate": VALIDATOR_GROUP, "drift": DRIFT_GROUP, "watch": WATCH_GROUP}
STOP_BOUND = 60.0  # SIGTERM must end a consumer within this (its own grace is 30 s)


class Supervised:
    """One consumer group's process, started again whenever it exits (compose `restart: always`)."""

    def __init__(self, bootstrap: str, group: str, extra: tuple[str, ...], log_dir: Path) -> None:
        # batches of up to 500: many transactions (an outage catches one open), yet the backlog an outage
        # builds up is worked off at thousands of records a second (with 20, a soak's took over 300 s)
        self._start = lambda: ConsumerProcess(bootstrap, group, "--batch-size", "500", *extra, log_dir=log_dir)
        self.group = group
        self.current = self._start()
        self.exits: list[tuple[int, str]] = []  # (exit code, last line) of each incarnation that ended
        self._exited_at: float | None = None

    def tick(self) -> None:
        """Start the consumer again if it exited (after a second: a broker still away is not hammered)."""
        code = self.current.process.poll()
        if code is None:
            return
        if self._exited_at is None:
            lines = self.current.log().strip().splitlines()
            self.exits.append((code, lines[-1] if lines else ""))
            self._exited_at = time.monotonic()
        elif time.monotonic() - self._exited_at >= 1.0:
            self.current = self._start()
            self._exited_at = None

    def stop(self) -> int:
        """SIGTERM; its exit code, or a failure when it outlives `STOP_BOUND` (stuck)."""
        self.current.process.terminate()
        try:
            return self.current.process.wait(STOP_BOUND)
        except subprocess.TimeoutExpired:
            self.current.kill()
            pytest.fail(f"consume {self.group} still running {STOP_BOUND:.0f} s after SIGTERM:\n{self.current.log()}")

    def kill(self) -> None:
        if self.current.process.poll() is None:
            self.current.kill()


def train(bootstrap: str, run_id: str, steps: int, log_path: Path, env: str = "Conflict-v0") -> subprocess.Popen[bytes]:
    """`train --kafka bootstrap` in the background, its output to `log_path`."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ppo_telemetry", "train", "--kafka", bootstrap, "--env", env,
             "--total-steps", str(steps), "--run-id", run_id],
            stdout=log, stderr=subprocess.STDOUT,
        )


def train_records(log: str) -> int:
    """How many records train published, from its summary line (`train: run R: N records, ...`)."""
    found = re.search(r"^train: run \S+: (\d+) records", log, flags=re.M)
    assert found, f"no summary line in train's output:\n{log}"
    return int(found[1])


def records_on_topic(config: dict[str, Any], run_id: str) -> list[int]:
    """The log_stream_offsets of `run_id`'s records on the epochs topic, in their order there."""
    codec = epoch_summary_codec()
    return [codec.decode(m.value())["log_stream_offset"] for m in read_topic(config, EPOCHS_TOPIC, {run_id.encode()})]


class SupervisedPipeline:
    """A drift baseline run, then the three groups (supervised) and a long `train --kafka` run publishing,
    both on `env` (Conflict-v0: ~1,000 records a second; Pendulum-v1: a few dozen, for tests whose faults
    take minutes and whose groups must catch up at the end)."""

    def __init__(self, bootstrap: str, baseline_id: str, run_id: str, log_dir: Path, env: str = "Conflict-v0") -> None:
        self.bootstrap, self.baseline_id, self.run_id, self.log_dir = bootstrap, baseline_id, run_id, log_dir
        self.env = env
        self.config = {"bootstrap.servers": bootstrap}
        self.groups: dict[str, Supervised] = {}
        self.offsets: dict[str, GroupOffsets] = {}
        self.trainer: subprocess.Popen[bytes] | None = None
        self.args = {
            "validate": (),
            "drift": ("--baseline-run", baseline_id, "--idle-seconds", "2"),
            "watch": ("--rules", str(WATCH_RULES)),
        }

    @property
    def train_log(self) -> Path:
        return self.log_dir / "train.log"

    def start(self) -> None:
        """The baseline on the topic (drift reads it from there), the groups, then train publishing all along
        (more steps than the faults take; `finish_and_verify` stops it with SIGINT)."""
        baseline_log = self.log_dir / "baseline.log"
        baseline = train(self.bootstrap, self.baseline_id, 20_000, baseline_log, self.env)
        assert baseline.wait(300) == 0, baseline_log.read_text()
        self.groups = {g: Supervised(self.bootstrap, g, extra, self.log_dir) for g, extra in self.args.items()}
        self.offsets = {g: GroupOffsets(self.config, GROUP_IDS[g]) for g in self.args}
        self.trainer = train(self.bootstrap, self.run_id, 100_000_000, self.train_log, self.env)

    def supervising(
        self, condition: Callable[[], Any], timeout: float, what: str, detail: Callable[[], str] = lambda: ""
    ) -> Any:
        """Poll `condition` while restarting exited consumers, until it is truthy or `timeout` passes (fail,
        saying `detail()` too)."""
        deadline = time.monotonic() + timeout
        while True:
            for supervised in self.groups.values():
                supervised.tick()
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                exits = {group: s.exits for group, s in self.groups.items()}
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; exits so far: {exits}{detail()}")
            time.sleep(0.25)

    def committed_total(self, group: str) -> int | None:
        """The group's committed offsets summed (None while the broker cannot say)."""
        return self._ask(group, lambda offsets: sum(offsets.committed().values()))

    def lag(self, group: str) -> int | None:
        """Messages of the epochs topic the group has not committed yet (None while the broker cannot say)."""
        return self._ask(group, GroupOffsets.lag)

    def _ask(self, group: str, question: Callable[[GroupOffsets], int]) -> int | None:
        try:
            return question(self.offsets[group])
        except KafkaException:
            # a broker is away, or a coordinator or leader is being elected: no figure now. On a cluster the
            # probe's client may keep asking a node that has gone: the next figure comes from a new one
            self.offsets[group].close()
            self.offsets[group] = GroupOffsets(self.config, GROUP_IDS[group])
            return None

    def progressing(self, what: str) -> None:
        """Wait until every group has committed more than it had when called, and train still publishes."""
        marks = {group: self.committed_total(group) or 0 for group in self.offsets}
        self.supervising(
            lambda: all((self.committed_total(g) or 0) > marks[g] for g in self.offsets), 240, what,
            detail=lambda: f"; committed then {marks}, now {({g: self.committed_total(g) for g in self.offsets})}",
        )
        assert self.trainer is not None and self.trainer.poll() is None, self.train_log.read_text()

    def finish_and_verify(self) -> None:
        """Stop train, then check the input (each acknowledged record once) and every output (exactly once)."""
        assert self.trainer is not None
        self.trainer.send_signal(signal.SIGINT)
        self.supervising(lambda: self.trainer.poll() is not None, 300, "train to deliver what it published and stop")
        log = self.train_log.read_text()
        assert self.trainer.returncode == 130 and "stream flushed" in log, log
        # every record train published was acknowledged (the stream flushed): each is on the topic, once
        assert records_on_topic(self.config, self.run_id) == list(range(train_records(log)))
        for group in self.args:
            self.supervising(lambda: self.lag(group) == 0, 300, f"{group} to catch up",
                             detail=lambda: f"; lag {self.lag(group)}")
        keys = {self.baseline_id.encode(), self.run_id.encode()}
        codec = epoch_summary_codec()
        baseline = Baseline.from_records(
            [codec.decode(m.value()) for m in read_topic(self.config, EPOCHS_TOPIC, {self.baseline_id.encode()})]
        )
        expected = expected_outputs(backlog_on_topic(self.config, keys), baseline)
        self.supervising(lambda: drift_summaries_out(self.config, expected), 120, "each run's idle drift summary")
        for offsets in self.offsets.values():
            offsets.close()
        self.offsets = {}
        codes = {group: supervised.stop() for group, supervised in self.groups.items()}
        assert codes == {group: 0 for group in self.groups}, {g: s.current.log() for g, s in self.groups.items()}
        verify_outputs(self.config, keys, expected, tuple(self.args))
        # every exit on the way was one line, not a traceback
        for group, supervised in self.groups.items():
            for code, line in supervised.exits:
                assert code != 0 and "Traceback" not in line and line.startswith("ppo-telemetry"), (group, code, line)

    def close(self) -> None:
        """Kill whatever still runs (a failed test's consumers and train)."""
        for offsets in self.offsets.values():
            offsets.close()
        for supervised in self.groups.values():
            supervised.kill()
        if self.trainer is not None and self.trainer.poll() is None:
            self.trainer.kill()
            self.trainer.wait(30)
