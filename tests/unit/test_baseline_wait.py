"""`consume drift --wait-for-baseline`: when a baseline run counts as arrived (the pure core of
consumers/baseline_wait.py) and the option's usage errors. The waiting itself, on a real broker, is in
tests/integration/test_baseline_wait.py."""

from __future__ import annotations

import pytest

from consumers.baseline_wait import BaselineArrival, poll_interval
from ppo_telemetry.cli import main


def test_a_run_arrives_once_it_has_records_and_none_new_for_the_quiet_period():
    arrival = BaselineArrival(quiet_seconds=30)
    assert not arrival.observe(0, now=0)      # not on the topic
    assert not arrival.observe(0, now=100)    # still not: no records never counts, however long
    assert not arrival.observe(5, now=101)    # records, but the run may still be written
    assert not arrival.observe(9, now=120)    # more came: the quiet period starts again
    assert not arrival.observe(9, now=149)
    assert arrival.observe(9, now=150)


def test_a_complete_run_found_at_once_still_waits_one_quiet_period():
    arrival = BaselineArrival(quiet_seconds=2)
    assert not arrival.observe(40, now=10)
    assert arrival.observe(40, now=12)


def test_the_topic_is_read_a_few_times_per_quiet_period_but_not_too_often():
    assert poll_interval(30) == 5.0 and poll_interval(8) == 2.0 and poll_interval(0.1) == 0.2


@pytest.mark.parametrize("argv", [
    ["consume", "validate", "--wait-for-baseline"],
    ["consume", "drift", "--wait-for-baseline"],                                # nothing to wait for
    ["consume", "drift", "--wait-for-baseline", "--baseline", "b.ndjson", "--baseline-run", "r"],  # a file
])
def test_wait_for_baseline_outside_consume_drift_with_baseline_run_is_a_usage_error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--wait-for-baseline is for consume drift with --baseline-run" in err
