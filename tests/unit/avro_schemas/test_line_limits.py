"""Reading NDJSON lines in linear time and bounded memory: `LineSplitter`, `iter_stream_lines`, `iter_file_lines`,
and tail's readers (`iter_records_from`, `SegmentFollower`).

A line over the limit comes out as one `OverlongLine` (its length, never its bytes); a line that runs on
past the skip limit without a newline (an endless device, a binary pipe) is `UnendingLineError`.
"""

from __future__ import annotations

import io
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avro_schemas.ndjson import (
    DEFAULT_MAX_LINE_BYTES,
    LineSplitter,
    OverlongLine,
    SegmentFollower,
    StreamReadError,
    UnendingLineError,
    iter_file_lines,
    iter_records_from,
    iter_segment_lines,
    iter_stream_lines,
    segment_name,
    skip_limit,
)

MIB = 1 << 20


def expected_lines(data: bytes, limit: int | None, complete_only: bool = False) -> list:
    """The reference: `bytes.split`, each line over `limit` replaced by its `OverlongLine`."""
    lines = data.split(b"\n")
    last = lines.pop()
    if last and not complete_only:
        lines.append(last)
    if limit is None:
        return lines
    return [line if len(line) <= limit else OverlongLine(len(line), limit) for line in lines]


def split_in_chunks(data: bytes, sizes: list[int], limit: int | None, complete_only: bool = False) -> list:
    splitter = LineSplitter(limit)
    out: list = []
    position = 0
    for size in sizes:
        out += splitter.feed(data[position:position + size])
        position += size
    out += splitter.feed(data[position:]) if position < len(data) else []
    return out + splitter.finish(complete_only)


class Endless(io.RawIOBase):
    """A stream of `fill` bytes that never ends (like /dev/zero), holding nothing."""

    def __init__(self, fill: bytes = b"\0") -> None:
        self.fill = fill

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer[:] = self.fill * len(buffer)
        return len(buffer)


class LongLine(io.RawIOBase):
    """`prefix`, then `length` bytes of `x`, then `suffix`, generated as read (nothing held)."""

    def __init__(self, length: int, prefix: bytes = b"", suffix: bytes = b"\n") -> None:
        self.parts = [prefix, length, suffix]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self.parts:
            part = self.parts[0]
            if isinstance(part, int):
                size = min(part, len(buffer))
                buffer[:size] = b"x" * size
                self.parts[0] = part - size
                if self.parts[0] == 0:
                    self.parts.pop(0)
                return size
            if not part:
                self.parts.pop(0)
                continue
            size = min(len(part), len(buffer))
            buffer[:size] = part[:size]
            self.parts[0] = part[size:]
            return size
        return 0


# ---------------------------------------------------------------------------------------- the splitter


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"a", b"bb", b"\n", b"xxxxxxx", b"\n\n", b""]), max_size=40).map(b"".join),
    sizes=st.lists(st.integers(min_value=0, max_value=9), max_size=20),
    limit=st.one_of(st.none(), st.integers(min_value=1, max_value=12)),
    complete_only=st.booleans(),
)
def test_splitter_matches_split_for_any_chunking_and_limit(data, sizes, limit, complete_only):
    assert split_in_chunks(data, sizes, limit, complete_only) == expected_lines(data, limit, complete_only)


@pytest.mark.parametrize("limit", [1, 5, 64, 1000])
def test_splitter_matches_split_on_random_bytes_in_random_chunks(limit):
    rng = random.Random(limit)
    for _ in range(50):
        data = bytes(rng.choice(b"ab\n") for _ in range(rng.randrange(0, 3000)))
        sizes = [rng.randrange(1, 700) for _ in range(20)]
        assert split_in_chunks(data, sizes, limit) == expected_lines(data, limit)


def test_a_line_of_exactly_the_limit_is_read_and_one_byte_more_is_overlong():
    data = b"x" * 10 + b"\n" + b"y" * 11 + b"\nz\n"
    assert split_in_chunks(data, [3] * 10, 10) == [b"x" * 10, OverlongLine(11, 10), b"z"]
    assert split_in_chunks(data, [len(data)], 10) == [b"x" * 10, OverlongLine(11, 10), b"z"]


def test_an_overlong_line_is_one_record_and_reading_goes_on_after_it():
    data = b"first\n" + b"q" * 5000 + b"\nafter\n"
    assert split_in_chunks(data, [7] * 1000, 100) == [b"first", OverlongLine(5000, 100), b"after"]


def test_an_overlong_last_line_without_newline_is_held_back_with_complete_only():
    data = b"ok\n" + b"q" * 500
    assert split_in_chunks(data, [64] * 10, 100) == [b"ok", OverlongLine(500, 100)]
    assert split_in_chunks(data, [64] * 10, 100, complete_only=True) == [b"ok"]


def test_a_line_running_past_the_skip_limit_is_an_unending_line_error_naming_the_input_and_line():
    splitter = LineSplitter(10, name="/dev/zero")
    assert splitter.feed(b"a\nb\n") == [b"a", b"b"]
    with pytest.raises(UnendingLineError, match=r"/dev/zero: line 3 runs past 67,108,864 bytes without a newline"):
        for _ in range(skip_limit(10) // 4096 + 2):
            splitter.feed(b"\0" * 4096)


def test_an_unending_line_error_is_a_stream_read_error():
    assert issubclass(UnendingLineError, StreamReadError)


def test_skip_limit_is_64_times_the_limit_and_never_below_64_mib():
    assert skip_limit(1) == 64 * MIB
    assert skip_limit(DEFAULT_MAX_LINE_BYTES) == 64 * MIB
    assert skip_limit(4 * MIB) == 256 * MIB


def test_the_default_limit_is_one_mib():
    assert DEFAULT_MAX_LINE_BYTES == 1_048_576


def test_a_limit_below_one_is_refused():
    with pytest.raises(ValueError):
        LineSplitter(0)


# ---------------------------------------------------------------------------------------- streams


def test_an_endless_stream_ends_with_an_unending_line_error_in_bounded_memory():
    tracemalloc.start()
    try:
        with pytest.raises(UnendingLineError, match="not NDJSON, reading stopped"):
            list(iter_stream_lines(io.BufferedReader(Endless()), DEFAULT_MAX_LINE_BYTES, name="zeros"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MIB  # 64 MiB were read: none of it was kept


def test_a_50_mb_line_over_the_limit_is_skipped_in_bounded_memory():
    length = 50_000_000
    stream = io.BufferedReader(LongLine(length, prefix=b'{"a":1}\n', suffix=b"\n{}\n"))
    tracemalloc.start()
    try:
        lines = list(iter_stream_lines(stream, DEFAULT_MAX_LINE_BYTES))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == [b'{"a":1}', OverlongLine(length, DEFAULT_MAX_LINE_BYTES), b"{}"]
    assert peak < 4 * MIB  # the limit (1 MiB) plus a chunk or two, not the 50 MB line


def test_a_50_mb_line_under_a_larger_limit_comes_out_whole_from_a_file(tmp_path):
    length = 50_000_000
    path = tmp_path / "long.ndjson"
    with open(path, "wb") as handle:
        handle.write(b"before\n")
        for _ in range(length // MIB):
            handle.write(b"x" * MIB)
        handle.write(b"x" * (length % MIB) + b"\nafter")
    lines = list(iter_file_lines(path, max_line_bytes=64 * MIB))
    assert len(lines) == 3 and lines[0] == b"before" and lines[2] == b"after"
    assert len(lines[1]) == length and lines[1].count(b"x") == length
    assert list(iter_file_lines(path, max_line_bytes=MIB)) == [b"before", OverlongLine(length, MIB), b"after"]


def test_a_pipe_s_lines_come_out_as_they_arrive_not_after_a_full_chunk():
    class Trickle(io.RawIOBase):
        """A pipe that has one short line ready, then blocks (here: fails the test) if read again."""

        def __init__(self) -> None:
            self.sent = False

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            assert not self.sent, "read past the available line: a pipe would block here"
            self.sent = True
            buffer[:3] = b"ab\n"
            return 3

    lines = iter_stream_lines(io.BufferedReader(Trickle()), DEFAULT_MAX_LINE_BYTES)
    assert next(lines) == b"ab"


def test_a_read_error_is_a_stream_read_error_naming_the_input():
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            raise OSError(5, "Input/output error")

    with pytest.raises(StreamReadError, match="cannot read the pipe: Input/output error"):
        list(iter_stream_lines(io.BufferedReader(Broken()), 10, name="the pipe"))


def test_segment_lines_apply_the_limit_and_hold_back_a_partial_last_line(tmp_path):
    (tmp_path / segment_name(0)).write_bytes(b"r0\n" + b"w" * 300 + b"\nr2\n")
    (tmp_path / segment_name(3)).write_bytes(b"r3\n" + b"p" * 300)
    assert list(iter_segment_lines(tmp_path, max_line_bytes=100)) == [b"r0", OverlongLine(300, 100), b"r2", b"r3"]
    assert list(iter_segment_lines(tmp_path)) == [b"r0", b"w" * 300, b"r2", b"r3"]


# ---------------------------------------------------------------------------------------- tail's readers


def test_records_from_give_an_overlong_line_at_its_offset_and_go_on(tmp_path):
    (tmp_path / segment_name(10)).write_bytes(b"r10\n" + b"w" * 300 + b"\nr12\n")
    assert list(iter_records_from(tmp_path, 11, max_line_bytes=100)) == [(11, OverlongLine(300, 100)), (12, b"r12")]
    assert list(iter_records_from(tmp_path, 11)) == [(11, b"w" * 300), (12, b"r12")]


def test_the_follower_gives_an_overlong_line_once_and_the_lines_after_it(tmp_path):
    path = tmp_path / segment_name(0)
    path.write_bytes(b"r0\n" + b"w" * 200_000)
    follower = SegmentFollower(tmp_path, 0, max_line_bytes=1000)
    assert follower.poll() == [(0, b"r0")]
    assert follower.poll() == []  # still open: nothing yet, nothing kept
    with open(path, "ab") as handle:
        handle.write(b"w" * 1000 + b"\nr2\nr3\n")
    assert follower.poll() == [(1, OverlongLine(201_000, 1000)), (2, b"r2"), (3, b"r3")]
    assert follower.poll() == []


def test_the_follower_checks_lines_that_end_inside_the_chunk_too(tmp_path):
    (tmp_path / segment_name(0)).write_bytes(b"a" * 50 + b"\n" + b"b" * 10 + b"\n")
    follower = SegmentFollower(tmp_path, 0, max_line_bytes=20)
    assert follower.poll() == [(0, OverlongLine(50, 20)), (1, b"b" * 10)]


def test_the_follower_skips_a_50_mb_line_in_bounded_memory(tmp_path):
    length = 50_000_000
    with open(tmp_path / segment_name(0), "wb") as handle:
        for _ in range(length // 1_000_000):
            handle.write(b"x" * 1_000_000)
        handle.write(b"\nafter\n")
    follower = SegmentFollower(tmp_path, 0, max_line_bytes=MIB)
    tracemalloc.start()
    try:
        got = []
        for _ in range(100):
            batch = follower.poll()
            if not batch:
                break
            got += batch
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == [(0, OverlongLine(length, MIB)), (1, b"after")]
    assert peak < 4 * MIB


def test_the_follower_of_an_unending_line_is_an_unending_line_error(tmp_path):
    with open(tmp_path / segment_name(7), "wb") as handle:
        handle.truncate(skip_limit(MIB) + MIB)  # sparse: zeros without a newline, no disk used
    follower = SegmentFollower(tmp_path, 0, max_line_bytes=MIB)
    with pytest.raises(UnendingLineError, match="the line at offset 7 runs past"):
        follower.poll()


def test_a_follower_limit_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError):
        SegmentFollower(tmp_path, 0, max_line_bytes=0)
