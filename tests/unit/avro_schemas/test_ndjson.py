"""The NDJSON stream layout (SPEC §3): segment names, whole lines, reading across segments."""

from __future__ import annotations

import pytest

from avro_schemas.errors import TelemetryError
from avro_schemas.ndjson import (
    StreamReadError,
    iter_file_lines,
    iter_segment_lines,
    list_segments,
    segment_name,
    segment_offset,
)

CHUNK = 1 << 16  # the reader's chunk size; lines longer than it must still come out whole


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_segment_name_of_offset_zero_is_twenty_zero_padded_digits():
    assert segment_name(0) == "telemetry-00000000000000000000.ndjson"


def test_segment_name_pads_any_offset_to_twenty_digits():
    assert segment_name(1234) == "telemetry-00000000000000001234.ndjson"
    assert segment_name(2**63 - 1) == "telemetry-09223372036854775807.ndjson"


def test_segment_name_rejects_a_negative_offset():
    with pytest.raises(ValueError):
        segment_name(-1)


@pytest.mark.parametrize("offset", [0, 1, 999, 10**19, 2**63 - 1])
def test_segment_offset_inverts_segment_name(offset):
    assert segment_offset(segment_name(offset)) == offset


@pytest.mark.parametrize(
    "name",
    [
        "telemetry-0.ndjson",
        "telemetry-0000000000000000000a.ndjson",
        "telemetry-00000000000000000000.ndjson.tmp",
        "telemetry-00000000000000000000.json",
        "other-00000000000000000000.ndjson",
        "telemetry-000000000000000000000.ndjson",
        ".telemetry-00000000000000000000.ndjson",
        "telemetry--0000000000000000001.ndjson",
        "",
    ],
)
def test_segment_offset_is_none_for_other_names(name):
    assert segment_offset(name) is None


def test_list_segments_orders_by_offset_and_ignores_other_files(tmp_path):
    for offset in (250, 0, 1000, 17):
        _write(tmp_path / segment_name(offset), b"")
    _write(tmp_path / "README.txt", b"")
    _write(tmp_path / "telemetry-00000000000000000005.ndjson.tmp", b"")
    (tmp_path / segment_name(9)).mkdir()  # a directory with a segment's name is not a segment
    assert list_segments(tmp_path) == [
        (0, tmp_path / segment_name(0)),
        (17, tmp_path / segment_name(17)),
        (250, tmp_path / segment_name(250)),
        (1000, tmp_path / segment_name(1000)),
    ]


def test_list_segments_of_an_empty_directory_is_empty(tmp_path):
    assert list_segments(tmp_path) == []


def test_list_segments_of_a_missing_directory_is_a_stream_read_error(tmp_path):
    with pytest.raises(StreamReadError, match="cannot read directory") as info:
        list_segments(tmp_path / "absent")
    assert isinstance(info.value, TelemetryError)
    assert "\n" not in str(info.value)


def test_iter_file_lines_with_trailing_newline(tmp_path):
    path = _write(tmp_path / "f.ndjson", b'{"a": 1}\n{"b": 2}\n')
    assert list(iter_file_lines(path)) == [b'{"a": 1}', b'{"b": 2}']
    assert list(iter_file_lines(path, complete_only=True)) == [b'{"a": 1}', b'{"b": 2}']


def test_iter_file_lines_without_trailing_newline_yields_the_last_line(tmp_path):
    path = _write(tmp_path / "f.ndjson", b'{"a": 1}\n{"b": 2}')
    assert list(iter_file_lines(path)) == [b'{"a": 1}', b'{"b": 2}']


def test_iter_file_lines_complete_only_holds_back_a_partial_last_line(tmp_path):
    path = _write(tmp_path / "f.ndjson", b'{"a": 1}\n{"b": ')
    assert list(iter_file_lines(path, complete_only=True)) == [b'{"a": 1}']


def test_iter_file_lines_keeps_blank_lines(tmp_path):
    path = _write(tmp_path / "f.ndjson", b"x\n\ny\n")
    assert list(iter_file_lines(path)) == [b"x", b"", b"y"]


def test_iter_file_lines_of_an_empty_file_is_empty(tmp_path):
    path = _write(tmp_path / "f.ndjson", b"")
    assert list(iter_file_lines(path)) == []
    assert list(iter_file_lines(path, complete_only=True)) == []


def test_iter_file_lines_returns_bytes_without_decoding(tmp_path):
    path = _write(tmp_path / "f.ndjson", b"\xff\xfe not utf-8\n\xc3\xa9\n")
    assert list(iter_file_lines(path)) == [b"\xff\xfe not utf-8", b"\xc3\xa9"]


@pytest.mark.parametrize("length", [CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7])
def test_iter_file_lines_reads_lines_longer_than_the_read_chunk(tmp_path, length):
    long_line = b"x" * length
    path = _write(tmp_path / "f.ndjson", b"short\n" + long_line + b"\nend\n" + long_line)
    assert list(iter_file_lines(path)) == [b"short", long_line, b"end", long_line]
    assert list(iter_file_lines(path, complete_only=True)) == [b"short", long_line, b"end"]


def test_iter_file_lines_newline_exactly_at_a_chunk_boundary(tmp_path):
    first = b"a" * (CHUNK - 1)
    path = _write(tmp_path / "f.ndjson", first + b"\n" + b"b\n")
    assert list(iter_file_lines(path, complete_only=True)) == [first, b"b"]


def test_iter_file_lines_of_a_missing_file_is_a_stream_read_error(tmp_path):
    with pytest.raises(StreamReadError, match="cannot open"):
        list(iter_file_lines(tmp_path / "absent.ndjson"))


def test_iter_file_lines_of_a_directory_is_a_stream_read_error(tmp_path):
    with pytest.raises(StreamReadError):
        list(iter_file_lines(tmp_path))


def test_iter_segment_lines_reads_segments_in_offset_order(tmp_path):
    _write(tmp_path / segment_name(3), b"r3\nr4\n")
    _write(tmp_path / segment_name(0), b"r0\nr1\nr2\n")
    _write(tmp_path / segment_name(5), b"r5\n")
    _write(tmp_path / "notes.ndjson", b"not a segment\n")
    assert list(iter_segment_lines(tmp_path)) == [b"r0", b"r1", b"r2", b"r3", b"r4", b"r5"]


def test_iter_segment_lines_never_emits_a_partial_last_line(tmp_path):
    _write(tmp_path / segment_name(0), b"r0\nr1\n")
    _write(tmp_path / segment_name(2), b"r2\nr3-partial")
    assert list(iter_segment_lines(tmp_path)) == [b"r0", b"r1", b"r2"]


def test_iter_segment_lines_of_an_empty_directory_is_empty(tmp_path):
    assert list(iter_segment_lines(tmp_path)) == []


def test_iter_segment_lines_of_a_missing_directory_is_a_stream_read_error(tmp_path):
    with pytest.raises(StreamReadError):
        list(iter_segment_lines(tmp_path / "absent"))
