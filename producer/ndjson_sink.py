"""The NDJSON stream writer (SPEC §3): whole-line appends, size rotation, a global `log_stream_offset`.

The writer is what numbers records. Its counter is global to the directory: it never resets on rotation,
and on restart it continues from what the segments already hold. Every line consumes one offset,
a v1.0 line too, although a v1.0 record has no field to carry it; so a mixed v1.0/v1.1 stream has
offsets counted by line position, which is exactly how `avro_schemas.ndjson` readers count them.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from avro_schemas.errors import TelemetryError
from avro_schemas.models import VERSION_FIELDS
from avro_schemas.ndjson import list_segments, segment_name

__all__ = [
    "DEFAULT_MAX_SEGMENT_BYTES",
    "StreamWriteError",
    "NdjsonStreamWriter",
    "NdjsonSink",
]

DEFAULT_MAX_SEGMENT_BYTES = 16 * 1024 * 1024
_OFFSET_FIELD = "log_stream_offset"
_SCAN_CHUNK = 1 << 20
_DRAIN_BYTES = 1 << 20
_ABSENT = object()


class StreamWriteError(TelemetryError):
    """A record that cannot be appended to the NDJSON stream (not JSON-serialisable, NaN, I/O)."""


_NUMBERED_VERSIONS = frozenset(v for v, names in VERSION_FIELDS.items() if _OFFSET_FIELD in names)


def _numbers_itself(record: dict[str, Any]) -> bool:
    """Whether the record's version carries `log_stream_offset` (v1.1 and any later version)."""
    version = record.get("telemetry_version")
    return version.__class__ is str and version in _NUMBERED_VERSIONS


def _non_finite_key(document: dict[str, Any]) -> str | None:
    """The first key whose value holds NaN or ±Infinity, which JSON cannot carry (orjson would write null)."""
    for key, value in document.items():
        cls = value.__class__
        if cls is float:
            if value - value:  # 0.0 for a finite float; NaN (truthy) for NaN and ±Infinity
                return key
        elif cls is not int and cls is not str and value is not None and _holds_non_finite(value):
            return key
    return None


def _holds_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not -math.inf < value < math.inf
    if isinstance(value, dict):
        return any(_holds_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_non_finite(v) for v in value)
    return False


def _scan_segment(fd: int) -> tuple[int, int]:
    """(complete lines, byte length of the complete lines) of an open segment."""
    lines = 0
    complete = 0
    position = 0
    while True:
        chunk = os.pread(fd, _SCAN_CHUNK, position)
        if not chunk:
            return lines, complete
        count = chunk.count(b"\n")
        if count:
            lines += count
            complete = position + chunk.rfind(b"\n") + 1
        position += len(chunk)


class NdjsonStreamWriter:
    """Appends records as NDJSON lines to segments in `directory`, numbering them.

    - One JSON object per line, written with a single `write` on an `O_APPEND` descriptor, so a tailer
      sees either nothing of a line or all of it, except while that write is in flight (and tailers
      hold back a last line without its newline).
    - Rotation: a line that would take the current, non-empty segment past `max_segment_bytes` starts a
      new segment named after its offset. A line longer than the maximum gets a segment of its own.
    - Restart: opening a directory that holds segments continues the counter after the last segment's
      complete lines. A partial last line (a crash mid-write) is truncated first: it was never a record,
      its offset was never handed out, and appending after it would glue two lines into one.
    - One writer per directory: an exclusive `flock` on the directory refuses a second one, whose
      counter would collide with ours.
    - `fsync=True` makes rotation, `flush` and `close` durable (file and directory entry); otherwise each
      line is handed to the OS at once, visible to readers, and survives a crash of this process.
    - `buffered=True` holds lines in memory until `flush()` (or 1 MiB, a rotation, `close`) and appends
      them with one `write`: still whole lines only, for a fraction of the per-line system-call cost. The
      training harness flushes after each batch of records (about once a second) and at the end; a
      crash loses at most the unflushed lines, and a restart numbers on from what the segments hold.

    Not thread-safe: one thread writes.
    """

    def __init__(
        self,
        directory: Path | str,
        max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
        fsync: bool = False,
        buffered: bool = False,
    ) -> None:
        """Open (creating it if needed) the stream in `directory` and recover its counter."""
        if max_segment_bytes < 1:
            raise ValueError("max_segment_bytes must be ≥ 1")
        self.directory = Path(directory)
        self.max_segment_bytes = max_segment_bytes
        self.fsync = fsync
        self.buffered = buffered
        self._pending = bytearray()
        self._fd: int | None = None  # the current segment, opened lazily for a fresh directory
        self._segment_size = 0
        self._closed = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise StreamWriteError(f"cannot open stream directory {self.directory}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._dir_fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StreamWriteError(f"another writer holds the stream {self.directory}") from exc
            raise StreamWriteError(f"cannot lock stream directory {self.directory}: {exc.strerror}") from exc
        try:
            self._next_offset = self._recover()
        except BaseException:
            self._release()
            raise

    @property
    def next_offset(self) -> int:
        """The offset the next written line will get."""
        return self._next_offset

    def _recover(self) -> int:
        """Reopen the last segment, drop a torn tail, and return the next offset."""
        segments = list_segments(self.directory)
        if not segments:
            return 0
        first, path = segments[-1]
        self._open_segment(path)
        assert self._fd is not None
        try:
            lines, complete = _scan_segment(self._fd)
            if os.fstat(self._fd).st_size > complete:
                os.ftruncate(self._fd, complete)
        except OSError as exc:
            raise StreamWriteError(f"cannot recover segment {path}: {exc.strerror}") from exc
        self._segment_size = complete
        return first + lines

    def _open_segment(self, path: Path) -> None:
        # Read as well as append: recovery scans the last segment through the same descriptor.
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StreamWriteError(f"cannot open segment {path}: {exc.strerror}") from exc

    def _sync_directory(self) -> None:
        """Make a new segment's directory entry durable; the file's own fsync does not cover it."""
        if self.fsync:
            os.fsync(self._dir_fd)

    def _close_segment(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _start_segment(self, first_offset: int) -> None:
        """Close the current segment and open the one whose first record is `first_offset`."""
        try:
            self._close_segment()
            self._open_segment(self.directory / segment_name(first_offset))
            self._segment_size = 0
            self._sync_directory()
        except OSError as exc:
            raise StreamWriteError(f"cannot rotate the stream in {self.directory}: {exc.strerror}") from exc

    def write(self, record: dict[str, Any]) -> int:
        """Append `record` as one line and return its offset.

        For a version with `log_stream_offset` (v1.1) the field is set to the offset, in `record` too, so
        sinks published to afterwards (Kafka) carry it. A v1.0 line has no such field but consumes an
        offset all the same. On any error nothing is written, `record` is unchanged, the counter does not
        move, and a `StreamWriteError` says why.
        """
        if self._closed:
            raise StreamWriteError(f"the stream writer for {self.directory} is closed")
        offset = self._next_offset
        numbered = _numbers_itself(record)
        bad = _non_finite_key(record)
        if bad is not None:
            raise StreamWriteError(f"record at offset {offset} holds NaN or Infinity in {bad!r}")
        if numbered:
            previous = record.get(_OFFSET_FIELD, _ABSENT)
            record[_OFFSET_FIELD] = offset
        try:
            # orjson: the stdlib encoder cost ~4x more per record, most of telemetry's budget (issue 3)
            data = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            if numbered:  # a record that fails leaves the caller's dict as it was
                if previous is _ABSENT:
                    del record[_OFFSET_FIELD]
                else:
                    record[_OFFSET_FIELD] = previous
            raise StreamWriteError(f"record at offset {offset} is not JSON-serialisable: {exc}") from exc
        if self._fd is None or (self._segment_size > 0 and self._segment_size + len(data) > self.max_segment_bytes):
            self._drain()
            self._start_segment(offset)
        if self.buffered:
            self._pending += data
        else:
            self._append(data, self._segment_size)
        self._segment_size += len(data)
        self._next_offset = offset + 1
        if len(self._pending) >= _DRAIN_BYTES:
            self._drain()
        return offset

    def _drain(self) -> None:
        """Append the buffered lines with one write."""
        if not self._pending:
            return
        data = bytes(self._pending)
        self._pending.clear()
        self._append(data, self._segment_size - len(data))

    def _append(self, data: bytes, size_before: int) -> None:
        """Write `data` whole, or not at all: a failed write is cut back so no torn line stays behind."""
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                # One write for the whole line; a short write (a full disk, a signal) continues it.
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            try:
                os.ftruncate(self._fd, size_before)
            except OSError:
                pass  # the torn tail stays; the next restart truncates it
            raise StreamWriteError(f"cannot append to the stream in {self.directory}: {exc.strerror}") from exc

    def flush(self) -> None:
        """Hand buffered lines to the OS (unbuffered, they already are); with `fsync`, make them durable."""
        if self._closed:
            return
        self._drain()
        if self._fd is not None and self.fsync:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise StreamWriteError(f"cannot sync the stream in {self.directory}: {exc.strerror}") from exc

    def close(self) -> None:
        """Close the current segment (fsynced with `fsync`) and release the directory; idempotent."""
        if self._closed:
            return
        try:
            self._drain()
        except StreamWriteError:
            self._release()
            raise
        self._closed = True
        try:
            self._close_segment()
        except OSError as exc:
            raise StreamWriteError(f"cannot close the stream in {self.directory}: {exc.strerror}") from exc
        finally:
            self._release()

    def _release(self) -> None:
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        os.close(self._dir_fd)  # closing the descriptor drops the flock

    def __enter__(self) -> NdjsonStreamWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class NdjsonSink:
    """`TelemetrySink` over an `NdjsonStreamWriter`: `publish` writes and numbers the record in place."""

    def __init__(
        self,
        directory: Path | str,
        max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
        fsync: bool = False,
        buffered: bool = False,
    ) -> None:
        """Open the stream in `directory`; see `NdjsonStreamWriter` for the arguments."""
        self.writer = NdjsonStreamWriter(directory, max_segment_bytes=max_segment_bytes, fsync=fsync, buffered=buffered)
        self.publish = self.writer.write  # a direct binding: this runs once per epoch record

    def publish(self, record: dict[str, Any]) -> None:  # replaced per instance by writer.write
        """Append `record`; a v1.1 record gets its `log_stream_offset` set."""
        self.writer.write(record)

    def flush(self) -> None:
        """Flush the writer."""
        self.writer.flush()

    def close(self) -> None:
        """Close the writer; idempotent."""
        self.writer.close()
