"""The per-run state store (consumers/state_store.py) with the real watch core: a run's state message read
back gives the same dedupe mark and rule states; the last value per run wins, a tombstone drops a run, an
unreadable value is said and the run starts afresh; forgetting drops only the runs of those partitions."""

from __future__ import annotations

import json

from avro_schemas.models import EpochSummary
from consumers.groups import WatchGroup
from consumers.state_store import RunStates
from consumers.validator import validate_record
from ppo_telemetry.demo import synthetic_run


def feed(states: RunStates, records: list[dict], partition: int) -> list[str]:
    """Each record through the stream rules and the core, as the runner does; the verdicts' statuses."""
    statuses = []
    for record in records:
        verdict = states.tracker.check(validate_record(dict(record)))
        statuses.append(verdict.status)
        if verdict.status == "valid":
            states.core.on_record(EpochSummary.from_dict(verdict.record), verdict)
            states.processed(verdict.run_id, partition)
    return statuses


def test_a_runs_state_message_read_back_resumes_it_exactly():
    records = synthetic_run("state-run", 30, seed=5, unstable=True)
    first = RunStates(WatchGroup())
    feed(first, records[:20], partition=2)
    message = first.message("state-run")

    second = RunStates(WatchGroup())
    second.restore([("state-run", 2, message)])
    assert second.partition_of == {"state-run": 2}
    assert second.tracker.last_offsets == first.tracker.last_offsets == {"state-run": 19}
    assert second.core.run_state("state-run") == first.core.run_state("state-run")
    assert feed(second, records[18:20], partition=2) == ["duplicate", "duplicate"]  # re-sent: nothing again
    # the rest of the run gives the same alerts as an instance that never stopped
    rest = [(r, EpochSummary.from_dict(r)) for r in records[20:]]
    went_on = [t.to_avro_dict() for _, model in rest for t in first.core.watch.observe(model)]
    resumed = [t.to_avro_dict() for _, model in rest for t in second.core.watch.observe(model)]
    assert resumed == went_on


def test_the_last_value_per_run_wins_a_tombstone_drops_and_an_unreadable_value_starts_afresh():
    lines: list[str] = []
    states = RunStates(WatchGroup(), lines.append)
    old = json.dumps({"last_log_stream_offset": 3, "core": None}).encode()
    new = json.dumps({"last_log_stream_offset": 9, "core": None}).encode()
    states.restore([
        ("a", 0, old), ("a", 0, new),  # the newer value of a
        ("b", 1, new), ("b", 1, None),  # b dropped
        ("c", 2, b"{not json"),  # c unreadable
        ("d", 2, b"[1, 2]"),  # d not an object
    ])
    assert states.tracker.last_offsets == {"a": 9}
    assert states.partition_of == {"a": 0}
    assert [line.split(" is unreadable")[0] for line in lines] == ["state of run c", "state of run d"]
    assert all("\n" not in line for line in lines)


def test_forgetting_partitions_drops_only_their_runs():
    states = RunStates(WatchGroup())
    feed(states, synthetic_run("kept", 5, seed=1, unstable=False), partition=0)
    feed(states, synthetic_run("moved", 5, seed=2, unstable=False), partition=1)
    states.forget({1, 2})
    assert states.partition_of == {"kept": 0}
    assert set(states.tracker.last_offsets) == {"kept"}
    assert states.core.run_state("moved") == WatchGroup().run_state("moved")  # as for a run never seen
