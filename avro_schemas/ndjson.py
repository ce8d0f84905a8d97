"""The NDJSON stream layout (SPEC §3): segment names and reading whole lines across segments.

Segments live in one directory, each named by the `log_stream_offset` of its first record,
`telemetry-00000000000000000000.ndjson`. The writer lives with the producer; readers (validate, tail)
share this module so both sides agree on the names.
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
