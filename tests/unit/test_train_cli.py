"""`ppo-telemetry train` (SPEC §7, issue 3 item 9): the stream it writes, its terminal output, Ctrl-C, errors.

Runs go both through `ppo_telemetry.cli.main` in this process and through the installed console script
in a subprocess (where a traceback, a progress bar on a terminal, or a signal would really show).
Tiny configurations keep a run well under a second.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avro_schemas import VERSION_FIELDS
from avro_schemas.ndjson import iter_segment_lines, list_segments, segment_name
from ppo_telemetry.cli import main

SCRIPT = Path(sys.executable).with_name("ppo-telemetry")
if not SCRIPT.exists():  # an interpreter outside the venv: the script on PATH
    SCRIPT = Path(shutil.which("ppo-telemetry") or "ppo-telemetry")

NUM_ENVS, NUM_STEPS, UPDATE_EPOCHS, TOTAL_STEPS = 2, 16, 2, 512
PER_CYCLE = NUM_ENVS * NUM_STEPS
CYCLES = TOTAL_STEPS // PER_CYCLE
RECORDS = CYCLES * UPDATE_EPOCHS
SMALL = ["--num-envs", str(NUM_ENVS), "--num-steps", str(NUM_STEPS), "--update-epochs", str(UPDATE_EPOCHS)]
TIMING_FIELDS = {"timestamp_ms", "epoch_duration_sec"}
SUMMARY = re.compile(r"^train: run (?P<run>\S+): (?P<records>\d+) records, [\d,]+ env steps, (?P<epochs>\d+) epochs in ")


# ---------------------------------------------------------------------------------------------- helpers


def train_args(stream: Path, *extra: str, run_id: str = "run-1", total_steps: int = TOTAL_STEPS) -> list[str]:
    return ["train", "--ndjson-dir", str(stream), "--run-id", run_id, "--total-steps", str(total_steps), *SMALL, *extra]


def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_script(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *argv], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )


def stream_records(stream: Path) -> list[dict]:
    return [json.loads(line) for line in iter_segment_lines(stream)]


def validate(capsys, stream: Path) -> list[dict]:
    """`ppo-telemetry validate STREAM --json`, asserting every line is valid; returns the verdicts."""
    capsys.readouterr()
    code, out, err = run_main(capsys, ["validate", str(stream), "--json"])
    verdicts = [json.loads(line) for line in out.splitlines()]
    assert code == 0, err
    assert verdicts, "the stream is empty"
    assert all(v["status"] == "valid" and v["errors"] == [] for v in verdicts), [
        v for v in verdicts if v["status"] != "valid"
    ]
    return verdicts


def assert_contiguous_from(verdicts: list[dict], start: int = 0) -> None:
    assert [v["log_stream_offset"] for v in verdicts] == list(range(start, start + len(verdicts)))


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


@pytest.fixture(scope="module")
def conflict_recording(tmp_path_factory) -> Path:
    """A pristine recording of a tiny mixed Conflict-v0 run (tests copy it before changing it)."""
    base = tmp_path_factory.mktemp("conflict-recording")
    done = run_script(train_args(base / "stream", "--record-rollouts", str(base / "rollouts"), total_steps=128))
    assert done.returncode == 0, done.stderr
    return base / "rollouts"


@pytest.fixture
def recording(conflict_recording, tmp_path) -> Path:
    """A private copy of the Conflict-v0 recording, free to damage."""
    return Path(shutil.copytree(conflict_recording, tmp_path / "rollouts"))


# ------------------------------------------------------------------------------------ the mixed stream


def test_train_in_process_writes_a_valid_mixed_stream_with_the_given_run_id(tmp_path, capsys):
    stream = tmp_path / "stream"
    code, out, err = run_main(capsys, train_args(stream, run_id="cli.test:run-1"))
    assert code == 0
    assert out == ""
    assert [path.name for _, path in list_segments(stream)] == [segment_name(0)]
    records = stream_records(stream)
    assert len(records) == RECORDS
    assert {r["run_id"] for r in records} == {"cli.test:run-1"}
    assert {r["telemetry_version"] for r in records} == {"1.1"}
    assert {r["data_mode"] for r in records} == {"mixed"}
    assert [r["cycle_id"] for r in records] == [c for c in range(1, CYCLES + 1) for _ in range(UPDATE_EPOCHS)]
    assert {r["rollout_ticks"] for r in records} == {NUM_ENVS * NUM_STEPS}
    assert [r["epoch"] for r in records] == list(range(RECORDS))
    assert [r["global_step"] for r in records] == [r["cycle_id"] * PER_CYCLE for r in records]
    verdicts = validate(capsys, stream)
    assert_contiguous_from(verdicts)
    assert {v["run_id"] for v in verdicts} == {"cli.test:run-1"}


def test_train_in_process_without_a_terminal_prints_only_one_summary_line(tmp_path, capsys):
    code, _, err = run_main(capsys, train_args(tmp_path / "stream", run_id="quiet"))
    assert code == 0
    assert "\r" not in err and "[#" not in err
    assert len(err.splitlines()) == 1 and err.endswith("\n")
    summary = SUMMARY.match(err)
    assert summary is not None, err
    assert summary["run"] == "quiet" and int(summary["records"]) == int(summary["epochs"]) == RECORDS


def test_train_in_process_writes_its_summary_to_the_current_stderr(tmp_path):
    # Regression: TrainingRun once bound sys.stderr at import, so a later main() under a redirected
    # stderr wrote to the old stream and failed once that stream was closed.
    for name in ("first", "second"):
        buffer = io.StringIO()
        with contextlib.redirect_stderr(buffer):
            code = main(train_args(tmp_path / name, run_id=name, total_steps=64))
        summary = buffer.getvalue()
        buffer.close()  # as capsys does at the end of a test
        assert code == 0
        assert summary.startswith(f"train: run {name}: "), summary


def test_train_console_script_without_a_terminal_is_quiet_and_writes_a_valid_stream(tmp_path, capsys):
    stream = tmp_path / "stream"
    done = run_script(train_args(stream, run_id="sub-run"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "\r" not in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1
    summary = SUMMARY.match(done.stderr)
    assert summary is not None, done.stderr
    assert summary["run"] == "sub-run" and int(summary["records"]) == RECORDS
    records = stream_records(stream)
    assert {r["run_id"] for r in records} == {"sub-run"}
    assert {r["data_mode"] for r in records} == {"mixed"}
    assert [r["cycle_id"] for r in records] == [c for c in range(1, CYCLES + 1) for _ in range(UPDATE_EPOCHS)]
    assert {r["rollout_ticks"] for r in records} == {PER_CYCLE}
    assert_contiguous_from(validate(capsys, stream))


def test_train_on_a_terminal_draws_a_progress_bar_on_stderr(tmp_path, capsys):
    stream = tmp_path / "stream"
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(SCRIPT), *train_args(stream, run_id="tty-run")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
        )
    finally:
        os.close(slave)  # the child holds its own copy; EOF (EIO) comes when it exits
    output = bytearray()
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError as exc:
                if exc.errno == errno.EIO:  # Linux: every slave descriptor closed
                    break
                raise
            if not chunk:
                break
            output += chunk
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = output.decode("utf-8", "replace")
    assert code == 0, text
    assert "\r[" in text
    assert re.search(r"\r\[[# ]{30}\]\s+\d{1,3}\.\d%", text), text
    assert "\r[" + "#" * 30 + "] 100.0%" in text  # the final redraw shows the run complete
    assert "train: run tty-run: " in text  # the summary still follows the bar
    assert "Traceback" not in text
    assert len(stream_records(stream)) == RECORDS


# ------------------------------------------------------------------------------------ versions and modes


def test_telemetry_version_1_0_writes_records_with_exactly_the_v1_0_fields(tmp_path, capsys):
    stream = tmp_path / "stream"
    code, _, err = run_main(capsys, train_args(stream, "--telemetry-version", "1.0"))
    assert code == 0, err
    records = stream_records(stream)
    assert len(records) == RECORDS
    assert all(r["telemetry_version"] == "1.0" for r in records)
    assert all(set(r) == set(VERSION_FIELDS["1.0"]) for r in records)
    assert all("log_stream_offset" not in r for r in records)
    verdicts = validate(capsys, stream)
    assert all(v["telemetry_version"] == "1.0" and v["warnings"] == [] for v in verdicts)
    assert len(verdicts) == RECORDS


def test_rollout_mode_captures_once_with_total_steps_rounded_up_to_whole_vector_steps(tmp_path, capsys):
    stream = tmp_path / "stream"
    argv = ["train", "--ndjson-dir", str(stream), "--run-id", "roll", "--data-mode", "rollout",
            "--total-steps", "1000", "--num-envs", "3", "--update-epochs", "3"]
    code, _, err = run_main(capsys, argv)
    assert code == 0, err
    records = stream_records(stream)
    assert len(records) == 3  # one capture, update_epochs epochs on it
    assert {r["data_mode"] for r in records} == {"rollout"}
    assert [r["cycle_id"] for r in records] == [1, 1, 1]
    assert {r["rollout_ticks"] for r in records} == {1002}  # ceil(1000 / 3) * 3
    assert {r["num_samples"] for r in records} == {1002}
    assert {r["global_step"] for r in records} == {1002}
    assert_contiguous_from(validate(capsys, stream))


@pytest.mark.parametrize("as_directory", [False, True], ids=["manifest-file", "recording-directory"])
def test_replay_of_a_recording_trains_without_environment_ticks(conflict_recording, tmp_path, capsys, as_directory):
    manifest = json.loads((conflict_recording / "manifest.json").read_text())
    target = conflict_recording if as_directory else conflict_recording / "manifest.json"
    stream = tmp_path / "replayed"
    code, _, err = run_main(capsys, ["train", "--ndjson-dir", str(stream), "--run-id", "replayed",
                                     "--replay", str(target), *SMALL])
    assert code == 0, err
    records = stream_records(stream)
    assert len(records) == len(manifest["rollouts"]) * UPDATE_EPOCHS == 4 * UPDATE_EPOCHS
    assert {r["data_mode"] for r in records} == {"replay"}
    assert {r["cycle_id"] for r in records} == {0}
    assert {r["rollout_ticks"] for r in records} == {0}
    assert {r["global_step"] for r in records} == {0}
    assert {r["run_id"] for r in records} == {"replayed"}
    assert {r["num_samples"] for r in records} == {PER_CYCLE}
    assert_contiguous_from(validate(capsys, stream))


def test_record_rollouts_writes_one_archive_per_capture(conflict_recording):
    manifest = json.loads((conflict_recording / "manifest.json").read_text())
    assert manifest["env_id"] == "Conflict-v0"
    assert [e["cycle_id"] for e in manifest["rollouts"]] == [1, 2, 3, 4]  # 128 ticks / 32 per capture
    assert all((conflict_recording / e["file"]).is_file() for e in manifest["rollouts"])
    assert all(e["samples"] == PER_CYCLE for e in manifest["rollouts"])


# ------------------------------------------------------------------------------------------ bad input


def _damage_delete_archive(recording: Path) -> None:
    (recording / json.loads((recording / "manifest.json").read_text())["rollouts"][0]["file"]).unlink()


def _damage_alter_archive(recording: Path) -> None:
    path = recording / json.loads((recording / "manifest.json").read_text())["rollouts"][0]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage_not_json(recording: Path) -> None:
    (recording / "manifest.json").write_text("{this is not json")


# (id, argv after 'train' given the stream dir and a damaged recording, damage, what the one line names)
BAD_INPUTS = [
    ("missing-ndjson-dir", lambda s, r: ["--total-steps", "64"], None, "--ndjson-dir"),
    ("run-id-with-space", lambda s, r: ["--ndjson-dir", s, "--run-id", "bad id"], None, "--run-id"),
    ("replay-missing-file", lambda s, r: ["--ndjson-dir", s, "--replay", f"{r}/nope.json"], None, "nope.json"),
    ("manifest-not-json", lambda s, r: ["--ndjson-dir", s, "--replay", f"{r}/manifest.json"], _damage_not_json, "not JSON"),
    ("archive-deleted", lambda s, r: ["--ndjson-dir", s, "--replay", f"{r}/manifest.json"], _damage_delete_archive, "rollout-000001.npz"),
    ("archive-altered", lambda s, r: ["--ndjson-dir", s, "--replay", f"{r}/manifest.json"], _damage_alter_archive, "sha256"),
    ("data-mode-replay-without-replay", lambda s, r: ["--ndjson-dir", s, "--data-mode", "replay"], None, "--replay"),
    ("replay-with-data-mode-mixed", lambda s, r: ["--ndjson-dir", s, "--replay", f"{r}/manifest.json", "--data-mode", "mixed"], None, "mixed"),
    ("unknown-env", lambda s, r: ["--ndjson-dir", s, "--env", "NoSuchEnv-v9"], None, "NoSuchEnv-v9"),
    # the venv does not install gymnasium[box2d]: gymnasium's own text says what to install
    ("env-dependency-missing", lambda s, r: ["--ndjson-dir", s, "--env", "LunarLander-v3"], None, "gymnasium[box2d]"),
    ("total-steps-zero", lambda s, r: ["--ndjson-dir", s, "--total-steps", "0"], None, "--total-steps"),
]


@pytest.mark.parametrize("runner", ["main", "script"])
@pytest.mark.parametrize(("argv", "damage", "named"), [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS])
def test_bad_train_input_is_one_line_on_stderr_and_exit_2(recording, tmp_path, capsys, runner, argv, damage, named):
    if damage is not None:
        damage(recording)
    full = ["train", *argv(str(tmp_path / "stream"), str(recording)), *SMALL]
    if runner == "main":
        code, out, err = run_main(capsys, full)
    else:
        done = run_script(full)
        code, out, err = done.returncode, done.stdout, done.stderr
    assert code == 2, err
    assert out == ""
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("ppo-telemetry: error: ")
    assert named in err


@pytest.mark.parametrize("runner", ["main", "script"])
def test_replay_of_a_cartpole_recording_on_conflict_is_one_line_and_exit_2(tmp_path, capsys, runner):
    recording = tmp_path / "cartpole"
    code, _, _ = run_main(capsys, ["train", "--ndjson-dir", str(tmp_path / "cp-stream"), "--env", "CartPole-v1", "--total-steps", "64",
                 "--record-rollouts", str(recording), *SMALL])
    assert code == 0
    full = ["train", "--ndjson-dir", str(tmp_path / "stream"), "--env", "Conflict-v0",
            "--replay", str(recording / "manifest.json"), *SMALL]
    if runner == "main":
        code, _, err = run_main(capsys, full)
    else:
        done = run_script(full)
        code, err = done.returncode, done.stderr
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert "CartPole-v1" in err and "Conflict-v0" in err
    assert stream_records(tmp_path / "stream") == []  # nothing trained on the wrong environment


def test_train_on_a_box_action_space_writes_a_valid_stream_and_refuses_recording_in_one_line(tmp_path, capsys):
    stream = tmp_path / "stream"
    code, _, err = run_main(capsys, train_args(stream, "--env", "Pendulum-v1", run_id="pendulum"))
    assert code == 0, err
    assert len(validate(capsys, stream)) == RECORDS
    code, out, err = run_main(capsys, train_args(tmp_path / "s2", "--env", "Pendulum-v1", "--record-rollouts", str(tmp_path / "rec")))
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1 and "Discrete actions only" in err


def test_a_train_rejected_for_its_environment_releases_the_stream_directory(tmp_path, capsys):
    # Regression: the NdjsonSink is opened before the harness; when TrainingHarness() raised (unknown
    # env) nobody closed the sink, so its flock stayed held and the next run there was refused.
    stream = tmp_path / "stream"
    code, _, err = run_main(capsys, train_args(stream, "--env", "NoSuchEnv-v9"))
    assert code == 2 and "NoSuchEnv-v9" in err
    code, _, err = run_main(capsys, train_args(stream, run_id="after-rejection", total_steps=64))
    assert code == 0, err
    assert {r["run_id"] for r in stream_records(stream)} == {"after-rejection"}


# -------------------------------------------------------------------------------- restart and rotation


def test_a_second_run_into_the_same_directory_continues_the_offsets(tmp_path, capsys):
    stream = tmp_path / "stream"
    assert run_main(capsys, train_args(stream, run_id="first"))[0] == 0
    first = stream_records(stream)
    assert run_main(capsys, train_args(stream, run_id="second", total_steps=256))[0] == 0
    records = stream_records(stream)
    assert records[: len(first)] == first  # the first run's lines are untouched
    second = records[len(first):]
    assert len(second) == (256 // PER_CYCLE) * UPDATE_EPOCHS
    assert {r["run_id"] for r in second} == {"second"}
    assert second[0]["log_stream_offset"] == len(first)
    assert [r["log_stream_offset"] for r in records] == list(range(len(records)))
    assert [r["epoch"] for r in second] == list(range(len(second)))  # epochs count within a run
    verdicts = validate(capsys, stream)
    assert_contiguous_from(verdicts)
    assert [v["run_id"] for v in verdicts] == ["first"] * len(first) + ["second"] * len(second)


def test_ndjson_max_bytes_rotates_into_segments_named_by_their_first_offset(tmp_path, capsys):
    stream = tmp_path / "stream"
    code, _, err = run_main(capsys, train_args(stream, "--ndjson-max-bytes", "4000"))
    assert code == 0, err
    segments = list_segments(stream)
    assert len(segments) >= 3
    expected = 0
    for first, path in segments:
        lines = path.read_bytes().splitlines()
        assert path.name == segment_name(first)
        assert first == expected
        assert json.loads(lines[0])["log_stream_offset"] == first
        assert path.stat().st_size <= 4000
        expected += len(lines)
    assert expected == RECORDS
    assert_contiguous_from(validate(capsys, stream))


# ------------------------------------------------------------------------------------------- Ctrl-C


def _complete_lines(stream: Path) -> int:
    if not stream.is_dir():  # the writer has not started yet
        return 0
    total = 0
    for _, path in list_segments(stream):
        try:
            total += path.read_bytes().count(b"\n")
        except FileNotFoundError:
            pass
    return total


def _start_training(stream: Path, run_id: str, **popen) -> subprocess.Popen:
    """A long `train` in a subprocess, returned once its stream holds a few complete records."""
    proc = subprocess.Popen(
        [str(SCRIPT), "train", "--ndjson-dir", str(stream), "--run-id", run_id, "--total-steps", "200000"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen,
    )
    deadline = time.monotonic() + 30
    while _complete_lines(stream) < 3:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no records reached the stream within 30 s: {proc.communicate()}")
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_finishes_the_epoch_flushes_the_stream_and_exits_130(tmp_path, capsys, signum):
    stream = tmp_path / "stream"
    proc = _start_training(stream, "stopped")
    try:
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert out == ""
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert "stopped" in err
    summary = SUMMARY.match(err)
    assert summary is not None, err
    reported_records, reported_epochs = int(summary["records"]), int(summary["epochs"])
    data = b"".join(path.read_bytes() for _, path in list_segments(stream))
    assert data.endswith(b"\n")  # no partial last line
    records = stream_records(stream)
    assert len(records) == reported_records == reported_epochs  # every finished epoch's record is on disk
    assert reported_records < 200000 // 256 * 20  # it really stopped early
    assert [r["epoch"] for r in records] == list(range(len(records)))
    verdicts = validate(capsys, stream)
    assert len(verdicts) == len(records)
    assert_contiguous_from(verdicts)


def test_ctrl_c_at_a_terminal_reaches_the_whole_group_and_still_loses_nothing(tmp_path, capsys):
    # A terminal's Ctrl-C signals the whole foreground process group, the publisher process too:
    # it must keep writing until the trainer, having finished its epoch, closes it.
    stream = tmp_path / "stream"
    proc = _start_training(stream, "group", start_new_session=True)
    try:
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    summary = SUMMARY.match(err)
    assert summary is not None, err
    records = stream_records(stream)
    assert len(records) == int(summary["records"]) == int(summary["epochs"])
    assert_contiguous_from(validate(capsys, stream))


def test_a_publisher_process_that_dies_is_one_line_exit_2(tmp_path):
    stream = tmp_path / "stream"
    proc = _start_training(stream, "orphan")
    try:
        children = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert len(children) == 1  # the publisher process
        os.kill(children[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "publisher process" in err


# ------------------------------------------------------------------------------------------ determinism


def test_the_same_seed_gives_the_same_records_apart_from_timing(tmp_path, capsys):
    runs = []
    for name in ("a", "b"):
        stream = tmp_path / name
        code, _, err = run_main(capsys, train_args(stream, "--seed", "7", run_id="same-run"))
        assert code == 0, err
        runs.append(stream_records(stream))
    assert len(runs[0]) == RECORDS
    assert without_timing(runs[0]) == without_timing(runs[1])
    other = tmp_path / "other-seed"
    assert run_main(capsys, train_args(other, "--seed", "8", run_id="same-run"))[0] == 0
    assert without_timing(stream_records(other)) != without_timing(runs[0])  # the seed does matter


# ------------------------------------------------------------------------------- faults (SPEC §8)

FAULT_LINE = re.compile(r"^train: fault (?P<fault>\S+) active from cycle (?P<cycle>\d+) \(global_step (?P<step>[\d,]+)\)$")


def test_train_with_faults_writes_faults_json_beside_the_segments_and_says_so(tmp_path, capsys):
    stream = tmp_path / "stream"
    code, out, err = run_main(capsys, train_args(
        stream, "--env", "CartPole-v1", "--fault", "lr_spike@200", "--fault", "value_reset@400", run_id="faulty"
    ))
    assert code == 0, err
    assert out == ""
    lines = err.splitlines()
    # cycles of 32 ticks: the first whose training starts at global_step >= STEP
    assert [FAULT_LINE.match(line).groupdict() for line in lines[:2]] == [
        {"fault": "lr_spike@200:50", "cycle": "7", "step": "224"},
        {"fault": "value_reset@400", "cycle": "13", "step": "416"},
    ]
    assert SUMMARY.match(lines[2]) is not None
    assert lines[3] == f"train: run faulty: faults listed in {stream / 'faults.json'}"
    assert len(lines) == 4
    assert json.loads((stream / "faults.json").read_text()) == [
        {"name": "lr_spike", "step": 200, "value": 50.0, "first_cycle_id": 7, "run_id": "faulty"},
        {"name": "value_reset", "step": 400, "value": None, "first_cycle_id": 13, "run_id": "faulty"},
    ]
    records = stream_records(stream)
    assert len(records) == RECORDS  # the records do not say a fault happened; faults.json does
    rates = {r["cycle_id"]: r["learning_rate"] for r in records}
    assert rates[7] == pytest.approx(rates[6] * 50 * (1 - 6 / CYCLES) / (1 - 5 / CYCLES))  # annealed, then x 50
    assert [path.name for _, path in list_segments(stream)] == [segment_name(0)]
    assert_contiguous_from(validate(capsys, stream))


def test_a_second_faulty_run_into_the_same_directory_keeps_the_first_run_s_faults(tmp_path, capsys):
    stream = tmp_path / "stream"
    assert run_main(capsys, train_args(stream, "--fault", "clip_off@0", run_id="first"))[0] == 0
    assert run_main(capsys, train_args(stream, run_id="healthy"))[0] == 0  # no fault: faults.json untouched
    assert run_main(capsys, train_args(stream, "--fault", "reward_noise@500:0.5", run_id="second"))[0] == 0
    assert json.loads((stream / "faults.json").read_text()) == [
        {"name": "clip_off", "step": 0, "value": 1000.0, "first_cycle_id": 1, "run_id": "first"},
        {"name": "reward_noise", "step": 500, "value": 0.5, "first_cycle_id": 16, "run_id": "second"},
    ]


def test_a_run_without_faults_writes_no_faults_json(tmp_path, capsys):
    stream = tmp_path / "stream"
    assert run_main(capsys, train_args(stream, run_id="healthy"))[0] == 0
    assert not (stream / "faults.json").exists()


def test_without_a_faults_file_the_faults_go_to_stderr(tmp_path, capsys):
    # as with --kafka alone: no segment directory, so no faults.json; the last line carries its content
    from ppo_telemetry.train import TrainingRun
    from producer.faults import parse_fault
    from producer.harness import HarnessConfig
    from producer.publisher import PublisherProcess

    config = HarnessConfig(
        env_id="CartPole-v1", num_envs=NUM_ENVS, num_steps=NUM_STEPS, update_epochs=UPDATE_EPOCHS,
        total_steps=TOTAL_STEPS, run_id="no-file", faults=[parse_fault("advantage_sign@100")],
    )
    err = io.StringIO()
    publisher = PublisherProcess(tmp_path / "stream", 1 << 20, config.run_id, True)
    assert TrainingRun(config, publisher, err=err).run() == 0
    last = err.getvalue().splitlines()[-1]
    prefix = "train: run no-file: no --ndjson-dir, so no faults.json; faults "
    assert last.startswith(prefix)
    assert json.loads(last[len(prefix):]) == [
        {"name": "advantage_sign", "step": 100, "value": None, "first_cycle_id": 4},
    ]
    assert not (tmp_path / "stream" / "faults.json").exists()


BAD_FAULTS = [
    ("unknown-name", ["--fault", "lr_explosion@100"], "unknown fault 'lr_explosion'"),
    ("no-step", ["--fault", "lr_spike"], "NAME@STEP[:VALUE]"),
    ("bad-value", ["--fault", "lr_spike@100:fast"], "VALUE must be a number"),
    ("zero-value", ["--fault", "clip_off@100:0"], "VALUE must be finite and > 0"),
    ("value-to-a-fault-without-one", ["--fault", "advantage_sign@100:2"], "advantage_sign takes no VALUE"),
    ("step-beyond-total-steps", ["--fault", f"lr_spike@{TOTAL_STEPS + 1}"], "beyond the run's 512 environment steps"),
    ("second-fault-bad", ["--fault", "lr_spike@100", "--fault", "reward_noise@-1"], "STEP must be >= 0"),
]


@pytest.mark.parametrize("runner", ["main", "script"])
@pytest.mark.parametrize(("extra", "named"), [pytest.param(*case[1:], id=case[0]) for case in BAD_FAULTS])
def test_a_bad_fault_is_one_line_on_stderr_and_exit_2(tmp_path, capsys, runner, extra, named):
    stream = tmp_path / "stream"
    argv = train_args(stream, *extra)
    if runner == "main":
        code, out, err = run_main(capsys, argv)
    else:
        done = run_script(argv)
        code, out, err = done.returncode, done.stdout, done.stderr
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("ppo-telemetry: error: ") and named in err
    assert not stream.exists()  # refused before anything was written


def test_a_fault_with_replay_is_one_line_and_exit_2(recording, tmp_path, capsys):
    argv = ["train", "--ndjson-dir", str(tmp_path / "stream"), "--replay", str(recording / "manifest.json"),
            "--fault", "lr_spike@0", *SMALL]
    code, _, err = run_main(capsys, argv)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--fault" in err and "--replay" in err
