"""Reading the stream from an offset (SPEC §3, `tail`): across segments, in order, never a partial line."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from avro_schemas.ndjson import SegmentFollower, StreamReadError, iter_records_from, list_segments, segment_name
from ppo_telemetry.cli import main
from ppo_telemetry.demo import synthetic_run
from producer.ndjson_sink import NdjsonStreamWriter

CLI = Path("/work/main/.venv/bin/ppo-telemetry")
DEADLINE_SECONDS = 20.0


def records(count: int, start: int = 0) -> list[dict]:
    out = synthetic_run("run-t", count + start, seed=1, unstable=False)[start:]
    for record in out:
        record.pop("log_stream_offset", None)
    return out


def write_stream(directory: Path, count: int, max_segment_bytes: int = 2000) -> list[bytes]:
    """Write `count` records with the real writer and return the stored lines in offset order."""
    with NdjsonStreamWriter(directory, max_segment_bytes=max_segment_bytes) as writer:
        for record in records(count):
            writer.write(record)
    lines = [line for _, path in list_segments(directory) for line in path.read_bytes().split(b"\n")[:-1]]
    assert len(lines) == count
    return lines


def poll_until(follower: SegmentFollower, count: int) -> list[tuple[int, bytes]]:
    """Poll until `count` lines came, against a deadline."""
    got: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    while len(got) < count and time.monotonic() < deadline:
        got += follower.poll()
    return got


# --------------------------------------------------------------------------------- iter_records_from


def test_from_an_offset_inside_a_middle_segment_gives_exactly_that_offset_to_the_end(tmp_path):
    lines = write_stream(tmp_path, 40)
    segments = list_segments(tmp_path)
    assert len(segments) >= 3
    start = segments[1][0] + 1  # inside the second segment, not at its start
    got = list(iter_records_from(tmp_path, start))
    assert [offset for offset, _ in got] == list(range(start, 40))
    assert [line for _, line in got] == lines[start:]
    assert all(json.loads(line)["log_stream_offset"] == offset for offset, line in got)


@pytest.mark.parametrize("start", [0, 1])
def test_from_the_start_gives_every_record(tmp_path, start):
    lines = write_stream(tmp_path, 25)
    assert [line for _, line in iter_records_from(tmp_path, start)] == lines[start:]


def test_from_a_segment_boundary_starts_with_that_segments_first_record(tmp_path):
    lines = write_stream(tmp_path, 40)
    first = list_segments(tmp_path)[2][0]
    assert [offset for offset, _ in iter_records_from(tmp_path, first)] == list(range(first, 40))
    assert next(iter_records_from(tmp_path, first))[1] == lines[first]


@pytest.mark.parametrize("start", [40, 41, 10**6])
def test_from_beyond_the_end_gives_nothing(tmp_path, start):
    write_stream(tmp_path, 40)
    assert list(iter_records_from(tmp_path, start)) == []


def test_a_partial_last_line_is_held_back(tmp_path):
    (tmp_path / segment_name(0)).write_bytes(b"r0\nr1\n")
    (tmp_path / segment_name(2)).write_bytes(b"r2\nr3-partial")
    assert list(iter_records_from(tmp_path, 1)) == [(1, b"r1"), (2, b"r2")]


def test_offsets_come_from_segment_names_and_line_positions(tmp_path):
    # Older segments removed by retention: the first one left starts at 100.
    (tmp_path / segment_name(100)).write_bytes(b"a\nb\n")
    (tmp_path / segment_name(102)).write_bytes(b"c\n")
    assert list(iter_records_from(tmp_path, 0)) == [(100, b"a"), (101, b"b"), (102, b"c")]
    assert list(iter_records_from(tmp_path, 102)) == [(102, b"c")]


def test_blank_lines_keep_their_offset_but_are_not_records(tmp_path):
    (tmp_path / segment_name(0)).write_bytes(b"a\n\nc\n")
    assert list(iter_records_from(tmp_path, 0)) == [(0, b"a"), (2, b"c")]


def test_missing_directory_is_a_stream_read_error(tmp_path):
    with pytest.raises(StreamReadError):
        list(iter_records_from(tmp_path / "absent", 0))


def test_a_negative_offset_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        list(iter_records_from(tmp_path, -1))


# ------------------------------------------------------------------------------------ SegmentFollower


def test_follower_holds_back_a_partial_line_and_emits_it_once_completed(tmp_path):
    path = tmp_path / segment_name(0)
    path.write_bytes(b'{"n":0}\n')
    follower = SegmentFollower(tmp_path, 0)
    assert follower.poll() == [(0, b'{"n":0}')]
    with open(path, "ab") as handle:
        handle.write(b'{"n":')
    assert follower.poll() == []
    assert follower.poll() == []
    with open(path, "ab") as handle:
        handle.write(b"1}\n")
    assert follower.poll() == [(1, b'{"n":1}')]
    assert follower.poll() == []


def test_follower_crosses_rotation_in_order_exactly_once(tmp_path):
    follower = SegmentFollower(tmp_path, 0)
    with NdjsonStreamWriter(tmp_path, max_segment_bytes=1500) as writer:
        written: list[int] = []
        got: list[tuple[int, bytes]] = []
        for index, record in enumerate(records(30)):
            written.append(writer.write(record))
            if index % 4 == 0:
                got += follower.poll()
    assert len(list_segments(tmp_path)) >= 3
    got += poll_until(follower, 30 - len(got))
    assert [offset for offset, _ in got] == written == list(range(30))
    assert all(json.loads(line)["log_stream_offset"] == offset for offset, line in got)
    assert follower.poll() == []


def test_follower_starts_inside_a_middle_segment(tmp_path):
    lines = write_stream(tmp_path, 40)
    start = list_segments(tmp_path)[1][0] + 2
    got = poll_until(SegmentFollower(tmp_path, start), 40 - start)
    assert [line for _, line in got] == lines[start:]


def test_follower_tolerates_a_directory_that_does_not_exist_yet(tmp_path):
    directory = tmp_path / "later"
    follower = SegmentFollower(directory, 0)
    assert follower.poll() == []
    directory.mkdir()
    assert follower.poll() == []
    lines = write_stream(directory, 5)
    assert [line for _, line in poll_until(follower, 5)] == lines


def test_follower_from_beyond_the_end_waits_for_new_records(tmp_path):
    write_stream(tmp_path, 10)
    follower = SegmentFollower(tmp_path, 12)
    assert follower.poll() == []
    with NdjsonStreamWriter(tmp_path, max_segment_bytes=2000) as writer:
        for record in records(4):
            writer.write(record)
    assert [offset for offset, _ in poll_until(follower, 2)] == [12, 13]


def test_follower_drains_a_backlog_over_several_bounded_polls(tmp_path):
    count = 300  # a few hundred KB: several of the follower's 64 KiB reads
    lines = write_stream(tmp_path, count, max_segment_bytes=10**7)
    follower = SegmentFollower(tmp_path, 0, max_bytes_per_poll=1)
    first = follower.poll()
    assert 0 < len(first) < count
    assert [line for _, line in first + poll_until(follower, count - len(first))] == lines


def test_follower_does_not_glue_a_torn_line_to_the_line_written_after_a_restart(tmp_path):
    write_stream(tmp_path, 3)
    follower = SegmentFollower(tmp_path, 0)
    assert len(follower.poll()) == 3
    _, last = list_segments(tmp_path)[-1]
    with open(last, "ab") as handle:
        handle.write(b'{"torn":')
    assert follower.poll() == []
    with NdjsonStreamWriter(tmp_path) as writer:  # the restart truncates the torn tail, then appends
        writer.write(records(1)[0])
    (offset, line), = poll_until(follower, 1)
    assert offset == 3 and json.loads(line)["log_stream_offset"] == 3


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_tail_prints_the_stored_lines_from_the_offset(tmp_path, capsys):
    lines = write_stream(tmp_path, 30)
    code = main(["tail", str(tmp_path), "--from-offset", "17"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.encode() == b"".join(line + b"\n" for line in lines[17:])
    assert captured.err == ""


def test_cli_tail_from_beyond_the_end_prints_nothing(tmp_path, capsys):
    write_stream(tmp_path, 5)
    assert main(["tail", str(tmp_path), "--from-offset", "5"]) == 0
    assert capsys.readouterr().out == ""


def test_cli_tail_of_a_missing_directory_is_a_one_line_error(tmp_path, capsys):
    code = main(["tail", str(tmp_path / "absent"), "--from-offset", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no such directory" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [["--from-offset", "-1"], ["--from-offset", "x"], [], ["--from-offset", "0", "--poll-interval", "0"]])
def test_cli_tail_usage_errors_exit_2(tmp_path, capsys, argv):
    code = main(["tail", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("ppo-telemetry: error:") and err.count("\n") == 1


def test_cli_tail_follow_streams_across_rotation_and_exits_0_on_sigterm(tmp_path):
    directory = tmp_path / "stream"  # created by the writer after the follower started
    process = subprocess.Popen(
        [str(CLI), "tail", str(directory), "--from-offset", "0", "--follow", "--poll-interval", "0.02"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    received: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            received.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    got: list[bytes] = []

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while len(got) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"tail gave {len(got)} of {count} lines"
            try:
                got.append(received.get(timeout=remaining))
            except queue.Empty:
                pass

    try:
        expected: list[bytes] = []
        with NdjsonStreamWriter(directory, max_segment_bytes=1500) as writer:
            for batch in range(5):
                for record in records(8, start=batch * 8):
                    writer.write(record)
                    expected.append(record)
                wait_for(len(expected))  # the follower keeps up batch by batch, across rotations
        assert len(list_segments(directory)) >= 5
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=DEADLINE_SECONDS)
        reader.join(timeout=DEADLINE_SECONDS)
        while not received.empty():
            got.append(received.get())
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0
    assert process.stderr.read() == b""
    assert [json.loads(line) for line in got] == expected
    stored = [line + b"\n" for segment in list_segments(directory) for line in segment[1].read_bytes().splitlines()]
    assert got == stored  # byte for byte as the writer stored them
    assert [json.loads(line)["log_stream_offset"] for line in got] == list(range(40))
