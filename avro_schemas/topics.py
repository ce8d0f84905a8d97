"""The Kafka topics and consumer groups of SPEC §4: names only (this package imports no Kafka client)."""

from __future__ import annotations

__all__ = [
    "EPOCHS_TOPIC", "SCHEMAS_TOPIC", "DLQ_TOPIC", "DRIFT_TOPIC", "ALERTS_TOPIC",
    "VALIDATOR_GROUP", "DRIFT_GROUP", "WATCH_GROUP", "state_topic", "VERSION_HEADER", "DLQ_HEADERS",
]

EPOCHS_TOPIC = "ppo.telemetry.epochs"
SCHEMAS_TOPIC = "ppo.telemetry.schemas"
DLQ_TOPIC = "ppo.telemetry.epochs.dlq"
DRIFT_TOPIC = "ppo.telemetry.drift"
ALERTS_TOPIC = "ppo.telemetry.alerts"

VALIDATOR_GROUP = "ppo-telemetry-validator"
DRIFT_GROUP = "ppo-telemetry-drift"
WATCH_GROUP = "ppo-telemetry-watch"

VERSION_HEADER = "telemetry_version"
DLQ_HEADERS = ("error.stage", "error.rule", "error.message", "source.topic", "source.partition", "source.offset")


def state_topic(group: str) -> str:
    """The compacted topic where a consumer group keeps its per-run state (`<group>.state`).

    Not in SPEC §4 (a consumer's private changelog): written in the same transaction as the group's
    outputs and input offsets, partition for partition with the input topic; see docs/design.md."""
    return f"{group}.state"
