"""`ppo-telemetry demo` on the real broker: every stage happens and the counts add up."""

from __future__ import annotations

import io
import re

import pytest

from ppo_telemetry.demo import run_demo

pytestmark = pytest.mark.integration


def test_demo_publishes_validates_dead_letters_drifts_and_alerts(kafka_bootstrap):
    out = io.StringIO()
    assert run_demo(out, bootstrap=kafka_bootstrap, steps=6_000) == 0
    text = out.getvalue()
    published = [int(n) for n in re.findall(r"run demo-\S+: (\d+) records", text)]
    assert len(published) == 2 and all(n > 0 for n in published)
    assert "injected 5 bad messages" in text
    # every group saw both runs and the injected messages; four are rejected, the re-send is dropped
    for group in ("validator", "drift", "watch"):
        line = next(l for l in text.splitlines() if f"ppo-telemetry-{group} " in l)
        assert "4 rejected, 1 duplicate dropped" in line, line
    assert "dead-lettered to ppo.telemetry.epochs.dlq: 4" in text
    for rule in ("decode/wrong_header", "decode/unknown_schema", "validate/finite"):
        assert rule in text
    drift_count = int(re.search(r"(\d+) DriftRecords", text).group(1))
    assert drift_count == published[1]  # the candidate's epochs, all present in the baseline
    assert re.search(r"alerts on ppo.telemetry.alerts: \d+ transitions", text)
