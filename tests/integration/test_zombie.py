"""Zombie fencing (issue 9, item 5): an instance frozen (SIGSTOP) mid-stream, past its session, while the
other instance of its group takes its partitions over; resumed (SIGCONT), its late transaction must be
fenced, and it rejoins or exits with one line. Every output exactly once (`exactly_once.py`'s verifier).
"""

from __future__ import annotations

import signal
import time

import pytest

from avro_schemas.topics import WATCH_GROUP
from exactly_once import (
    PARTITIONS, WATCH_RULES, Backlog, GroupOffsets, expected_outputs, interleaved, owned_partitions,
    run_ids_on_partitions, verify_outputs, with_faults,
)
from kafka_testing import wait_for
from ppo_telemetry.demo import synthetic_run
from producer.kafka_sink import KafkaSink

pytestmark = pytest.mark.integration

FROZEN_SECONDS = 15.0  # past the session (3 s in these tests) and the transaction timeout (10 s)


def test_a_frozen_instance_is_fenced_when_it_wakes_and_every_output_is_written_once(
    kafka_config, consumers, unique_run_id
):
    run_ids = run_ids_on_partitions(unique_run_id, "run", [0, 1, 2, 0, 1, 2])
    records = {run_id: synthetic_run(run_id, 240, seed=70 + i, unstable=True) for i, run_id in enumerate(run_ids)}
    payloads = {run_id: with_faults(r, seed=i) for i, (run_id, r) in enumerate(records.items())}
    first = {run_id: p[: len(p) // 2] for run_id, p in payloads.items()}
    rest = {run_id: p[len(p) // 2:] for run_id, p in payloads.items()}
    KafkaSink(kafka_config).close()

    watch = ("--batch-size", "20", "--rules", str(WATCH_RULES))
    a = consumers("watch", *watch, instance_id="a")
    a.wait_assigned()
    b = consumers("watch", *watch, instance_id="b")
    wait_for(lambda: owned_partitions(a.log()) and owned_partitions(b.log())
             and owned_partitions(a.log()) | owned_partitions(b.log()) == set(range(PARTITIONS)),
             60, "a and b to split the partitions")
    a_owns = owned_partitions(a.log())

    offsets = GroupOffsets(kafka_config, WATCH_GROUP)
    try:
        before = offsets.committed()
        backlog = Backlog()
        backlog.send(kafka_config, interleaved(first))
        ends = offsets.ends()
        # freeze a while it works through its share, between or inside its transactions
        wait_for(lambda: sum(offsets.committed()[p] - before[p] for p in a_owns)
                 >= 0.2 * sum(ends[p] - before[p] for p in a_owns), 90, "a to get into its backlog")
        a.process.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        wait_for(lambda: owned_partitions(b.log()) == set(range(PARTITIONS)), 60, "b to take a's partitions over")
        backlog.send(kafka_config, interleaved(rest))  # more work arrives while a is frozen
        time.sleep(max(0.0, FROZEN_SECONDS - (time.monotonic() - frozen_at)))  # the freeze, not a synchronisation
        a.process.send_signal(signal.SIGCONT)
        wait_for(lambda: offsets.lag() == 0, 180, "the group to finish the backlog")
        assert b.process.poll() is None, b.log()
    finally:
        offsets.close()
    a_log = a.log()
    assert "Traceback" not in a_log, a_log
    # a rejoined and leaves cleanly when told to (0), or it exited when it woke (2, one line saying why, for a
    # supervisor to restart it): poll() cannot tell an instance still leaving on its own from one that rejoined
    code = a.terminate() if a.process.poll() is None else a.process.returncode
    a_log = a.log()
    assert code == 0 or (code == 2 and a_log.strip().splitlines()[-1].startswith("ppo-telemetry")), (code, a_log)
    assert b.terminate() == 0, b.log()
    verify_outputs(kafka_config, {r.encode() for r in run_ids}, expected_outputs(backlog, None), ("watch",))
