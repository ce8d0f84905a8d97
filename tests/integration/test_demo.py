"""`ppo-telemetry demo` on the real broker: every stage happens, the counts add up, and the story is true.

The story (ppo_telemetry/demo.py): a baseline of two healthy seeds raises no alert, the candidate with an
entropy bonus differs from it in drift, the run with an injected fault raises alerts. All of it in a
namespace of its own, deleted at the end: the default groups' offsets do not move.
"""

from __future__ import annotations

import io
import re

import pytest
from confluent_kafka.admin import AdminClient

from avro_schemas.topics import Namespace
from kafka_testing import default_group_offsets
from ppo_telemetry.demo import CANDIDATE_CHANGE, run_demo
from producer.kafka_sink import KafkaSink

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_run(kafka_bootstrap) -> dict:
    """What the demo prints at its default size (the size whose story it tells), run once for the module,
    with the default groups' committed offsets before and after it."""
    config = {"bootstrap.servers": kafka_bootstrap}
    KafkaSink(config).close()  # the default topics exist, as on a broker in use
    before = default_group_offsets(config)
    out = io.StringIO()
    assert run_demo(out, bootstrap=kafka_bootstrap) == 0
    return {"output": out.getvalue(), "before": before, "after": default_group_offsets(config), "config": config}


@pytest.fixture(scope="module")
def demo_output(demo_run) -> str:
    return demo_run["output"]


@pytest.fixture(scope="module")
def namespace(demo_output) -> Namespace:
    """The demo's namespace, as its first lines name it."""
    return Namespace(re.search(r"^in namespace (\S+):", demo_output, re.MULTILINE).group(1))


def _block(text: str, heading: str) -> list[str]:
    """The indented lines below the first line starting with `heading`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    block = []
    for line in lines[start + 1:]:
        if not line.startswith(" "):
            break
        block.append(line)
    return block


def _run_block(block: list[str], label: str) -> list[str]:
    """The lines of one run (its header line, starting with `label`, first) within a drift or alerts block."""
    start = next(i for i, line in enumerate(block) if line.startswith(f"  {label}"))
    lines = [block[start]]
    for line in block[start + 1:]:
        if not line.startswith("    "):
            break
        lines.append(line)
    return lines


def test_demo_runs_in_a_fresh_namespace_deleted_at_the_end_and_moves_no_default_group(demo_run, namespace):
    assert namespace.name.startswith("demo-")
    assert f"deleted the topics and groups of namespace {namespace.name}" in demo_run["output"]
    left = set(AdminClient(demo_run["config"]).list_topics(timeout=30).topics)
    assert not left & set(namespace.topics)
    assert demo_run["after"] == demo_run["before"]


def test_demo_publishes_validates_and_dead_letters(demo_output, namespace):
    text = demo_output
    published = [int(n) for n in re.findall(r"run demo-\S+: (\d+) records", text)]
    assert len(published) == 4 and all(n > 0 for n in published)
    assert "injected 5 bad messages" in text
    # every group saw every run and the injected messages; four are rejected, the re-send is dropped
    for group in ("validator", "drift", "watch"):
        line = next(l for l in text.splitlines() if f"  {namespace.name}.ppo-telemetry-{group} " in l)
        consumed, valid = map(int, re.search(r"(\d+) consumed,\s+(\d+) valid", line).groups())
        assert (consumed, valid) == (sum(published) + 5, sum(published)), line
        assert "4 rejected, 1 duplicate dropped" in line, line
    assert f"dead-lettered to {namespace.dlq_topic}: 4" in text
    for rule in ("decode/wrong_header", "decode/unknown_schema", "validate/finite"):
        assert rule in text


def test_demo_drift_flags_the_candidate(demo_output, namespace):
    drift = _block(demo_output, f"drift on {namespace.drift_topic}")
    candidate = _run_block(drift, "candidate (")
    assert " ".join(CANDIDATE_CHANGE) in candidate[0]
    differing = [line.split()[0] for line in candidate[1:] if " differs: " in line]
    # an entropy bonus keeps the policy more random: the candidate's entropy is higher than the baseline's
    assert "batch_entropy_mean" in differing, candidate
    entropy = next(line for line in candidate if line.split()[0] == "batch_entropy_mean")
    assert "differs: higher from step" in entropy
    assert _run_block(drift, "fault (")[1:], "the fault run has verdict lines too"


def test_demo_alerts_name_the_fault_run_and_not_the_healthy_runs(demo_output, namespace):
    alerts = _block(demo_output, f"alerts on {namespace.alerts_topic}")
    for seed in (0, 1):
        header = _run_block(alerts, f"baseline (seed {seed})")
        assert header[0].endswith(": no alert transitions"), header
        assert len(header) == 1
    fault = _run_block(alerts, "fault (")
    assert "--fault reward_scale@" in fault[0]
    fired = [m.group(1) for line in fault[1:] if (m := re.search(r"\s([a-z_]+)\s+firing\s", line))]
    assert fired, fault  # at least one rule fired on the fault run, and the output names it
    assert "the healthy baseline runs raised no alert" in demo_output
