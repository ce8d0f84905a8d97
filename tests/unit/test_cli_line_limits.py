"""Every command that reads NDJSON lines, fed broken input: over-long lines, endless lines, duplicate keys.

Each runs the real `ppo-telemetry` in a subprocess: one clear line on stderr, never a traceback, the exit
code of SPEC §7. Timeouts here only guard against a hang; nothing asserts how long a run takes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ppo_telemetry.demo import synthetic_run

EXE = str(Path(sys.executable).with_name("ppo-telemetry"))
HANG_GUARD = 300  # seconds; generous for a slow shared machine
MIB = 1 << 20
LONG_LINE_HEAD = b'{"telemetry_version": "1.1", "padding": "'
LONG_LINE_TAIL = b'"}'
LONG_LINE_BYTES = len(LONG_LINE_HEAD) + 50_000_000 + len(LONG_LINE_TAIL)


def run(*argv: str, stdin: bytes | None = None, stdin_file: Path | None = None) -> subprocess.CompletedProcess:
    if stdin_file is not None:
        with open(stdin_file, "rb") as handle:
            return subprocess.run([EXE, *argv], stdin=handle, capture_output=True, timeout=HANG_GUARD)
    return subprocess.run([EXE, *argv], input=stdin or b"", capture_output=True, timeout=HANG_GUARD)


def assert_one_clean_error_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return synthetic_run("run-a", 6, seed=1, unstable=False)


@pytest.fixture(scope="module")
def long_line_file(tmp_path_factory, records) -> Path:
    """A valid record, a 50 MB line, a valid record: written in pieces, never held whole."""
    path = tmp_path_factory.mktemp("long") / "long.ndjson"
    with open(path, "wb") as handle:
        handle.write(json.dumps(records[0]).encode() + b"\n")
        handle.write(LONG_LINE_HEAD)
        for _ in range(50):
            handle.write(b"x" * 1_000_000)
        handle.write(LONG_LINE_TAIL + b"\n")
        handle.write(json.dumps(records[1]).encode() + b"\n")
    return path


def verdicts(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.decode().splitlines()]


# ---------------------------------------------------------------------------------------- validate


def test_validate_reports_a_50_mb_line_as_one_line_too_long_record_and_reads_on(long_line_file):
    proc = run("validate", str(long_line_file), "--json")
    assert proc.returncode == 1, proc.stderr
    docs = verdicts(proc.stdout)
    assert [doc["status"] for doc in docs] == ["valid", "invalid", "valid"]
    assert [doc["line"] for doc in docs] == [1, 2, 3]
    error = docs[1]["errors"]
    assert [(e["field"], e["rule"]) for e in error] == [(None, "line_too_long")]
    assert f"{LONG_LINE_BYTES:,} bytes" in error[0]["message"] and "1,048,576" in error[0]["message"]
    assert list(docs[1]) == ["line", "status", "telemetry_version", "run_id", "log_stream_offset", "errors", "warnings"]
    assert "1 invalid" in proc.stderr.decode()


def test_validate_reads_the_50_mb_line_whole_under_a_larger_limit(long_line_file):
    proc = run("validate", str(long_line_file), "--json", "--max-line-bytes", str(64 * MIB))
    docs = verdicts(proc.stdout)
    assert [doc["status"] for doc in docs] == ["valid", "invalid", "valid"]
    assert {e["rule"] for e in docs[1]["errors"]} == {"required"}  # parsed: a v1.1 record missing its fields


def test_validate_of_a_long_line_on_standard_input_is_the_same(long_line_file):
    proc = run("validate", "-", "--json", stdin_file=long_line_file)
    assert proc.returncode == 1
    assert [doc["errors"][0]["rule"] if doc["errors"] else None for doc in verdicts(proc.stdout)] == [
        None, "line_too_long", None,
    ]


def test_validate_of_dev_zero_ends_with_one_line_and_exit_2():
    proc = run("validate", "/dev/zero", "--json")
    assert proc.returncode == 2
    line = assert_one_clean_error_line(proc.stderr)
    assert "/dev/zero" in line and "without a newline" in line and "--max-line-bytes" in line
    assert proc.stdout == b""


def test_validate_of_endless_standard_input_ends_with_one_line_and_exit_2():
    with open("/dev/zero", "rb") as zeros:
        proc = subprocess.run([EXE, "validate", "-"], stdin=zeros, capture_output=True, timeout=HANG_GUARD)
    assert proc.returncode == 2
    assert "standard input" in assert_one_clean_error_line(proc.stderr)


def test_an_overlong_line_in_a_segment_directory_is_one_invalid_record(tmp_path, records):
    (tmp_path / "telemetry-00000000000000000000.ndjson").write_bytes(
        json.dumps(records[0]).encode() + b"\n" + b"z" * 5000 + b"\n" + json.dumps(records[1]).encode() + b"\n"
    )
    proc = run("validate", str(tmp_path), "--json", "--max-line-bytes", "4096")
    assert [doc["status"] for doc in verdicts(proc.stdout)] == ["valid", "invalid", "valid"]


def test_validate_reports_a_duplicate_key_with_its_field(tmp_path, records):
    line = json.dumps(records[0])[:-1] + ', "epoch": 99}'
    proc = run("validate", "-", "--json", stdin=line.encode() + b"\n")
    assert proc.returncode == 1
    (doc,) = verdicts(proc.stdout)
    assert doc["status"] == "invalid"
    assert [(e["field"], e["rule"]) for e in doc["errors"]] == [("epoch", "duplicate_key")]


@pytest.mark.parametrize("value", ["0", "-5", "lots", ""])
def test_a_bad_max_line_bytes_is_a_usage_error(value):
    proc = run("validate", "-", "--max-line-bytes", value)
    assert proc.returncode == 2
    assert "--max-line-bytes" in assert_one_clean_error_line(proc.stderr)


# ---------------------------------------------------------------------------------------- the other readers


def test_watch_and_drift_skip_an_overlong_line_with_one_line_each(tmp_path, records):
    path = tmp_path / "run.ndjson"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records[:3]) + b"q" * 3000 + b"\n")
    proc = run("watch", str(path), "--max-line-bytes", "2048")
    assert proc.returncode == 0
    skipped = [line for line in proc.stderr.decode().splitlines() if "line 4" in line]
    assert len(skipped) == 1 and "3,000 bytes" in skipped[0] and "Traceback" not in proc.stderr.decode()
    proc = run("drift", "--baseline", str(path), str(path), "--max-line-bytes", "2048", "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr.decode()
    assert sum("line 4" in line for line in proc.stderr.decode().splitlines()) == 2  # baseline and current


def test_watch_of_dev_zero_ends_with_one_line_and_exit_2():
    proc = run("watch", "/dev/zero")
    assert proc.returncode == 2
    assert "/dev/zero" in assert_one_clean_error_line(proc.stderr)


def test_codec_encode_and_decode_refuse_an_overlong_line_and_go_on(tmp_path, records):
    path = tmp_path / "in.ndjson"
    path.write_bytes(b"w" * 3000 + b"\n" + json.dumps(records[0]).encode() + b"\n")
    encoded = run("codec", "encode", str(path), "--max-line-bytes", "2048")
    assert encoded.returncode == 1
    assert "line 1" in assert_one_clean_error_line(encoded.stderr)
    assert len(encoded.stdout.splitlines()) == 1
    hex_in = tmp_path / "in.hex"
    hex_in.write_bytes(b"ab" * 2000 + b"\n" + encoded.stdout)
    decoded = run("codec", "decode", str(hex_in), "--max-line-bytes", "2048")
    assert decoded.returncode == 1
    assert "4,000 bytes" in assert_one_clean_error_line(decoded.stderr)
    assert json.loads(decoded.stdout)["run_id"] == "run-a"


# ---------------------------------------------------------------------------------------- tail


def test_tail_says_which_offset_it_did_not_print_and_prints_the_rest(tmp_path):
    (tmp_path / "telemetry-00000000000000000000.ndjson").write_bytes(b"r0\n" + b"w" * 5000 + b"\nr2\n")
    proc = run("tail", str(tmp_path), "--from-offset", "0", "--max-line-bytes", "4096")
    assert proc.returncode == 0
    assert proc.stdout == b"r0\nr2\n"
    line = assert_one_clean_error_line(proc.stderr)
    assert "offset 1 not printed" in line and "5,000 bytes" in line


def test_tail_of_a_segment_with_an_unending_line_ends_with_one_line_and_exit_2(tmp_path):
    with open(tmp_path / "telemetry-00000000000000000000.ndjson", "wb") as handle:
        handle.truncate(65 * MIB)  # sparse zeros, no newline
    proc = run("tail", str(tmp_path), "--from-offset", "0")
    assert proc.returncode == 2
    assert "without a newline" in assert_one_clean_error_line(proc.stderr)
    follow = run("tail", str(tmp_path), "--from-offset", "0", "--follow")
    assert follow.returncode == 2
    assert "offset 0 runs past" in assert_one_clean_error_line(follow.stderr)
