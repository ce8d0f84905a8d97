"""`ppo-telemetry train`: the harness and its publisher process, a progress bar on a terminal, a clean Ctrl-C.

Records are written by a child process (`producer.publisher`), so that serialising and writing them
does not cost the training loop: it sends compact rows, once a second.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from producer.faults import FAULTS_FILE, Fault, write_faults_file
from producer.harness import HarnessConfig, TrainingHarness, preset_for
from producer.publisher import PublisherProcess
from producer.records import RowBatch

__all__ = ["TrainingRun", "default_run_id"]


def default_run_id(env_id: str, seed: int) -> str:
    """`<env>.seed<N>.<UTC time>`: unique per start, within the run_id alphabet."""
    return f"{env_id}.seed{seed}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"


class _Progress:
    """A one-line progress bar, redrawn at most 5 times a second; nothing when not a terminal."""

    def __init__(self, out: TextIO, total_steps: int, enabled: bool) -> None:
        self.out, self.total, self.enabled = out, max(total_steps, 1), enabled
        self._last = 0.0

    def update(self, harness: TrainingHarness, records: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        done = min(harness.global_step / self.total, 1.0)
        bar = "#" * int(done * 30)
        recent = harness.episodes.returns[-20:]
        ret = f"{sum(recent) / len(recent):8.1f}" if recent else "       -"
        self.out.write(
            f"\r[{bar:<30}] {done:6.1%}  step {harness.global_step:>9,}  epoch {harness.epoch:>6}  "
            f"records {records:>6}  return(20) {ret}"
        )
        self.out.flush()

    def finish(self) -> None:
        if self.enabled:
            self.out.write("\n")
            self.out.flush()


class TrainingRun:
    """One `train` invocation: the harness, its publisher process, signal handling and the summary."""

    def __init__(
        self,
        config: HarnessConfig,
        publisher: PublisherProcess,
        err: TextIO | None = None,
        faults_file: Path | None = None,
    ) -> None:
        self.config = config
        self.publisher = publisher
        self.err = err if err is not None else sys.stderr  # the current stderr, not the one at import
        self.faults_file = faults_file
        """Where the injected faults are listed (`faults.json` beside the segments); None: not written."""
        self.records = 0
        self._closing = False
        try:
            self.harness = TrainingHarness(config, publish_rows=self._publish_rows)
        except BaseException:
            publisher.close()  # a rejected run must not keep the stream locked
            raise
        self._progress = _Progress(self.err, config.total_steps, enabled=self.err.isatty())
        self.harness.faults.on_activate = self._fault_started

    def _write_faults(self) -> None:
        if self.faults_file is not None and self.config.faults:
            write_faults_file(self.faults_file, self.config.run_id, self.harness.faults.report())

    def _fault_started(self, fault: Fault, cycle_id: int, global_step: int) -> None:
        """A fault became active: faults.json updated first, then one line on stderr."""
        self._write_faults()
        clear = "\r\x1b[K" if self._progress.enabled else ""  # over the progress bar, not after it
        self.err.write(f"{clear}train: fault {fault} active from cycle {cycle_id} (global_step {global_step:,})\n")
        self.err.flush()

    def _faults_summary(self) -> str | None:
        """The last line about the faults: where faults.json is, or its content when there is no file."""
        if not self.config.faults:
            return None
        if self.faults_file is not None:
            return f"train: run {self.config.run_id}: faults listed in {self.faults_file}"
        report = json.dumps(self.harness.faults.report())
        return f"train: run {self.config.run_id}: no --ndjson-dir, so no {FAULTS_FILE}; faults {report}"

    def _publish_rows(self, rows: RowBatch) -> None:
        self.publisher.publish_rows(rows)
        self.records += len(rows)
        self._progress.update(self.harness, self.records)

    def run(self) -> int:
        """Train; returns 0 when finished, 130 when stopped by SIGINT/SIGTERM (the stream flushed).

        A first SIGINT/SIGTERM finishes the epoch, then the publisher delivers what it holds (to Kafka
        that may take until `message.timeout.ms` while a broker is away); a second one abandons that
        delivery, stops the publisher at once and says so."""
        stop_signal: list[int] = []

        def _request_stop(signum: int, frame: object) -> None:
            if stop_signal:
                raise KeyboardInterrupt  # the second signal: stop waiting
            stop_signal.append(signum)
            self.harness.stop_requested = True
            if self._closing:
                self.err.write("train: delivering the records already published; signal again to abandon them\n")
                self.err.flush()

        previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        started = time.monotonic()
        self._write_faults()  # every fault listed from the start, first_cycle_id null until it is active
        try:
            try:
                self.harness.run_ppo()
            finally:
                self._progress.update(self.harness, self.records, force=True)
                self._progress.finish()
                self.harness.close()
                self._closing = True
                self.publisher.close()  # waits until every record is written (and delivered)
        except KeyboardInterrupt:
            if self.publisher.closed_cleanly:  # interrupted mid-epoch: what was published is written
                self.err.write(f"train: run {self.config.run_id}: stopped at once by a second signal; "
                               f"{self.records} records written\n")
                return 130
            self.publisher.abort()
            self.err.write(
                f"train: run {self.config.run_id}: stopped by a second signal; the publisher was stopped before "
                "it had written or delivered every record (the NDJSON stream keeps whole lines only)\n"
            )
            return 130
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        elapsed = time.monotonic() - started
        recent = self.harness.episodes.returns[-20:]
        summary = (
            f"train: run {self.config.run_id}: {self.records} records, {self.harness.global_step:,} env steps, "
            f"{self.harness.epoch} epochs in {elapsed:.1f} s"
        )
        if recent:
            summary += f"; mean return of the last {len(recent)} episodes {sum(recent) / len(recent):.1f}"
        faults_summary = self._faults_summary()
        if stop_signal:
            summary += "; stopped by signal, stream flushed"
        self.err.write(summary + "\n" + (faults_summary + "\n" if faults_summary else ""))
        return 130 if stop_signal else 0


def config_from_args(args: Any) -> HarnessConfig:
    """A `HarnessConfig` from the parsed `train` arguments, over the environment's preset."""
    config = preset_for(args.env)
    overrides: dict[str, Any] = {"env_id": args.env, "seed": args.seed}
    optional: dict[str, Callable[[Any], Any]] = {
        "total_steps": int,
        "num_envs": int,
        "num_steps": int,
        "update_epochs": int,
        "num_minibatches": int,
        "learning_rate": float,
        "ent_coef": float,
        "target_kl": float,
    }
    for name, cast in optional.items():
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = cast(value)
    if args.replay:
        overrides["data_mode"] = "replay"
        overrides["replay_manifest"] = Path(args.replay)
    elif args.data_mode:
        overrides["data_mode"] = args.data_mode
    if args.record_rollouts:
        overrides["record_rollouts"] = Path(args.record_rollouts)
    overrides["enable_telemetry_v1_1"] = args.telemetry_version == "1.1"
    overrides["faults"] = list(getattr(args, "fault", None) or [])
    overrides["run_id"] = args.run_id or default_run_id(args.env, args.seed)
    return replace(config, **overrides)
