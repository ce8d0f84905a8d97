"""Never wedged (issue 9, item 2): the three groups consume while `train --kafka` publishes, and the broker
is stopped and started, then killed -9 and started. A consumer may exit during an outage (one line, exit 2)
but must never hang: the test's supervisor loop starts an exited consumer again, as compose `restart:` or
systemd would, and at the end every group has caught up, ends within a bound on SIGTERM, and wrote each
output exactly once (the verifier of `exactly_once.py`).

The short plan (one outage of each kind) runs in `make test`; `make soak` runs the long one (five of
each, as issue 9 asks).
"""

from __future__ import annotations

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
from kafka_testing import ConsumerProcess, free_ports, read_topic
from ppo_telemetry.broker import LocalBroker

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 15.0  # as in issue 9's report of the wedge
GROUP_IDS = {"validate": VALIDATOR_GROUP, "drift": DRIFT_GROUP, "watch": WATCH_GROUP}
STOP_BOUND = 60.0  # SIGTERM must end a consumer within this (its own grace is 30 s)


class Supervised:
    """One consumer group's process, started again whenever it exits (compose `restart: always`)."""

    def __init__(self, bootstrap: str, group: str, extra: tuple[str, ...], log_dir: Path) -> None:
        self._start = lambda: ConsumerProcess(bootstrap, group, "--batch-size", "20", *extra, log_dir=log_dir)
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


def supervising(groups: dict[str, Supervised], condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` while restarting exited consumers, until it is truthy or `timeout` passes (fail)."""
    deadline = time.monotonic() + timeout
    while True:
        for supervised in groups.values():
            supervised.tick()
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            exits = {group: s.exits for group, s in groups.items()}
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; exits so far: {exits}")
        time.sleep(0.25)


def train(bootstrap: str, run_id: str, steps: int, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ppo_telemetry", "train", "--kafka", bootstrap, "--env", "Conflict-v0",
             "--total-steps", str(steps), "--run-id", run_id],
            stdout=log, stderr=subprocess.STDOUT,
        )


def committed_total(offsets: GroupOffsets) -> int | None:
    """The group's committed offsets summed (None while the broker cannot say)."""
    try:
        return sum(offsets.committed().values())
    except KafkaException:  # the broker is away or electing its coordinator: no figure now
        return None


def progressing(groups: dict[str, Supervised], offsets: dict[str, GroupOffsets], what: str) -> None:
    """Wait until every group has committed more than it had when called (restarting exited consumers)."""
    marks = {group: committed_total(o) or 0 for group, o in offsets.items()}
    supervising(groups, lambda: all((committed_total(o) or 0) > marks[g] for g, o in offsets.items()), 240, what)


@pytest.mark.parametrize(
    "outages",
    [pytest.param(["stop", "kill"], id="short"), pytest.param(["stop", "kill"] * 5, id="soak", marks=pytest.mark.soak)],
)
def test_groups_come_through_broker_outages_with_every_output_exactly_once(tmp_path, unique_run_id, outages: list[str]):
    baseline_id, run_id = unique_run_id("base"), unique_run_id("cur")
    broker = LocalBroker(port=free_ports(29347, 2), home=tmp_path / "broker")  # its own: the session's is shared
    broker.start()
    groups: dict[str, Supervised] = {}
    trainer = None
    try:
        config = {"bootstrap.servers": broker.bootstrap}
        # the drift baseline, on the topic before the groups start (drift reads it from there)
        assert train(broker.bootstrap, baseline_id, 20_000, tmp_path / "baseline.log").wait(300) == 0
        args = {
            "validate": (),
            "drift": ("--baseline-run", baseline_id, "--idle-seconds", "2"),
            "watch": ("--rules", str(WATCH_RULES)),
        }
        groups = {group: Supervised(broker.bootstrap, group, extra, tmp_path) for group, extra in args.items()}
        offsets = {group: GroupOffsets(config, GROUP_IDS[group]) for group in args}
        # publishing all along: more steps than the outages take, then stopped by SIGINT (the stream flushed)
        trainer = train(broker.bootstrap, run_id, 100_000_000, tmp_path / "train.log")
        for number, kind in enumerate(outages):
            # under load: each group has committed more since the last outage, and train still publishes
            progressing(groups, offsets, f"every group to make progress before outage {number + 1}")
            assert trainer.poll() is None, (tmp_path / "train.log").read_text()
            broker.stop() if kind == "stop" else broker.kill()
            end = time.monotonic() + OUTAGE_SECONDS
            supervising(groups, lambda: time.monotonic() >= end, OUTAGE_SECONDS + 5, f"the end of outage {number + 1}")
            broker.start()  # the same home: topics, data, transactions and offsets survive
        progressing(groups, offsets, "every group to make progress after the last outage")
        trainer.send_signal(signal.SIGINT)
        supervising(groups, lambda: trainer.poll() is not None, 300, "train to deliver what it published and stop")
        train_log = (tmp_path / "train.log").read_text()
        assert trainer.returncode == 130 and "stream flushed" in train_log, train_log
        for group, group_offsets in offsets.items():
            supervising(groups, lambda: group_offsets.lag() == 0, 300, f"{group} to catch up")
        keys = {baseline_id.encode(), run_id.encode()}
        codec = epoch_summary_codec()
        baseline = Baseline.from_records(
            [codec.decode(m.value()) for m in read_topic(config, EPOCHS_TOPIC, {baseline_id.encode()})]
        )
        expected = expected_outputs(backlog_on_topic(config, keys), baseline)
        supervising(groups, lambda: drift_summaries_out(config, expected), 120, "each run's idle drift summary")
        for o in offsets.values():
            o.close()
        codes = {group: supervised.stop() for group, supervised in groups.items()}
        assert codes == {group: 0 for group in groups}, {g: s.current.log() for g, s in groups.items()}
        verify_outputs(config, keys, expected, tuple(args))
        # every exit on the way was one line, not a traceback
        for group, supervised in groups.items():
            for code, line in supervised.exits:
                assert code != 0 and "Traceback" not in line and line.startswith("ppo-telemetry"), (group, code, line)
    finally:
        for supervised in groups.values():
            supervised.kill()
        if trainer is not None and trainer.poll() is None:
            trainer.kill()
            trainer.wait(30)
        broker.stop()
