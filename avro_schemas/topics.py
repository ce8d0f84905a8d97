"""The Kafka topics and consumer groups of SPEC §4: names only (this package imports no Kafka client).

The constants are the default names; a `Namespace` prefixes every one of them (issue 9)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from avro_schemas.errors import TelemetryError

__all__ = [
    "EPOCHS_TOPIC", "SCHEMAS_TOPIC", "DLQ_TOPIC", "DRIFT_TOPIC", "ALERTS_TOPIC",
    "VALIDATOR_GROUP", "DRIFT_GROUP", "WATCH_GROUP", "state_topic", "VERSION_HEADER", "DLQ_HEADERS",
    "DEFAULT_TOPICS", "DEFAULT_GROUPS", "MAX_TOPIC_NAME_LENGTH", "MAX_NAMESPACE_LENGTH",
    "Namespace", "NamespaceError", "DEFAULT_NAMESPACE", "check_namespace_name",
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


# ------------------------------------------------------------------------------------------ namespaces

MAX_TOPIC_NAME_LENGTH = 249
"""Kafka's limit on a topic name."""

DEFAULT_TOPICS = (EPOCHS_TOPIC, SCHEMAS_TOPIC, DLQ_TOPIC, DRIFT_TOPIC, ALERTS_TOPIC)
"""Every topic of SPEC §4 under its default name."""
DEFAULT_GROUPS = (VALIDATOR_GROUP, DRIFT_GROUP, WATCH_GROUP)
"""Every consumer group of SPEC §4 under its default id."""

MAX_NAMESPACE_LENGTH = MAX_TOPIC_NAME_LENGTH - 1 - max(
    len(name) for name in (*DEFAULT_TOPICS, *(state_topic(group) for group in DEFAULT_GROUPS))
)
"""The longest namespace name whose longest topic (`<name>.ppo-telemetry-validator.state`) Kafka accepts."""

# Kafka's topic characters are [A-Za-z0-9._-]; `_` is left out because Kafka's metric names turn `.` into
# `_`, so it refuses `a_b.ppo.telemetry.epochs` once `a.b.ppo.telemetry.epochs` exists. First and last
# characters alphanumeric: no `..` where the name joins the default names, no hidden `.name`.
_NAMESPACE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


class NamespaceError(TelemetryError):
    """A namespace name that cannot prefix Kafka topic names (characters or length)."""


def check_namespace_name(name: str) -> str:
    """`name` if it can be a namespace (see `Namespace`), else a one-line `NamespaceError`."""
    if not isinstance(name, str):
        raise NamespaceError(f"a namespace is a string, not {type(name).__name__}")
    if name == "":
        return name
    shown = repr(name) if len(name) <= 60 else repr(name[:60]) + "..."
    if len(name) > MAX_NAMESPACE_LENGTH:
        raise NamespaceError(
            f"namespace {shown} is {len(name)} characters; at most {MAX_NAMESPACE_LENGTH}, so that every topic "
            f"name stays within Kafka's {MAX_TOPIC_NAME_LENGTH}"
        )
    if "_" in name:
        raise NamespaceError(
            f"namespace {shown}: '_' is not allowed (Kafka treats '.' and '_' alike in metric names and would "
            "refuse topics that differ only there); use '-' or '.'"
        )
    if not _NAMESPACE_NAME.fullmatch(name):
        raise NamespaceError(
            f"namespace {shown}: use letters, digits, '.' and '-', starting and ending with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class Namespace:
    """A prefix for every topic name, consumer group id and transactional id of SPEC §4.

    The empty name is the default namespace: the SPEC's names exactly. Otherwise every name is
    `<name>.` + its default: `team-a.ppo.telemetry.epochs`, group `team-a.ppo-telemetry-validator`, state
    topic `team-a.ppo-telemetry-validator.state`, transactional id `team-a.ppo-telemetry-validator-<instance>`.
    No default name ends in `.<another default name>`, so two different namespaces never share a topic,
    a group or a transactional id. A bad name raises `NamespaceError` (see `check_namespace_name`).
    """

    name: str = ""

    def __post_init__(self) -> None:
        check_namespace_name(self.name)

    def qualify(self, default_name: str) -> str:
        """A SPEC §4 name (topic, group id) in this namespace."""
        return f"{self.name}.{default_name}" if self.name else default_name

    def child(self, name: str) -> Namespace:
        """The namespace `name` inside this one (`<this>.<name>`), e.g. the demo's under a team's."""
        check_namespace_name(name)
        if not name:
            raise NamespaceError("a namespace inside another needs a name of its own")
        return Namespace(self.qualify(name))

    @property
    def is_default(self) -> bool:
        """Whether this is the default namespace (the SPEC's names, unprefixed)."""
        return not self.name

    @property
    def epochs_topic(self) -> str:
        """The EpochSummary topic (`ppo.telemetry.epochs`)."""
        return self.qualify(EPOCHS_TOPIC)

    @property
    def schemas_topic(self) -> str:
        """The compacted writer-schema topic (`ppo.telemetry.schemas`)."""
        return self.qualify(SCHEMAS_TOPIC)

    @property
    def dlq_topic(self) -> str:
        """The validator's dead-letter topic (`ppo.telemetry.epochs.dlq`)."""
        return self.qualify(DLQ_TOPIC)

    @property
    def drift_topic(self) -> str:
        """The drift group's DriftRecord topic (`ppo.telemetry.drift`)."""
        return self.qualify(DRIFT_TOPIC)

    @property
    def alerts_topic(self) -> str:
        """The watch group's Alert topic (`ppo.telemetry.alerts`)."""
        return self.qualify(ALERTS_TOPIC)

    @property
    def validator_group(self) -> str:
        """The validator's group id (`ppo-telemetry-validator`)."""
        return self.qualify(VALIDATOR_GROUP)

    @property
    def drift_group(self) -> str:
        """The drift group's id (`ppo-telemetry-drift`)."""
        return self.qualify(DRIFT_GROUP)

    @property
    def watch_group(self) -> str:
        """The watch group's id (`ppo-telemetry-watch`)."""
        return self.qualify(WATCH_GROUP)

    @property
    def groups(self) -> tuple[str, ...]:
        """Every consumer group id of the namespace."""
        return tuple(self.qualify(group) for group in DEFAULT_GROUPS)

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic of the namespace: SPEC §4's and each group's state topic."""
        return tuple(self.qualify(topic) for topic in DEFAULT_TOPICS) + tuple(state_topic(g) for g in self.groups)

    def describe(self) -> str:
        """The namespace as messages name it: `namespace team-a` or `the default namespace`."""
        return f"namespace {self.name}" if self.name else "the default namespace"


DEFAULT_NAMESPACE = Namespace()
"""The SPEC's own names, unprefixed."""
