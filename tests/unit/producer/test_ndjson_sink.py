"""The NDJSON stream writer (SPEC §3): global offsets, size rotation, whole lines, restart."""

from __future__ import annotations

import json
import math
import os

import pytest

from avro_schemas.errors import TelemetryError
from avro_schemas.ndjson import iter_segment_lines, list_segments, segment_name
from ppo_telemetry.demo import synthetic_run
from producer.ndjson_sink import NdjsonSink, NdjsonStreamWriter, StreamWriteError
from producer.sinks import TelemetrySink


def v1_1(index: int) -> dict:
    """A v1.1 record whose size varies a little with `index`, so rotation points are not all alike."""
    record = synthetic_run("run-a", 1, seed=index, unstable=False)[0]
    record["epoch"] = index
    record.pop("log_stream_offset", None)
    return record


def v1_0(index: int) -> dict:
    from avro_schemas import VERSION_FIELDS

    full = v1_1(index)
    record = {name: full[name] for name in VERSION_FIELDS["1.0"]}
    record["telemetry_version"] = "1.0"
    return record


def stored(directory) -> list[dict]:
    return [json.loads(line) for line in iter_segment_lines(directory)]


def segment_lines(path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def test_offsets_are_global_and_contiguous_across_rotation(tmp_path):
    with NdjsonStreamWriter(tmp_path, max_segment_bytes=2000) as writer:
        offsets = [writer.write(v1_1(i)) for i in range(40)]
        assert writer.next_offset == 40
    assert offsets == list(range(40))
    assert len(list_segments(tmp_path)) > 3
    assert [r["log_stream_offset"] for r in stored(tmp_path)] == list(range(40))
    assert [r["epoch"] for r in stored(tmp_path)] == list(range(40))


def test_write_sets_the_offset_on_the_callers_v1_1_record(tmp_path):
    record = v1_1(0)
    with NdjsonStreamWriter(tmp_path) as writer:
        writer.write(v1_1(1))
        assert writer.write(record) == 1
    assert record["log_stream_offset"] == 1


def test_each_segment_is_named_by_the_offset_of_its_first_record(tmp_path):
    with NdjsonStreamWriter(tmp_path, max_segment_bytes=1500) as writer:
        for i in range(30):
            writer.write(v1_1(i))
    segments = list_segments(tmp_path)
    assert segments[0][0] == 0
    for first, path in segments:
        assert path.name == segment_name(first)
        assert json.loads(segment_lines(path)[0])["log_stream_offset"] == first


def test_rotation_keeps_every_segment_within_the_maximum(tmp_path):
    limit = 1800
    with NdjsonStreamWriter(tmp_path, max_segment_bytes=limit) as writer:
        for i in range(50):
            writer.write(v1_1(i))
    segments = list_segments(tmp_path)
    sizes = [path.stat().st_size for _, path in segments]
    assert all(size <= limit for size in sizes)
    # Rotation happens only when the next line would not fit: no segment could have taken its successor's first line.
    for (_, path), (_, following) in zip(segments, segments[1:]):
        first_line = len(segment_lines(following)[0]) + 1
        assert path.stat().st_size + first_line > limit


def test_a_line_longer_than_the_maximum_gets_a_segment_of_its_own(tmp_path):
    big = v1_1(1)
    big["run_id"] = "r" * 128
    with NdjsonStreamWriter(tmp_path, max_segment_bytes=300) as writer:
        writer.write(v1_1(0))
        writer.write(big)
        writer.write(v1_1(2))
    segments = list_segments(tmp_path)
    assert [first for first, _ in segments] == [0, 1, 2]
    assert all(len(segment_lines(path)) == 1 for _, path in segments)
    assert segments[1][1].stat().st_size > 300


def test_each_line_is_compact_json_ending_in_a_newline(tmp_path):
    with NdjsonStreamWriter(tmp_path) as writer:
        writer.write(v1_1(0))
    data = (tmp_path / segment_name(0)).read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert b", " not in data and b": " not in data


def test_restart_continues_the_counter(tmp_path):
    with NdjsonStreamWriter(tmp_path, max_segment_bytes=2500) as writer:
        for i in range(10):
            writer.write(v1_1(i))
    with NdjsonStreamWriter(tmp_path, max_segment_bytes=2500) as writer:
        assert writer.next_offset == 10
        offsets = [writer.write(v1_1(i)) for i in range(10, 15)]
    assert offsets == list(range(10, 15))
    assert [r["log_stream_offset"] for r in stored(tmp_path)] == list(range(15))


def test_restart_truncates_a_torn_last_line_and_continues_at_the_next_offset(tmp_path):
    with NdjsonStreamWriter(tmp_path, max_segment_bytes=2500) as writer:
        for i in range(12):
            writer.write(v1_1(i))
    first, last = list_segments(tmp_path)[-1]
    complete = last.read_bytes()
    with open(last, "ab") as handle:  # a crash mid-write leaves half a line behind
        handle.write(b'{"telemetry_version":"1.1","run_id":"torn"')
    with NdjsonStreamWriter(tmp_path, max_segment_bytes=2500) as writer:
        assert last.read_bytes() == complete
        assert writer.next_offset == 12
        assert writer.write(v1_1(12)) == 12
    records = stored(tmp_path)
    assert [r["log_stream_offset"] for r in records] == list(range(13))
    assert all(r["run_id"] != "torn" for r in records)


def test_restart_on_a_segment_holding_only_a_torn_line_reuses_its_offset(tmp_path):
    (tmp_path / segment_name(7)).write_bytes(b'{"telemetry_ver')
    with NdjsonStreamWriter(tmp_path) as writer:
        assert writer.next_offset == 7
        writer.write(v1_1(0))
    assert [r["log_stream_offset"] for r in stored(tmp_path)] == [7]


def test_v1_0_lines_consume_offsets_without_carrying_them(tmp_path):
    with NdjsonStreamWriter(tmp_path) as writer:
        offsets = [writer.write(v1_0(0)), writer.write(v1_0(1)), writer.write(v1_1(2))]
    assert offsets == [0, 1, 2]
    records = stored(tmp_path)
    assert [("log_stream_offset" in r) for r in records] == [False, False, True]
    assert records[2]["log_stream_offset"] == 2


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_nan_record_is_a_stream_write_error_and_nothing_is_written(tmp_path, bad):
    with NdjsonStreamWriter(tmp_path) as writer:
        writer.write(v1_1(0))
        record = v1_1(1)
        record["policy_loss"] = bad
        with pytest.raises(StreamWriteError, match="NaN or Infinity") as info:
            writer.write(record)
        assert isinstance(info.value, TelemetryError)
        assert "log_stream_offset" not in record
        assert writer.next_offset == 1
        assert writer.write(v1_1(2)) == 1  # the failed record took no offset: the stream stays contiguous
    assert [r["log_stream_offset"] for r in stored(tmp_path)] == [0, 1]


def test_a_record_that_is_not_json_serialisable_is_a_stream_write_error(tmp_path):
    record = v1_1(0)
    record["policy_loss"] = object()
    with NdjsonStreamWriter(tmp_path) as writer:
        with pytest.raises(StreamWriteError, match="not JSON-serialisable"):
            writer.write(record)
        assert writer.next_offset == 0
    assert stored(tmp_path) == []


def test_a_fresh_directory_is_created_and_holds_no_segment_until_the_first_write(tmp_path):
    directory = tmp_path / "a" / "stream"
    with NdjsonStreamWriter(directory) as writer:
        assert directory.is_dir() and list_segments(directory) == []
        writer.write(v1_1(0))
    assert [first for first, _ in list_segments(directory)] == [0]


def test_a_second_writer_on_the_same_directory_is_refused(tmp_path):
    with NdjsonStreamWriter(tmp_path):
        with pytest.raises(StreamWriteError, match="another writer"):
            NdjsonStreamWriter(tmp_path)
    NdjsonStreamWriter(tmp_path).close()  # closing released the directory


def test_writing_after_close_is_a_stream_write_error_and_close_is_idempotent(tmp_path):
    writer = NdjsonStreamWriter(tmp_path, fsync=True)
    writer.write(v1_1(0))
    writer.flush()
    writer.close()
    writer.close()
    with pytest.raises(StreamWriteError, match="closed"):
        writer.write(v1_1(1))


def test_a_non_positive_maximum_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        NdjsonStreamWriter(tmp_path, max_segment_bytes=0)


def test_ndjson_sink_is_a_telemetry_sink_that_numbers_in_place(tmp_path):
    sink = NdjsonSink(tmp_path, max_segment_bytes=1000)
    assert isinstance(sink, TelemetrySink)
    records = [v1_1(i) for i in range(5)]
    for record in records:
        sink.publish(record)
    sink.flush()
    sink.close()
    sink.close()
    assert [r["log_stream_offset"] for r in records] == list(range(5))
    assert stored(tmp_path) == records


def test_the_stream_is_visible_to_readers_before_flush(tmp_path):
    with NdjsonStreamWriter(tmp_path) as writer:
        writer.write(v1_1(0))
        # No user-space buffer: a tailer reading now sees the whole line.
        assert (tmp_path / segment_name(0)).read_bytes().endswith(b"\n")
        assert os.path.getsize(tmp_path / segment_name(0)) > 0
