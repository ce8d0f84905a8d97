"""The NDJSON stream layout (SPEC §3): segment names and reading whole lines across segments.

Segments live in one directory, each named by the `log_stream_offset` of its first record,
`telemetry-00000000000000000000.ndjson`. The writer lives with the producer; readers (validate, tail)
share this module so both sides agree on the names and on how offsets are counted: a line's offset is
its segment's first offset plus its position in the segment.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from .errors import TelemetryError

__all__ = [
    "SEGMENT_PREFIX",
    "SEGMENT_SUFFIX",
    "StreamReadError",
    "segment_name",
    "segment_offset",
    "list_segments",
    "iter_file_lines",
    "iter_segment_lines",
    "iter_records_from",
    "SegmentFollower",
]

SEGMENT_PREFIX = "telemetry-"
SEGMENT_SUFFIX = ".ndjson"
_SEGMENT_RE = re.compile(r"^telemetry-(\d{20})\.ndjson$")
_CHUNK = 1 << 16


class StreamReadError(TelemetryError):
    """A stream file or directory that cannot be read."""


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


def iter_file_lines(path: Path, complete_only: bool = False) -> Iterator[bytes]:
    """The lines of one file as bytes without their newline.

    With `complete_only`, a last line without its newline is held back: a writer may still be appending
    it, and a reader never emits a partial line. Otherwise a missing final newline is just end of file.
    """
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise StreamReadError(f"cannot open {path}: {exc.strerror}") from exc
    with handle:
        pending = b""
        while True:
            try:
                chunk = handle.read(_CHUNK)
            except OSError as exc:
                raise StreamReadError(f"cannot read {path}: {exc.strerror}") from exc
            if not chunk:
                break
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            yield from lines
        if pending and not complete_only:
            yield pending


def iter_segment_lines(directory: Path) -> Iterator[bytes]:
    """Every complete line of every segment in `directory`, in offset order."""
    for _, path in list_segments(directory):
        yield from iter_file_lines(path, complete_only=True)


def iter_records_from(directory: Path, from_offset: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) for every complete line at or after `from_offset`, across segments, in order.

    A segment's name gives its first offset and each line's offset is that plus its position, so whole
    segments below `from_offset` are skipped without being read. A partial last line is held back (a
    writer may be appending it); blank lines are not records and are not yielded, but they keep their
    position so offsets agree with what the writer counted.
    """
    if from_offset < 0:
        raise ValueError("offsets are ≥ 0")
    segments = list_segments(directory)
    for index, (first, path) in enumerate(segments):
        following = segments[index + 1][0] if index + 1 < len(segments) else None
        if following is not None and following <= from_offset:
            continue  # every record of this segment is below the next segment's first offset
        for offset, line in enumerate(iter_file_lines(path, complete_only=True), start=first):
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

    def __init__(self, directory: Path, from_offset: int, max_bytes_per_poll: int = 1 << 20) -> None:
        """Follow `directory` from `from_offset`.

        A poll stops once it has consumed `max_bytes_per_poll` (checked after each 64 KiB read), so its
        memory stays bounded whatever the backlog.
        """
        if from_offset < 0:
            raise ValueError("offsets are ≥ 0")
        self.directory = Path(directory)
        self.from_offset = from_offset
        self._max_bytes = max(1, max_bytes_per_poll)
        self._segment: tuple[int, Path] | None = None
        self._position = 0  # bytes of the current segment consumed, always just after a newline
        self._line_offset = 0  # offset of the next line in the current segment

    def poll(self) -> list[tuple[int, bytes]]:
        """The (offset, line) pairs now complete and not yet returned, in offset order; may be empty.

        A backlog larger than `max_bytes_per_poll` comes over several polls: poll again at once while a
        poll returns something, and wait only when it returns nothing.
        """
        out: list[tuple[int, bytes]] = []
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

    def _read_current(self, out: list[tuple[int, bytes]], budget: int) -> tuple[bool, int]:
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
                try:
                    chunk = handle.read(_CHUNK)
                except OSError as exc:
                    raise StreamReadError(f"cannot read {path}: {exc.strerror}") from exc
                if not chunk:
                    return True, consumed
                pending += chunk
                cut = pending.rfind(b"\n")
                if cut < 0:
                    continue  # a line longer than the chunk: read on until its newline or the end
                for line in bytes(pending[:cut]).split(b"\n"):
                    if self._line_offset >= self.from_offset and line:
                        out.append((self._line_offset, line))
                    self._line_offset += 1
                del pending[: cut + 1]
                self._position += cut + 1
                consumed += cut + 1
        return False, consumed
