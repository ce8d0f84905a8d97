"""The NDJSON stream layout (SPEC §3): segment names and reading whole lines across segments.

Segments live in one directory, each named by the `log_stream_offset` of its first record,
`telemetry-00000000000000000000.ndjson`. The writer lives with the producer; readers (validate, tail)
share this module so both sides agree on the names and on how offsets are counted: a line's offset is
its segment's first offset plus its position in the segment.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import TelemetryError

__all__ = [
    "SEGMENT_PREFIX",
    "SEGMENT_SUFFIX",
    "DEFAULT_MAX_LINE_BYTES",
    "StreamReadError",
    "UnendingLineError",
    "OverlongLine",
    "LineSplitter",
    "skip_limit",
    "segment_name",
    "segment_offset",
    "list_segments",
    "iter_stream_lines",
    "iter_file_lines",
    "iter_segment_lines",
    "iter_records_from",
    "SegmentFollower",
]

SEGMENT_PREFIX = "telemetry-"
SEGMENT_SUFFIX = ".ndjson"
_SEGMENT_RE = re.compile(r"^telemetry-(\d{20})\.ndjson$")
_CHUNK = 1 << 16

# 1 MiB: Kafka's default largest message (`message.max.bytes`, 1,048,588), so a line the limit lets
# through would also fit on the bus. An EpochSummary line is under 1 KiB.
DEFAULT_MAX_LINE_BYTES = 1 << 20
# How far past its start an over-long line is skipped looking for its newline before the input is
# declared unreadable: far enough that any real file's over-long line is skipped and reading goes on,
# bounded so that an endless line (/dev/zero, a binary pipe) ends the command instead of hanging it.
_SKIP_FACTOR = 64
_MIN_SKIP_BYTES = 64 << 20


class StreamReadError(TelemetryError):
    """A stream file or directory that cannot be read."""


class UnendingLineError(StreamReadError):
    """A line that runs on past the skip limit without a newline: the input is not NDJSON (e.g. /dev/zero)."""


@dataclass(frozen=True, slots=True)
class OverlongLine:
    """A line longer than the reader's limit. Its bytes were skipped, never held whole: only its length
    (newline excluded; at end of input, the bytes up to it) and the limit it broke are kept."""

    length: int
    limit: int


def skip_limit(max_line_bytes: int) -> int:
    """The most bytes of one line read (and dropped) looking for its newline: 64 × the limit, ≥ 64 MiB."""
    return max(_SKIP_FACTOR * max_line_bytes, _MIN_SKIP_BYTES)


def _unending_line(where: str, max_line_bytes: int) -> UnendingLineError:
    """The one-line error for a line (`where`: input and line) with no newline within the skip limit."""
    return UnendingLineError(
        f"{where} runs past {skip_limit(max_line_bytes):,} bytes without a newline "
        f"(the limit is {max_line_bytes:,} bytes a line, --max-line-bytes): not NDJSON, reading stopped"
    )


class LineSplitter:
    """Cuts a byte stream fed in chunks into lines, in time linear in the input and memory bounded by the limit.

    `feed(chunk)` returns the lines the chunk completes, `finish()` the last one when the input ends
    without a newline. A line over `max_line_bytes` comes out as an `OverlongLine`: from the moment it
    passes the limit its bytes are counted and dropped, not buffered. A line still without its newline
    after `skip_limit(max_line_bytes)` bytes raises `UnendingLineError`. With `max_line_bytes=None`
    lines are unbounded (our own segments, whose writer we trust, read by `tail`).
    """

    def __init__(self, max_line_bytes: int | None = None, name: str = "input") -> None:
        """Split lines of the input called `name` (for messages), each at most `max_line_bytes` long."""
        if max_line_bytes is not None and max_line_bytes < 1:
            raise ValueError("max_line_bytes must be ≥ 1")
        self.name = name
        self._limit = max_line_bytes
        self._skip_limit = skip_limit(max_line_bytes) if max_line_bytes is not None else None
        self._parts: list[bytes] = []  # the pending line's pieces: joined once, at its newline (linear)
        self._held = 0  # bytes in _parts
        self._skipped: int | None = None  # length so far of an over-long pending line, while skipping it
        self._lines = 0  # lines completed, for the unreadable-input message

    def feed(self, chunk: bytes) -> list[bytes | OverlongLine]:
        """The lines that `chunk` completes, without their newline, in order."""
        pieces = chunk.split(b"\n")
        tail = pieces.pop()  # after the last newline: the start of a line still open
        out: list[bytes | OverlongLine] = []
        if pieces:
            out.append(self._close(pieces[0]))
            limit = self._limit
            if limit is not None and limit < len(chunk):
                out.extend(piece if len(piece) <= limit else OverlongLine(len(piece), limit) for piece in pieces[1:])
            else:
                out.extend(pieces[1:])  # no line inside one chunk can exceed the limit: skip the checks
            self._lines += len(pieces)
        if tail:
            self._hold(tail)
        return out

    def finish(self, complete_only: bool = False) -> list[bytes | OverlongLine]:
        """The open last line when the input ends without a newline; none with `complete_only`."""
        skipped, parts = self._skipped, self._parts
        self._skipped, self._parts, self._held = None, [], 0
        if complete_only:
            return []
        if skipped is not None:
            assert self._limit is not None  # only a limited splitter skips
            return [OverlongLine(skipped, self._limit)]
        return [b"".join(parts)] if parts else []

    def _close(self, piece: bytes) -> bytes | OverlongLine:
        """The pending line ended by a newline, with `piece` as its last bytes."""
        limit = self._limit
        if self._skipped is not None:
            assert limit is not None  # only a limited splitter skips
            length, self._skipped = self._skipped + len(piece), None
            return OverlongLine(length, limit)
        length = self._held + len(piece)
        parts, self._parts, self._held = self._parts, [], 0
        if limit is not None and length > limit:
            return OverlongLine(length, limit)
        if not parts:
            return piece
        parts.append(piece)
        return b"".join(parts)

    def _hold(self, piece: bytes) -> None:
        """Keep the start of an open line, or count it once the line is over the limit."""
        if self._skipped is None:
            if self._limit is None or self._held + len(piece) <= self._limit:
                self._parts.append(piece)
                self._held += len(piece)
                return
            self._skipped, self._parts, self._held = self._held, [], 0
        self._skipped += len(piece)
        assert self._skip_limit is not None and self._limit is not None
        if self._skipped > self._skip_limit:
            raise _unending_line(f"{self.name}: line {self._lines + 1}", self._limit)


def segment_name(first_offset: int) -> str:
    """The file name of the segment whose first record has `first_offset`."""
    if first_offset < 0:
        raise ValueError("offsets are ≥ 0")
    return f"{SEGMENT_PREFIX}{first_offset:020d}{SEGMENT_SUFFIX}"


def segment_offset(name: str) -> int | None:
    """The first offset encoded in a segment file name, or None for any other name."""
    match = _SEGMENT_RE.match(name)
    return int(match[1]) if match else None


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """The segments in `directory` as (first offset, path), in offset order; other files are ignored."""
    try:
        entries = list(Path(directory).iterdir())
    except OSError as exc:
        raise StreamReadError(f"cannot read directory {directory}: {exc.strerror}") from exc
    found = []
    for path in entries:
        offset = segment_offset(path.name)
        if offset is not None and path.is_file():
            found.append((offset, path))
    found.sort()
    return found


def iter_stream_lines(
    stream: BinaryIO, max_line_bytes: int | None = None, complete_only: bool = False, name: str = "input"
) -> Iterator[bytes | OverlongLine]:
    """The lines of a binary stream (a file, standard input, a pipe) as bytes without their newline.

    Reads at most 64 KiB at a time and returns what arrived (`read1`), so a pipe's lines come out as
    they are written. Over-long lines and the end of input behave as in `LineSplitter`; `name` is what
    messages call the input.
    """
    splitter = LineSplitter(max_line_bytes, name)
    read = getattr(stream, "read1", stream.read)
    while True:
        try:
            chunk = read(_CHUNK)
        except OSError as exc:
            raise StreamReadError(f"cannot read {name}: {exc.strerror or exc}") from exc
        if not chunk:
            break
        yield from splitter.feed(chunk)
    yield from splitter.finish(complete_only)


def iter_file_lines(
    path: Path, complete_only: bool = False, max_line_bytes: int | None = None
) -> Iterator[bytes | OverlongLine]:
    """The lines of one file as bytes without their newline.

    With `complete_only`, a last line without its newline is held back: a writer may still be appending
    it, and a reader never emits a partial line. Otherwise a missing final newline is just end of file.
    A line over `max_line_bytes` comes out as an `OverlongLine` (see `LineSplitter`).
    """
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise StreamReadError(f"cannot open {path}: {exc.strerror}") from exc
    with handle:
        yield from iter_stream_lines(handle, max_line_bytes, complete_only, str(path))


def iter_segment_lines(directory: Path, max_line_bytes: int | None = None) -> Iterator[bytes | OverlongLine]:
    """Every complete line of every segment in `directory`, in offset order (over-long ones as in
    `iter_file_lines`)."""
    for _, path in list_segments(directory):
        yield from iter_file_lines(path, complete_only=True, max_line_bytes=max_line_bytes)


def iter_records_from(
    directory: Path, from_offset: int, max_line_bytes: int | None = None
) -> Iterator[tuple[int, bytes | OverlongLine]]:
    """(offset, line) for every complete line at or after `from_offset`, across segments, in order.

    A segment's name gives its first offset and each line's offset is that plus its position, so whole
    segments below `from_offset` are skipped without being read. A partial last line is held back (a
    writer may be appending it); blank lines are not records and are not yielded, but they keep their
    position so offsets agree with what the writer counted. A line over `max_line_bytes` comes as an
    `OverlongLine` at its offset (see `LineSplitter`).
    """
    if from_offset < 0:
        raise ValueError("offsets are ≥ 0")
    segments = list_segments(directory)
    for index, (first, path) in enumerate(segments):
        following = segments[index + 1][0] if index + 1 < len(segments) else None
        if following is not None and following <= from_offset:
            continue  # every record of this segment is below the next segment's first offset
        lines = iter_file_lines(path, complete_only=True, max_line_bytes=max_line_bytes)
        for offset, line in enumerate(lines, start=first):
            if offset >= from_offset and line:
                yield offset, line


class SegmentFollower:
    """Follows a segment directory like `tail -f`: each `poll()` returns the complete lines added since.

    It keeps its place as (segment, byte position after the last newline it consumed). A line without
    its newline is re-read on the next poll rather than buffered: if the writer crashed mid-line and, on
    restart, truncated the torn tail and appended a new line, buffered bytes would glue garbage onto it.
    It moves to the next segment once the current one is read to its end and a newer one exists; the
    directory may be empty or not exist yet, which just yields nothing until segments appear.
    """

    def __init__(
        self, directory: Path, from_offset: int, max_bytes_per_poll: int = 1 << 20, max_line_bytes: int | None = None
    ) -> None:
        """Follow `directory` from `from_offset`.

        A poll stops once it has consumed `max_bytes_per_poll` (checked after each 64 KiB read), so its
        memory stays bounded whatever the backlog. A line over `max_line_bytes` is scanned for its
        newline without being kept and comes as an `OverlongLine`; one still open past
        `skip_limit(max_line_bytes)` is `UnendingLineError`. Without a limit a line is kept whole.
        """
        if from_offset < 0:
            raise ValueError("offsets are ≥ 0")
        if max_line_bytes is not None and max_line_bytes < 1:
            raise ValueError("max_line_bytes must be ≥ 1")
        self.directory = Path(directory)
        self.from_offset = from_offset
        self._max_bytes = max(1, max_bytes_per_poll)
        self._limit = max_line_bytes
        self._segment: tuple[int, Path] | None = None
        self._position = 0  # bytes of the current segment consumed, always just after a newline
        self._line_offset = 0  # offset of the next line in the current segment

    def poll(self) -> list[tuple[int, bytes | OverlongLine]]:
        """The (offset, line) pairs now complete and not yet returned, in offset order; may be empty.

        A backlog larger than `max_bytes_per_poll` comes over several polls: poll again at once while a
        poll returns something, and wait only when it returns nothing.
        """
        out: list[tuple[int, bytes | OverlongLine]] = []
        budget = self._max_bytes
        while budget > 0:
            # List before reading: the writer fills a segment completely before it creates the next,
            # so a newer segment seen here means the current one is final once read to its end below.
            segments = self._segments()
            if self._segment is None:
                self._segment = self._start_segment(segments)
                if self._segment is None:
                    break
                self._position, self._line_offset = 0, self._segment[0]
            at_end, used = self._read_current(out, budget)
            budget -= used
            if not at_end:
                break  # the budget ran out with more to read
            newer = [segment for segment in segments if segment[0] > self._segment[0]]
            if not newer:
                break
            # A partial line left in a segment that has a successor can never be completed: skip it.
            self._segment = newer[0]
            self._position, self._line_offset = 0, newer[0][0]
        return out

    def _segments(self) -> list[tuple[int, Path]]:
        if not self.directory.exists():
            return []  # `tail --follow` may start before the writer creates the directory
        return list_segments(self.directory)

    def _start_segment(self, segments: list[tuple[int, Path]]) -> tuple[int, Path] | None:
        """The last segment starting at or before `from_offset`, else the first (older ones are gone)."""
        if not segments:
            return None
        starting_before = [segment for segment in segments if segment[0] <= self.from_offset]
        return starting_before[-1] if starting_before else segments[0]

    def _read_current(self, out: list[tuple[int, bytes | OverlongLine]], budget: int) -> tuple[bool, int]:
        """Append the current segment's complete lines; (reached end of file, bytes consumed)."""
        assert self._segment is not None
        path = self._segment[1]
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            return True, 0  # removed (retention) between listing and opening: treat it as read
        except OSError as exc:
            raise StreamReadError(f"cannot open {path}: {exc.strerror}") from exc
        consumed = 0
        with handle:
            handle.seek(self._position)
            pending = bytearray()
            while consumed < budget:
                chunk = self._read_chunk(handle, path)
                if not chunk:
                    return True, consumed
                # search only the new chunk: searching all of `pending` made a long line quadratic
                cut_in_chunk = chunk.rfind(b"\n")
                pending += chunk
                if cut_in_chunk < 0:
                    if self._limit is not None and len(pending) > self._limit:
                        skipped = self._skip_overlong(handle, path, len(pending), out)
                        if skipped is None:
                            return True, consumed  # still open at the end: scanned again next poll
                        consumed += skipped
                        pending.clear()
                        handle.seek(self._position)  # what followed its newline is read normally
                    continue  # a line longer than the chunk: read on until its newline or the end
                cut = len(pending) - len(chunk) + cut_in_chunk
                for line in bytes(pending[:cut]).split(b"\n"):
                    if self._line_offset >= self.from_offset and line:
                        out.append((self._line_offset, self._bounded(line)))
                    self._line_offset += 1
                del pending[: cut + 1]
                self._position += cut + 1
                consumed += cut + 1
        return False, consumed

    def _bounded(self, line: bytes) -> bytes | OverlongLine:
        """`line`, or its `OverlongLine` when it is over the limit."""
        if self._limit is not None and len(line) > self._limit:
            return OverlongLine(len(line), self._limit)
        return line

    def _skip_overlong(
        self, handle: BinaryIO, path: Path, length: int, out: list[tuple[int, bytes | OverlongLine]]
    ) -> int | None:
        """Scan an over-long line (`length` bytes of it read so far) for its newline, keeping nothing.

        Found: its `OverlongLine` is appended, the place moves past it, and the bytes consumed are
        returned. At end of file: None, and the place stays at the line's start, since a writer's restart
        may truncate a torn line and the rescan is bounded by the skip limit.
        """
        assert self._limit is not None
        while True:
            chunk = self._read_chunk(handle, path)
            if not chunk:
                return None
            cut = chunk.find(b"\n")
            if cut >= 0:
                length += cut
                if self._line_offset >= self.from_offset:
                    out.append((self._line_offset, OverlongLine(length, self._limit)))
                self._line_offset += 1
                self._position += length + 1
                return length + 1
            length += len(chunk)
            if length > skip_limit(self._limit):
                raise _unending_line(f"{path}: the line at offset {self._line_offset}", self._limit)

    @staticmethod
    def _read_chunk(handle: BinaryIO, path: Path) -> bytes:
        try:
            return handle.read(_CHUNK)
        except OSError as exc:
            raise StreamReadError(f"cannot read {path}: {exc.strerror}") from exc
