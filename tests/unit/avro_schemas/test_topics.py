"""Namespaces (issue 9): one prefix names every topic, group id and transactional id; the empty one is SPEC §4's."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from avro_schemas.errors import TelemetryError
from avro_schemas.topics import (
    DEFAULT_NAMESPACE, MAX_NAMESPACE_LENGTH, MAX_TOPIC_NAME_LENGTH, Namespace, NamespaceError, check_namespace_name,
)

# SPEC §4, written out rather than imported: the default namespace must keep these names exactly
SPEC_TOPICS = (
    "ppo.telemetry.epochs", "ppo.telemetry.schemas", "ppo.telemetry.epochs.dlq", "ppo.telemetry.drift",
    "ppo.telemetry.alerts",
)
SPEC_GROUPS = ("ppo-telemetry-validator", "ppo-telemetry-drift", "ppo-telemetry-watch")
KAFKA_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _names(namespace: Namespace) -> set[str]:
    return {*namespace.topics, *namespace.groups}


def test_the_default_namespace_has_exactly_the_spec_names():
    assert DEFAULT_NAMESPACE == Namespace("") and DEFAULT_NAMESPACE.is_default
    assert (DEFAULT_NAMESPACE.epochs_topic, DEFAULT_NAMESPACE.schemas_topic, DEFAULT_NAMESPACE.dlq_topic,
            DEFAULT_NAMESPACE.drift_topic, DEFAULT_NAMESPACE.alerts_topic) == SPEC_TOPICS
    assert DEFAULT_NAMESPACE.groups == SPEC_GROUPS
    assert DEFAULT_NAMESPACE.topics == SPEC_TOPICS + tuple(f"{group}.state" for group in SPEC_GROUPS)
    assert DEFAULT_NAMESPACE.describe() == "the default namespace"


def test_a_namespace_prefixes_every_name_with_its_name_and_a_dot():
    namespace = Namespace("team-a")
    assert namespace.epochs_topic == "team-a.ppo.telemetry.epochs"
    assert namespace.dlq_topic == "team-a.ppo.telemetry.epochs.dlq"
    assert (namespace.validator_group, namespace.drift_group, namespace.watch_group) == tuple(
        f"team-a.{group}" for group in SPEC_GROUPS
    )
    assert namespace.topics == tuple(f"team-a.{name}" for name in DEFAULT_NAMESPACE.topics)
    assert namespace.qualify("ppo-telemetry-demo-probe") == "team-a.ppo-telemetry-demo-probe"
    assert not namespace.is_default and namespace.describe() == "namespace team-a"


def test_a_child_namespace_is_inside_its_parent():
    assert Namespace("team-a").child("demo-1").name == "team-a.demo-1"
    assert DEFAULT_NAMESPACE.child("demo-1") == Namespace("demo-1")
    with pytest.raises(NamespaceError):
        Namespace("team-a").child("")
    with pytest.raises(NamespaceError):
        Namespace("team-a").child("bad name")


@pytest.mark.parametrize("name", ["a", "team-a", "Team.A.1", "0", "a..b", "x" * MAX_NAMESPACE_LENGTH])
def test_names_of_kafka_topic_characters_are_accepted(name):
    assert Namespace(name).name == name


@pytest.mark.parametrize("name, says", [
    ("team_a", "'_' is not allowed"),
    ("team a", "letters, digits"),
    (".team", "starting and ending"),
    ("team.", "starting and ending"),
    ("-team", "starting and ending"),
    ("tëam", "letters, digits"),
    ("a/b", "letters, digits"),
    ("a\nb", "letters, digits"),
    ("x" * (MAX_NAMESPACE_LENGTH + 1), f"at most {MAX_NAMESPACE_LENGTH}"),
    ("x" * 100_000, f"at most {MAX_NAMESPACE_LENGTH}"),
])
def test_a_bad_name_is_one_line_naming_the_problem(name, says):
    with pytest.raises(NamespaceError) as caught:
        Namespace(name)
    message = str(caught.value)
    assert says in message and "\n" not in message and len(message) < 300
    assert isinstance(caught.value, TelemetryError)


def test_a_name_that_is_not_a_string_is_refused():
    with pytest.raises(NamespaceError, match="a namespace is a string"):
        check_namespace_name(3)  # type: ignore[arg-type]


def test_the_longest_name_keeps_the_longest_topic_within_kafkas_limit():
    longest = Namespace("x" * MAX_NAMESPACE_LENGTH)
    assert max(len(topic) for topic in longest.topics) == MAX_TOPIC_NAME_LENGTH
    assert all(KAFKA_TOPIC_NAME.fullmatch(topic) for topic in longest.topics)


namespace_names = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,40}[A-Za-z0-9])?", fullmatch=True) | st.just("")


@given(namespace_names)
def test_every_name_a_namespace_makes_is_a_valid_kafka_topic_name(name):
    namespace = Namespace(name)
    assert all(KAFKA_TOPIC_NAME.fullmatch(topic) for topic in namespace.topics)
    assert len(set(namespace.topics)) == len(namespace.topics)


@given(namespace_names, namespace_names)
def test_two_different_namespaces_share_no_topic_and_no_group(first, second):
    if first != second:
        assert not _names(Namespace(first)) & _names(Namespace(second))
        # transactional ids are `<group id>-<instance id>`: distinct group ids, distinct ids for one instance id
        assert not {f"{g}-0" for g in Namespace(first).groups} & {f"{g}-0" for g in Namespace(second).groups}
