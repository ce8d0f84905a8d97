"""The three consumer groups of SPEC §4 as `ConsumerCore`s for `consumers.runner.TransactionalRunner`.

- `ValidatorGroup` (`ppo-telemetry-validator`): every record that does not decode or validate goes to
  `ppo.telemetry.epochs.dlq` as it arrived (original key and bytes) with the SPEC headers
  `error.stage`, `error.rule`, `error.message`, `source.topic`, `source.partition`, `source.offset`;
  one too large for the DLQ goes shortened, and a sender's headers never pass for ours
  (`consumers.dead_letter`). The DLQ is created with its `max.message.bytes` set explicitly.
- `DriftGroup` (`ppo-telemetry-drift`): to `ppo.telemetry.drift`, one `DriftRecord` per run each time a
  field's verdict changes and one summary when the run goes idle (`on_idle`, called by the runner); the
  baseline runs' own records are not compared with themselves; the drift state per run travels with the
  runner's state.
- `WatchGroup` (`ppo-telemetry-watch`): one `Alert` (v1.1: the transition's evidence) per rule transition
  to `ppo.telemetry.alerts`; the rules' state per run (machines and reference levels, a few numbers per
  rule) travels with the runner's state, so it survives restarts and rebalances.

Each is the pure core of its module (`validator`, `drift`, `telemetry_watch`) plus the encoding of its
outputs; the runner does the validation, dedupe, transactions and state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from avro_schemas.codec import alert_codec, drift_record_codec
from avro_schemas.models import EpochSummary
from avro_schemas.topics import (
    ALERTS_TOPIC, DLQ_TOPIC, DRIFT_GROUP, DRIFT_TOPIC, VALIDATOR_GROUP, WATCH_GROUP,
)

from .dead_letter import (
    DLQ_MAX_MESSAGE_BYTES, DLQ_TOPIC_CONFIG, SourceMessage, check_record_limit, dead_letter, record_limit,
)
from .drift import Baseline, DriftStateError, DriftTracker
from .runner import Output, Rejection
from .telemetry_watch import RulesConfig, Watch
from .validator import Verdict

__all__ = ["ValidatorGroup", "DriftGroup", "WatchGroup"]


def _source_message(message: Any) -> SourceMessage:
    """The pure view of a consumed Kafka message."""
    try:
        headers, unreadable = tuple(message.headers() or ()), False
    except SystemError:  # a header name that is not UTF-8: confluent-kafka cannot make it a str
        headers, unreadable = (), True
    return SourceMessage(
        message.topic(), message.partition(), message.offset(), message.key(), message.value(), headers, unreadable
    )


class _Stateless:
    """No per-run state of its own beyond the runner's dedupe mark."""

    def run_state(self, run_id: str) -> Any:
        return None

    def restore_run(self, run_id: str, state: Any) -> None:
        pass

    def forget_run(self, run_id: str) -> None:
        pass


class ValidatorGroup(_Stateless):
    """Dead-letters what does not decode or validate, cut to what the DLQ takes; valid records produce nothing."""

    group = VALIDATOR_GROUP
    output_topics = (DLQ_TOPIC,)
    topic_configs = {DLQ_TOPIC: DLQ_TOPIC_CONFIG}
    needs_model = False

    def __init__(self) -> None:
        self.dlq_record_limit = record_limit(DLQ_MAX_MESSAGE_BYTES)  # until the runner reads the topic's own

    def limit_records(self, limits: dict[str, int]) -> None:
        """Take the largest record the DLQ accepts (from its `max.message.bytes` on the broker)."""
        self.dlq_record_limit = check_record_limit(limits[DLQ_TOPIC], DLQ_TOPIC)

    def on_record(self, record: EpochSummary | None, verdict: Verdict) -> list[Output]:
        return []

    def on_rejected(self, message: Any, rejection: Rejection) -> list[Output]:
        letter = dead_letter(_source_message(message), rejection, self.dlq_record_limit)
        return [Output(DLQ_TOPIC, letter.key, letter.value, letter.headers)]


class DriftGroup:
    """Drift v2 of every current run against `baseline` (SPEC §5): a `DriftRecord` per verdict change and
    one summary per idle period.

    A run is idle once no record of it has arrived for `idle_seconds` (by `clock`, injected for tests);
    `on_idle(now)` then gives its summary once, and again only after new records and a new idle period.
    Whether the summary went out is part of the run's state, so a restart neither repeats nor loses it;
    a restored run's idle period is counted from the restore.
    """

    group = DRIFT_GROUP
    output_topics = (DRIFT_TOPIC,)
    needs_model = False  # the core reads the validated record dict

    def __init__(
        self, baseline: Baseline, idle_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.tracker = DriftTracker(baseline)
        self.codec = drift_record_codec()
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._last_seen: dict[str, float] = {}
        self._summarised: set[str] = set()  # runs whose summary went out since their last record

    @property
    def baseline(self) -> Baseline:
        """The baseline every run is compared with."""
        return self.tracker.baseline

    def _output(self, run_id: str, record: dict[str, Any]) -> Output:
        return Output(DRIFT_TOPIC, run_id.encode("utf-8"), self.codec.encode(record))

    def on_record(self, record: EpochSummary | None, verdict: Verdict) -> list[Output]:
        run_id = verdict.run_id
        if run_id in self.baseline.run_ids:
            return []  # not compared with itself
        self._last_seen[run_id] = self.clock()
        self._summarised.discard(run_id)
        change = self.tracker.observe(verdict.record)
        return [] if change is None else [self._output(run_id, change.to_record_dict())]

    def on_idle(self, now: float) -> dict[str, list[Output]]:
        """The summary of each run idle at `now` and not yet summarised, by run (their state changed)."""
        idle = {}
        for run_id, seen in self._last_seen.items():
            if run_id not in self._summarised and now - seen >= self.idle_seconds and run_id in self.tracker.runs:
                self._summarised.add(run_id)
                idle[run_id] = [self._output(run_id, self.tracker.summary(run_id).to_record_dict("summary"))]
        return idle

    def on_rejected(self, message: Any, rejection: Rejection) -> list[Output]:
        return []  # the validator dead-letters it; drift skips it

    def run_state(self, run_id: str) -> Any:
        drift = self.tracker.run_state(run_id)
        return None if drift is None else {"drift": drift, "summarised": run_id in self._summarised}

    def restore_run(self, run_id: str, state: Any) -> None:
        self.forget_run(run_id)
        if state is None:
            return
        if not isinstance(state, dict) or "drift" not in state:
            raise DriftStateError(f"drift group state of run {run_id} is not an object with 'drift'")
        self.tracker.restore_run(run_id, state["drift"])
        self._last_seen[run_id] = self.clock()
        if state.get("summarised"):
            self._summarised.add(run_id)

    def forget_run(self, run_id: str) -> None:
        self.tracker.forget_run(run_id)
        self._last_seen.pop(run_id, None)
        self._summarised.discard(run_id)


class WatchGroup:
    """The alert rules of SPEC §6 per run, one `Alert` per transition."""

    group = WATCH_GROUP
    output_topics = (ALERTS_TOPIC,)
    needs_model = True

    def __init__(self, rules: RulesConfig | None = None) -> None:
        self.watch = Watch(rules)
        self.codec = alert_codec()

    def on_record(self, record: EpochSummary, verdict: Verdict) -> list[Output]:
        return [
            Output(ALERTS_TOPIC, record.run_id.encode(), self.codec.encode(t.to_avro_dict()))
            for t in self.watch.observe(record)
        ]

    def on_rejected(self, message: Any, rejection: Rejection) -> list[Output]:
        return []  # invalid records are not evaluated (SPEC §6)

    def run_state(self, run_id: str) -> Any:
        return self.watch.run_state(run_id)

    def restore_run(self, run_id: str, state: Any) -> None:
        self.watch.restore_run(run_id, state)

    def forget_run(self, run_id: str) -> None:
        self.watch.forget_run(run_id)
