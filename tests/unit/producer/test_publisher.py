"""The publisher process writes exactly what the in-process sink writes, and fails loudly."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import pytest

from producer.harness import TrainingHarness, preset_for
from producer.ndjson_sink import NdjsonSink, NdjsonStreamWriter
from producer.publisher import PublisherError, PublisherProcess
from producer.records import RowBatch, build_record


def tiny(**overrides):
    return replace(
        preset_for("Conflict-v0"), num_envs=2, num_steps=16, update_epochs=2, total_steps=128, run_id="pub", **overrides
    )


def capture_rows(config) -> list[tuple]:
    rows: list[tuple] = []
    harness = TrainingHarness(config, publish_rows=rows.extend)
    harness.run_ppo()
    harness.close()
    return rows


@pytest.mark.parametrize("v1_1", [True, False], ids=["v1.1", "v1.0"])
def test_rows_through_the_publisher_give_the_bytes_the_in_process_sink_writes(tmp_path, v1_1):
    rows = capture_rows(tiny(enable_telemetry_v1_1=v1_1))
    assert len(rows) == 8
    publisher = PublisherProcess(tmp_path / "child", 1 << 20, "pub", v1_1)
    publisher.publish_rows(RowBatch.from_rows(rows[:3]))
    publisher.publish_rows(RowBatch.from_rows(rows[3:]))
    publisher.flush()
    assert publisher.next_offset == len(rows)
    publisher.close()
    publisher.close()  # idempotent
    sink = NdjsonSink(tmp_path / "parent", 1 << 20)
    for row in rows:
        sink.publish(build_record(row, "pub", v1_1))
    sink.close()
    child = (tmp_path / "child" / "telemetry-00000000000000000000.ndjson").read_bytes()
    parent = (tmp_path / "parent" / "telemetry-00000000000000000000.ndjson").read_bytes()
    assert child == parent and child.count(b"\n") == 8


def test_a_stream_held_by_another_writer_fails_at_start_in_one_line(tmp_path):
    with NdjsonStreamWriter(tmp_path):
        with pytest.raises(PublisherError) as caught:
            PublisherProcess(tmp_path, 1 << 20, "pub", True)
    assert "another writer" in str(caught.value) and "\n" not in str(caught.value)


def test_a_killed_publisher_is_reported_on_the_next_call_and_again_on_close(tmp_path):
    rows = capture_rows(tiny())
    publisher = PublisherProcess(tmp_path, 1 << 20, "pub", True)
    publisher.publish_rows(RowBatch.from_rows(rows[:2]))
    publisher.flush()
    os.kill(publisher._process.pid, signal.SIGKILL)
    publisher._process.wait()
    with pytest.raises(PublisherError, match="exited"):
        for _ in range(50):  # the pipe may take a batch or two before it reports the broken end
            publisher.publish_rows(RowBatch.from_rows(rows))
            publisher.flush()
    with pytest.raises(PublisherError, match="exited"):
        publisher.close()
    assert (tmp_path / "telemetry-00000000000000000000.ndjson").read_bytes().count(b"\n") == 2


def test_end_of_input_makes_the_child_write_what_it_has_and_exit(tmp_path):
    rows = capture_rows(tiny())
    publisher = PublisherProcess(tmp_path, 1 << 20, "pub", True)
    publisher.publish_rows(RowBatch.from_rows(rows))
    publisher._release_pipes()  # as when the parent vanishes
    assert publisher._process.wait(timeout=10) == 0
    assert (tmp_path / "telemetry-00000000000000000000.ndjson").read_bytes().count(b"\n") == len(rows)
