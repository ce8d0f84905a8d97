"""The three consumer groups of SPEC §4 as `ConsumerCore`s for `consumers.runner.TransactionalRunner`.

- `ValidatorGroup` (`ppo-telemetry-validator`): every record that does not decode or validate goes to
  `ppo.telemetry.epochs.dlq` as it arrived (original key and bytes) with the SPEC headers
  `error.stage`, `error.rule`, `error.message`, `source.topic`, `source.partition`, `source.offset`.
- `DriftGroup` (`ppo-telemetry-drift`): one `DriftRecord` per compared epoch to `ppo.telemetry.drift`;
  the baseline run's own records are not compared with themselves.
- `WatchGroup` (`ppo-telemetry-watch`): one `Alert` per rule transition to `ppo.telemetry.alerts`; the
  rules' state per run travels with the runner's state (so it survives restarts and rebalances).

Each is the pure core of its module (`validator`, `drift`, `telemetry_watch`) plus the encoding of its
outputs; the runner does the validation, dedupe, transactions and state.
"""

from __future__ import annotations

from typing import Any

from avro_schemas.codec import alert_codec, drift_record_codec
from avro_schemas.models import EpochSummary
from avro_schemas.topics import (
    ALERTS_TOPIC, DLQ_TOPIC, DRIFT_GROUP, DRIFT_TOPIC, VALIDATOR_GROUP, WATCH_GROUP,
)

from .drift import Baseline
from .runner import Output, Rejection
from .telemetry_watch import RulesConfig, Watch
from .validator import Verdict

__all__ = ["ValidatorGroup", "DriftGroup", "WatchGroup", "dead_letter"]


def dead_letter(message: Any, rejection: Rejection) -> Output:
    """The DLQ message of a rejected input: its own key and bytes, the reason and where it came from."""
    headers = list(message.headers() or [])
    headers += [
        ("error.stage", rejection.stage.encode()),
        ("error.rule", rejection.rule.encode()),
        ("error.message", rejection.message.encode("utf-8", "replace")),
        ("source.topic", message.topic().encode()),
        ("source.partition", str(message.partition()).encode()),
        ("source.offset", str(message.offset()).encode()),
    ]
    return Output(DLQ_TOPIC, message.key(), message.value(), headers)


class _Stateless:
    """No per-run state of its own beyond the runner's dedupe mark."""

    def run_state(self, run_id: str) -> Any:
        return None

    def restore_run(self, run_id: str, state: Any) -> None:
        pass

    def forget_run(self, run_id: str) -> None:
        pass


class ValidatorGroup(_Stateless):
    """Dead-letters what does not decode or validate; valid records produce nothing."""

    group = VALIDATOR_GROUP
    output_topics = (DLQ_TOPIC,)
    needs_model = False

    def on_record(self, record: EpochSummary | None, verdict: Verdict) -> list[Output]:
        return []

    def on_rejected(self, message: Any, rejection: Rejection) -> list[Output]:
        return [dead_letter(message, rejection)]


class DriftGroup(_Stateless):
    """Drift of every current run's epochs against `baseline`, one `DriftRecord` per compared epoch."""

    group = DRIFT_GROUP
    output_topics = (DRIFT_TOPIC,)
    needs_model = True

    def __init__(self, baseline: Baseline) -> None:
        self.baseline = baseline
        self.codec = drift_record_codec()

    def on_record(self, record: EpochSummary, verdict: Verdict) -> list[Output]:
        if record.run_id == self.baseline.run_id:
            return []
        drift = self.baseline.compare(record)
        if drift is None:
            return []
        return [Output(DRIFT_TOPIC, record.run_id.encode(), self.codec.encode(drift.to_json_dict()))]

    def on_rejected(self, message: Any, rejection: Rejection) -> list[Output]:
        return []  # the validator dead-letters it; drift skips it


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
            Output(ALERTS_TOPIC, record.run_id.encode(), self.codec.encode(t.to_json_dict()))
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
