"""`ppo_telemetry.recorder.EpochRecorder`: the recorder with its sinks, written by the publisher process."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from avro_schemas.errors import TelemetryError
from avro_schemas.ndjson import iter_segment_lines
from consumers.validator import Validator
from ppo_telemetry.recorder import EpochRecorder, RecorderError

RNG = np.random.default_rng(3)


def record_cycles(recorder: EpochRecorder, cycles: int, epochs: int = 3) -> None:
    for cycle in range(cycles):
        rewards, advantages, returns = (RNG.normal(size=128) for _ in range(3))
        recorder.begin_cycle(rewards, advantages, returns, returns * 0.9, global_step=128 * (cycle + 1), learning_rate=3e-4)
        for _ in range(epochs):
            for _ in range(4):
                recorder.minibatch(0.01, 0.5, 0.6, 0.002, 0.8, 0.1, 32)
            recorder.end_epoch()


def test_records_reach_the_ndjson_stream_valid_numbered_and_resumable(tmp_path):
    stream = tmp_path / "telemetry"
    with EpochRecorder("sinks-run", ndjson_dir=stream, ndjson_max_bytes=4000) as recorder:
        record_cycles(recorder, cycles=2)
        recorder.flush()
        assert recorder.next_offset == 6  # flushed: written, and the next offset known
    with EpochRecorder("sinks-run", ndjson_dir=stream) as recorder:  # a restarted trainer appends
        record_cycles(recorder, cycles=1)
    lines = list(iter_segment_lines(stream))
    records = [json.loads(line) for line in lines]
    assert [r["log_stream_offset"] for r in records] == list(range(9))
    validator = Validator()
    assert all(validator.validate_line(line).status == "valid" for line in lines)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4, 5, 0, 1, 2]  # epochs count within one recorder


def test_a_recorder_without_a_sink_is_refused():
    with pytest.raises(RecorderError, match="somewhere to publish"):
        EpochRecorder("no-sink")


def test_a_directory_that_cannot_hold_a_stream_is_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(TelemetryError) as caught:
        EpochRecorder("bad-dir", ndjson_dir=blocker)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "kafka_config",
    [{"sasl.kerberos.kinit.cmd": "touch /tmp/owned"}, {"security.protocol": "CARRIER_PIGEON"}, {"no such key": "1"}],
)
def test_bad_kafka_settings_are_one_line_errors_before_anything_starts(kafka_config):
    with pytest.raises(TelemetryError) as caught:
        EpochRecorder("bad-kafka", kafka="127.0.0.1:1", kafka_config=kafka_config)
    assert "\n" not in str(caught.value)


def test_a_bad_run_id_is_refused_before_the_publisher_starts(tmp_path):
    with pytest.raises(RecorderError, match="run_id"):
        EpochRecorder("not a run id", ndjson_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_a_recorder_that_does_not_wait_for_its_publisher_writes_the_same_records(tmp_path):
    stream = tmp_path / "telemetry"
    with EpochRecorder("eager-run", ndjson_dir=stream, wait_for_start=False) as recorder:
        recorder.poll()  # before or after the publisher has answered: nothing to raise
        record_cycles(recorder, cycles=2)
    records = [json.loads(line) for line in iter_segment_lines(stream)]
    assert [r["log_stream_offset"] for r in records] == list(range(6))


def test_a_sink_that_cannot_open_is_raised_by_poll_once_the_publisher_has_answered(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    recorder = EpochRecorder("late-error", ndjson_dir=blocker, wait_for_start=False)  # returns at once
    deadline = time.monotonic() + 30.0
    with pytest.raises(TelemetryError) as caught:
        while time.monotonic() < deadline:
            recorder.poll()
            time.sleep(0.01)
    assert "\n" not in str(caught.value)
    with pytest.raises(TelemetryError):  # and again on every later call that needs the publisher
        recorder.flush()


def test_a_sink_that_cannot_open_is_raised_by_the_first_hand_over_without_a_poll(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    recorder = EpochRecorder("late-error", ndjson_dir=blocker, wait_for_start=False)
    with pytest.raises(TelemetryError):
        record_cycles(recorder, cycles=1)
        recorder.flush()
