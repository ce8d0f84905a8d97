"""Never wedged (issue 9, item 2): the three groups consume while `train --kafka` publishes, and the broker
is stopped and started, then killed -9 and started. A consumer may exit during an outage (one line, exit 2)
but must never hang: the test's supervisor loop starts an exited consumer again, as compose `restart:` or
systemd would, and at the end every group has caught up, ends within a bound on SIGTERM, and wrote each
output exactly once (the supervisor and the checks: `supervision.py`, shared with the cluster's test).

The short plan (one kill -9) runs in `make test`; `make soak` runs the long one (five of
each, as issue 9 asks).
"""

from __future__ import annotations

import time

import pytest

from kafka_testing import free_ports
from ppo_telemetry.broker import LocalBroker
from supervision import SupervisedPipeline

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 15.0  # as in issue 9's report of the wedge


@pytest.mark.parametrize(
    "outages, env",
    # make test: one kill -9 (log recovery, the harder restart; the stop is the soak's and test_faults' too)
    # on Pendulum-v1 (a few dozen records a second: less to catch up with and verify), keeping the suite
    # under 15 minutes; make soak: five of each, as issue 9 asks, on Conflict-v0 (~1,000 records a second)
    [pytest.param(["kill"], "Pendulum-v1", id="short"),
     pytest.param(["stop", "kill"] * 5, "Conflict-v0", id="soak", marks=pytest.mark.soak)],
)
def test_groups_come_through_broker_outages_with_every_output_exactly_once(
    tmp_path, unique_run_id, outages: list[str], env: str,
):
    broker = LocalBroker(port=free_ports(29347, 2), home=tmp_path / "broker")  # its own: the session's is shared
    broker.start()
    pipeline = SupervisedPipeline(broker.bootstrap, unique_run_id("base"), unique_run_id("cur"), tmp_path, env=env)
    try:
        pipeline.start()
        for number, kind in enumerate(outages):
            # under load: each group has committed more since the last outage, and train still publishes
            pipeline.progressing(f"every group to make progress before outage {number + 1}")
            broker.stop() if kind == "stop" else broker.kill()
            end = time.monotonic() + OUTAGE_SECONDS
            pipeline.supervising(lambda: time.monotonic() >= end, OUTAGE_SECONDS + 5, f"the end of outage {number + 1}")
            broker.start()  # the same home: topics, data, transactions and offsets survive
        pipeline.progressing("every group to make progress after the last outage")
        pipeline.finish_and_verify()
    finally:
        pipeline.close()
        broker.stop()
