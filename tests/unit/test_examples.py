"""examples/ppo_torch.py, run as a user runs it (a subprocess, as CleanRL's tests run its scripts): the
records it publishes through `ppo_telemetry.recorder.EpochRecorder`, and its one-line errors.

Each run is a few thousand environment steps of real PyTorch PPO on CPU (a few seconds)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from avro_schemas.ndjson import iter_segment_lines
from consumers.validator import Validator

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "ppo_torch.py"
NUM_ENVS, NUM_STEPS, NUM_MINIBATCHES, UPDATE_EPOCHS, TOTAL_STEPS = 4, 128, 4, 4, 4096
ROLLOUT = NUM_ENVS * NUM_STEPS
ITERATIONS = TOTAL_STEPS // ROLLOUT
LEARNING_RATE = 2.5e-4
SHAPE = [
    "--num-envs", str(NUM_ENVS), "--num-steps", str(NUM_STEPS), "--num-minibatches", str(NUM_MINIBATCHES),
    "--update-epochs", str(UPDATE_EPOCHS), "--total-timesteps", str(TOTAL_STEPS),
    "--learning-rate", str(LEARNING_RATE),
]


def run_example(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # the timeout only keeps a hung run from hanging the suite; nothing is asserted about time
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def valid_records(stream: Path) -> list[dict]:
    """Every record of the stream, each checked by the validator (record and stream rules) first."""
    lines = list(iter_segment_lines(stream))
    validator = Validator()
    verdicts = [validator.validate_line(line) for line in lines]
    assert [(v.status, v.errors, v.warnings) for v in verdicts] == [("valid", [], [])] * len(lines)
    return [json.loads(line) for line in lines]


def assert_counted_right(records: list[dict], epochs_per_cycle: int, run_id: str) -> None:
    """Offsets and epochs contiguous from 0; `epochs_per_cycle` records per rollout, numbered from 1,
    each at the step count and learning rate of its rollout (annealed linearly, as the script does)."""
    assert len(records) == ITERATIONS * epochs_per_cycle
    assert [r["log_stream_offset"] for r in records] == list(range(len(records)))
    assert [r["epoch"] for r in records] == list(range(len(records)))
    for index, record in enumerate(records):
        cycle = index // epochs_per_cycle + 1
        assert record["run_id"] == run_id
        assert record["cycle_id"] == cycle
        assert record["global_step"] == cycle * ROLLOUT
        assert record["num_samples"] == record["rollout_ticks"] == ROLLOUT
        assert record["num_minibatches"] == NUM_MINIBATCHES
        assert record["data_mode"] == "mixed"
        assert record["learning_rate"] == LEARNING_RATE * (1.0 - (cycle - 1.0) / ITERATIONS)


def test_cartpole_publishes_one_valid_record_per_epoch(tmp_path):
    result = run_example([*SHAPE, "--ndjson-dir", "telemetry", "--run-id", "example-cartpole"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warnings from torch, gymnasium or the recorder
    records = valid_records(tmp_path / "telemetry")
    assert_counted_right(records, UPDATE_EPOCHS, "example-cartpole")
    for record in records:
        assert 0.0 <= record["kl_divergence"] <= record["kl_divergence_max"] < 0.1
        assert 0.0 < record["batch_entropy_mean"] <= math.log(2)  # two actions: at most ln 2 nats
        assert record["grad_norm_max"] > 0.0
        assert 0.0 <= record["clip_fraction"] <= 1.0
        assert record["value_loss"] > 0.0
        assert 8.0 <= record["mean_episode_return"] <= 500.0  # CartPole-v1 episodes last 8 to 500 steps
    # the epochs of one rollout train on the same data: the dataset's statistics repeat within a cycle
    for cycle in range(ITERATIONS):
        epochs = records[cycle * UPDATE_EPOCHS:(cycle + 1) * UPDATE_EPOCHS]
        assert len({(r["explained_variance"], r["mean_episode_return"]) for r in epochs}) == 1
    # and the policy moves within a rollout: the first epoch's KL is below the last one's
    assert sum(records[c * UPDATE_EPOCHS]["kl_divergence"] < records[(c + 1) * UPDATE_EPOCHS - 1]["kl_divergence"]
               for c in range(ITERATIONS)) >= ITERATIONS - 1


def test_target_kl_stops_the_update_and_only_epochs_run_are_recorded(tmp_path):
    # a target no update stays under: every update stops after its first epoch, as CleanRL's does;
    # no --ndjson-dir and no --kafka: the records go to runs/<run-id>/, the script's default
    result = run_example([*SHAPE, "--target-kl", "1e-9", "--run-id", "example-early-stop"], tmp_path)
    assert result.returncode == 0, result.stderr
    records = valid_records(tmp_path / "runs" / "example-early-stop")
    assert_counted_right(records, 1, "example-early-stop")
    assert all(record["kl_divergence_max"] > 1e-9 for record in records)


def test_pendulum_continuous_actions_publish_valid_records(tmp_path):
    result = run_example(
        ["--env-id", "Pendulum-v1", *SHAPE, "--ent-coef", "0", "--ndjson-dir", "telemetry",
         "--run-id", "example-pendulum"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    records = valid_records(tmp_path / "telemetry")
    assert_counted_right(records, UPDATE_EPOCHS, "example-pendulum")
    for record in records:
        assert 0.0 <= record["kl_divergence"] <= record["kl_divergence_max"]
        # a one-dimensional Gaussian starting at std 1: 0.5 ln(2 pi e) nats, moving slowly
        assert abs(record["batch_entropy_mean"] - 0.5 * math.log(2 * math.pi * math.e)) < 0.1
        # every Pendulum-v1 episode is cut at 200 steps: a rollout holds a finished one exactly when
        # some environment's 200th, 400th, ... step falls in it
        steps_per_env = range((record["cycle_id"] - 1) * NUM_STEPS + 1, record["cycle_id"] * NUM_STEPS + 1)
        if any(step % 200 == 0 for step in steps_per_env):
            assert -2000.0 < record["mean_episode_return"] <= 0.0  # Pendulum's rewards are never positive
        else:
            assert record["mean_episode_return"] is None


def test_a_bad_run_id_is_one_line_on_stderr_and_exit_2(tmp_path):
    result = run_example([*SHAPE, "--ndjson-dir", "telemetry", "--run-id", "not a run id"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("ppo_torch.py: error: run_id must be")
    assert result.stdout == ""  # refused before training
    assert not (tmp_path / "telemetry").exists()


def test_an_unknown_environment_is_one_line_on_stderr_and_exit_2(tmp_path):
    result = run_example(["--env-id", "NoSuchEnv-v0", "--ndjson-dir", "telemetry"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("ppo_torch.py: error: --env-id NoSuchEnv-v0:")
