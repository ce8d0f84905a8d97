"""The training harness (`producer.harness`): records per epoch, data modes, replay, statistics reuse.

Tiny configurations keep every run to a few tens of milliseconds. Records are collected in memory by
`Collector`, which numbers v1.1 records the way the NDJSON stream writer does (the harness leaves
`log_stream_offset` to the writer), so they can be validated as they would be on a stream.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import producer.harness as harness_module
from avro_schemas.errors import TelemetryError
from avro_schemas.models import VERSION_FIELDS
from avro_schemas.ndjson import iter_segment_lines, list_segments
from consumers.validator import Validator, validate_record
from producer.harness import HarnessConfig, HarnessError, TrainingHarness
from producer.ndjson_sink import NdjsonSink
from producer.replay import ReplayError
from producer.rollout import RolloutBuffer

CONFLICT_REGISTERED = "Conflict-v0" in gym.registry
CONFLICT = pytest.param(
    "Conflict-v0", marks=pytest.mark.skipif(not CONFLICT_REGISTERED, reason="Conflict-v0 is not registered")
)
ENVS = ["CartPole-v1", CONFLICT]
TIMING_FIELDS = {"timestamp_ms", "epoch_duration_sec"}
NUM_ENVS, NUM_STEPS, UPDATE_EPOCHS, TOTAL_STEPS = 2, 16, 2, 256
PER_CYCLE = NUM_ENVS * NUM_STEPS
CYCLES = TOTAL_STEPS // PER_CYCLE


def tiny(**overrides) -> HarnessConfig:
    values = dict(
        env_id="CartPole-v1", num_envs=NUM_ENVS, num_steps=NUM_STEPS, update_epochs=UPDATE_EPOCHS,
        total_steps=TOTAL_STEPS, num_minibatches=2,
    )
    values.update(overrides)
    return HarnessConfig(**values)


class Collector:
    """Keeps every published record; numbers v1.1 records as the stream writer would."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def publish(self, record: dict) -> None:
        if record["telemetry_version"] == "1.1":
            assert record["log_stream_offset"] is None  # numbering is the stream writer's job
            record["log_stream_offset"] = len(self.records)
        self.records.append(record)


def run(config: HarnessConfig) -> list[dict]:
    collector = Collector()
    harness = TrainingHarness(config, publish=collector.publish)
    try:
        harness.run_ppo()
    finally:
        harness.close()
    return collector.records


def run_keeping_cycles(config: HarnessConfig, monkeypatch) -> tuple[list[dict], list]:
    """Run, also keeping each cycle's `CycleData` as `train_epochs` receives it."""
    collector = Collector()
    harness = TrainingHarness(config, publish=collector.publish)
    cycles = []
    original = harness.train_epochs

    def keeping(cycle, data_mode):
        cycles.append(cycle)
        return original(cycle, data_mode)

    monkeypatch.setattr(harness, "train_epochs", keeping)
    try:
        harness.run_ppo()
    finally:
        harness.close()
    return collector.records, cycles


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def assert_all_valid(records: list[dict]) -> None:
    assert records
    for record in records:
        verdict = validate_record(record)
        assert verdict.status == "valid", (record, [e.to_json_dict() for e in verdict.errors])
        assert verdict.warnings == [], verdict.warnings


@pytest.fixture
def recording(tmp_path, monkeypatch):
    """A mixed run on CartPole-v1 recorded to `tmp_path / "rec"`: (directory, records, cycles)."""
    directory = tmp_path / "rec"
    records, cycles = run_keeping_cycles(tiny(record_rollouts=directory), monkeypatch)
    return directory, records, cycles


def replay_config(manifest: Path, **overrides) -> HarnessConfig:
    return tiny(data_mode="replay", replay_manifest=manifest, **overrides)


# ----------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("env_id", ENVS)
def test_same_seed_gives_identical_records_apart_from_timing(env_id):
    first = run(tiny(env_id=env_id, seed=3))
    second = run(tiny(env_id=env_id, seed=3))
    assert len(first) == len(second) == CYCLES * UPDATE_EPOCHS
    assert without_timing(first) == without_timing(second)
    assert set(first[0]) - set(without_timing(first)[0]) == TIMING_FIELDS


@pytest.mark.parametrize("env_id", ENVS)
def test_different_seeds_give_different_records(env_id):
    first = without_timing(run(tiny(env_id=env_id, seed=3)))
    second = without_timing(run(tiny(env_id=env_id, seed=4)))
    assert [r["policy_loss"] for r in first] != [r["policy_loss"] for r in second]
    assert [r["value_loss"] for r in first] != [r["value_loss"] for r in second]


# ------------------------------------------------------------------------------------ data modes


@pytest.mark.parametrize("env_id", ENVS)
@pytest.mark.parametrize("data_mode", ["mixed", "rollout"])
def test_every_record_validates_in_capture_modes(env_id, data_mode):
    records = run(tiny(env_id=env_id, data_mode=data_mode))
    assert {r["data_mode"] for r in records} == {data_mode}
    assert_all_valid(records)


def test_every_record_validates_in_replay_mode(recording):
    directory, recorded, _ = recording
    assert_all_valid(recorded)
    records = run(replay_config(directory / "manifest.json"))
    assert {r["data_mode"] for r in records} == {"replay"}
    assert_all_valid(records)


def test_mixed_mode_alternates_capture_and_training_cycles():
    records = run(tiny())
    assert len(records) == CYCLES * UPDATE_EPOCHS
    assert [r["cycle_id"] for r in records] == [c for c in range(1, CYCLES + 1) for _ in range(UPDATE_EPOCHS)]
    assert [r["epoch"] for r in records] == list(range(len(records)))
    for r in records:
        assert r["data_mode"] == "mixed"
        assert r["global_step"] == r["cycle_id"] * PER_CYCLE  # ticks consumed so far
        assert r["rollout_ticks"] == PER_CYCLE
        assert r["num_samples"] == PER_CYCLE
        assert r["num_minibatches"] == 2
        assert r["telemetry_version"] == "1.1"
        # linear decay per cycle, from the configured rate
        assert r["learning_rate"] == pytest.approx(1e-3 * (1 - (r["cycle_id"] - 1) / CYCLES), rel=1e-12)
    assert records[-1]["global_step"] == TOTAL_STEPS


def test_rollout_mode_captures_once_then_trains():
    records = run(tiny(data_mode="rollout", update_epochs=3))
    assert len(records) == 3
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for r in records:
        assert r["data_mode"] == "rollout"
        assert r["cycle_id"] == 1
        assert r["rollout_ticks"] == TOTAL_STEPS  # the single capture: total_steps over num_envs, each env
        assert r["num_samples"] == TOTAL_STEPS
        assert r["global_step"] == TOTAL_STEPS


def test_replay_mode_trains_on_the_recorded_datasets(recording, monkeypatch):
    directory, recorded, recorded_cycles = recording
    manifest = json.loads((directory / "manifest.json").read_text())
    assert len(manifest["rollouts"]) == CYCLES
    assert all((directory / entry["file"]).is_file() for entry in manifest["rollouts"])

    records, cycles = run_keeping_cycles(replay_config(directory / "manifest.json"), monkeypatch)
    assert len(records) == CYCLES * UPDATE_EPOCHS
    assert [r["epoch"] for r in records] == list(range(len(records)))
    for r in records:
        assert r["data_mode"] == "replay"
        assert r["cycle_id"] == 0
        assert r["rollout_ticks"] == 0
        assert r["global_step"] == 0  # replay consumes no environment ticks
        assert r["num_samples"] == PER_CYCLE

    assert len(cycles) == len(recorded_cycles) == CYCLES
    for replayed, original in zip(cycles, recorded_cycles):
        for name in ("obs", "actions", "logprobs", "values", "rewards", "advantages", "returns"):
            np.testing.assert_array_equal(getattr(replayed.dataset, name), getattr(original.dataset, name), err_msg=name)
        assert replayed.meta.episode_returns == original.meta.episode_returns
    # the dataset-level fields follow the dataset, so they repeat the recording run's
    for field in ("explained_variance", "reward_advantage_corr", "mean_episode_return", "num_samples"):
        assert [r[field] for r in records] == [r[field] for r in recorded], field


def test_replay_accepts_the_recording_directory_as_manifest(recording):
    directory, _, _ = recording
    assert len(run(replay_config(directory))) == CYCLES * UPDATE_EPOCHS


# ---------------------------------------------------------------------------------- replay errors


def first_rollout(directory: Path) -> tuple[dict, Path]:
    manifest = json.loads((directory / "manifest.json").read_text())
    return manifest, directory / manifest["rollouts"][0]["file"]


def replace_first_rollout(directory: Path, data: bytes) -> None:
    """Write `data` as the first rollout file and give the manifest its sha256, so only the content is bad."""
    manifest, path = first_rollout(directory)
    path.write_bytes(data)
    manifest["rollouts"][0]["sha256"] = hashlib.sha256(data).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))


def rewritten_archive(path: Path, **changes) -> bytes:
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays.update(changes)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def assert_one_line_replay_failure(config: HarnessConfig, error_type: type, match: str) -> None:
    published: list[dict] = []
    harness = TrainingHarness(config, publish=published.append)
    try:
        with pytest.raises(TelemetryError) as caught:
            harness.run_ppo()
    finally:
        harness.close()
    error = caught.value
    assert isinstance(error, error_type), repr(error)
    message = str(error)
    assert message and "\n" not in message
    assert match in message, message
    assert published == []  # the bad rollout is the first one: nothing trained


def test_replay_of_a_missing_manifest_is_a_one_line_error(tmp_path):
    assert_one_line_replay_failure(replay_config(tmp_path / "nowhere" / "manifest.json"), ReplayError, "manifest")


def test_replay_of_a_manifest_that_is_not_json_is_a_one_line_error(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text('{"format": "ppo-telemetry.rollouts",\n  "version": 1,')
    assert_one_line_replay_failure(replay_config(path), ReplayError, "not JSON")


def test_replay_of_a_manifest_of_another_format_is_a_one_line_error(recording):
    directory, _, _ = recording
    manifest, _ = first_rollout(directory)
    manifest["format"] = "something.else"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_replay_failure(replay_config(directory / "manifest.json"), ReplayError, "ppo-telemetry.rollouts")


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_replay_of_a_manifest_of_another_version_is_a_one_line_error(recording, version):
    directory, _, _ = recording
    manifest, _ = first_rollout(directory)
    manifest["version"] = version
    (directory / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_replay_failure(replay_config(directory / "manifest.json"), ReplayError, "version")


def test_replay_of_a_manifest_listing_a_missing_file_is_a_one_line_error(recording):
    directory, _, _ = recording
    _, path = first_rollout(directory)
    path.unlink()
    assert_one_line_replay_failure(replay_config(directory / "manifest.json"), ReplayError, path.name)


def test_replay_of_a_file_whose_bytes_were_altered_is_a_sha256_error(recording):
    directory, _, _ = recording
    _, path = first_rollout(directory)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert_one_line_replay_failure(replay_config(directory / "manifest.json"), ReplayError, "sha256")


def test_replay_of_a_truncated_archive_with_a_matching_sha_is_a_one_line_error(recording):
    directory, _, _ = recording
    _, path = first_rollout(directory)
    replace_first_rollout(directory, path.read_bytes()[: path.stat().st_size // 2])
    assert_one_line_replay_failure(replay_config(directory / "manifest.json"), ReplayError, path.name)


def test_replay_of_an_empty_archive_with_a_matching_sha_is_a_one_line_error(recording):
    # A zero-byte file: np.load raises EOFError, which must still become a ReplayError.
    directory, _, _ = recording
    _, path = first_rollout(directory)
    replace_first_rollout(directory, b"")
    assert_one_line_replay_failure(replay_config(directory / "manifest.json"), ReplayError, path.name)


def test_replay_of_an_archive_missing_an_array_is_a_one_line_error(recording):
    directory, _, _ = recording
    _, path = first_rollout(directory)
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files if key != "rewards"}
    out = io.BytesIO()
    np.savez(out, **arrays)
    replace_first_rollout(directory, out.getvalue())
    assert_one_line_replay_failure(replay_config(directory / "manifest.json"), ReplayError, path.name)


@pytest.mark.parametrize("array", ["actions", "obs", "terminated", "last_values"])
def test_replay_of_an_archive_whose_arrays_disagree_in_shape_is_a_one_line_error(recording, array):
    # rewards (which sets the expected shape) is intact; one other array has fewer steps or envs
    directory, _, _ = recording
    _, path = first_rollout(directory)
    with np.load(path) as npz:
        short = npz[array][:3] if array != "last_values" else np.zeros(NUM_ENVS + 1)
    replace_first_rollout(directory, rewritten_archive(path, **{array: short}))
    assert_one_line_replay_failure(replay_config(directory / "manifest.json"), ReplayError, path.name)


def test_replay_of_a_manifest_recorded_on_another_env_id_is_a_one_line_error(recording):
    directory, _, _ = recording
    manifest, _ = first_rollout(directory)
    manifest["env_id"] = "Acrobot-v1"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_replay_failure(replay_config(directory / "manifest.json"), HarnessError, "Acrobot-v1")


@pytest.mark.skipif(not CONFLICT_REGISTERED, reason="Conflict-v0 is not registered")
def test_replay_on_another_environment_than_recorded_is_a_one_line_error(recording):
    directory, _, _ = recording  # recorded on CartPole-v1
    assert_one_line_replay_failure(
        replay_config(directory / "manifest.json", env_id="Conflict-v0"), HarnessError, "CartPole-v1"
    )


def test_replay_without_a_manifest_is_refused_at_construction():
    with pytest.raises(HarnessError, match="manifest"):
        TrainingHarness(tiny(data_mode="replay"))


def test_an_unknown_data_mode_or_environment_is_a_harness_error():
    with pytest.raises(HarnessError, match="data_mode"):
        TrainingHarness(tiny(data_mode="streaming"))
    with pytest.raises(HarnessError, match="NoSuchEnv-v9"):
        TrainingHarness(tiny(env_id="NoSuchEnv-v9"))


# ------------------------------------------------------------------------------------ v1.0 fallback


@pytest.mark.parametrize("data_mode", ["mixed", "rollout"])
def test_telemetry_v1_1_off_publishes_exact_v1_0_records(data_mode):
    records = run(tiny(enable_telemetry_v1_1=False, data_mode=data_mode))
    assert records
    for r in records:
        assert r["telemetry_version"] == "1.0"
        assert set(r) == set(VERSION_FIELDS["1.0"])
    assert_all_valid(records)


def test_v1_0_records_carry_the_same_v1_0_values_as_v1_1_records():
    v10 = without_timing(run(tiny(enable_telemetry_v1_1=False)))
    v11 = without_timing(run(tiny()))
    common = set(VERSION_FIELDS["1.0"]) - TIMING_FIELDS - {"telemetry_version"}
    assert [{k: r[k] for k in common} for r in v10] == [{k: r[k] for k in common} for r in v11]


# ----------------------------------------------------------------------- dataset-level statistics


def record_env_steps(harness: TrainingHarness, monkeypatch) -> list[tuple]:
    """Every vector step's (rewards, terminated, truncated, infos), seen at the environment boundary."""
    steps: list[tuple] = []
    original = harness.envs.step

    def recording_step(actions):
        out = original(actions)
        steps.append((np.array(out[1], dtype=float), np.array(out[2]), np.array(out[3]), out[4]))
        return out

    monkeypatch.setattr(harness.envs, "step", recording_step)
    return steps


@pytest.mark.parametrize("env_id, capture_steps", [("CartPole-v1", (4, 64, 64)), pytest.param("Conflict-v0", (4, 150, 150), marks=CONFLICT.marks)])
def test_mean_episode_return_is_the_mean_of_episodes_finished_in_the_capture(env_id, capture_steps, monkeypatch):
    collector = Collector()
    harness = TrainingHarness(tiny(env_id=env_id, update_epochs=1), publish=collector.publish)
    steps = record_env_steps(harness, monkeypatch)
    running = np.zeros(NUM_ENVS)
    try:
        for n in capture_steps:
            seen_before = len(steps)
            cycle = harness.capture_rollout(n)
            finished = []  # computed independently, across capture boundaries
            for rewards, terminated, truncated, _ in steps[seen_before:]:
                running += rewards
                for e in np.flatnonzero(terminated | truncated):
                    finished.append(float(running[e]))
                    running[e] = 0.0
            assert cycle.meta.episode_returns == pytest.approx(tuple(finished), rel=1e-12)
            harness.train_epochs(cycle, "mixed")
            harness.publish_pending()  # records are published in batches
            record = collector.records[-1]
            if finished:
                assert cycle.mean_episode_return == pytest.approx(np.mean(finished), rel=1e-12)
                assert record["mean_episode_return"] == pytest.approx(np.mean(finished), rel=1e-12)
            else:
                assert n == 4  # too short for any episode to finish
                assert cycle.mean_episode_return is None
                assert record["mean_episode_return"] is None
        assert any(r["mean_episode_return"] is not None for r in collector.records)
    finally:
        harness.close()
    assert_all_valid(collector.records)


@pytest.mark.parametrize("env_id", ENVS)
def test_dataset_statistics_of_a_record_equal_direct_computations(env_id):
    collector = Collector()
    harness = TrainingHarness(tiny(env_id=env_id), publish=collector.publish)
    try:
        for _ in range(2):
            cycle = harness.capture_rollout(64)
            before = len(collector.records)
            harness.train_epochs(cycle, "mixed")
            harness.publish_pending()  # records are published in batches
            assert len(collector.records) - before == harness.config.update_epochs
            data = cycle.dataset
            expected_ev = 1.0 - np.var(data.returns - data.values) / np.var(data.returns)
            if np.var(data.rewards) == 0.0:
                assert env_id == "CartPole-v1"  # +1 every tick: the correlation is undefined
                expected_corr = None
            else:
                expected_corr = float(np.corrcoef(data.rewards, data.advantages)[0, 1])
            for record in collector.records[before:]:
                assert record["explained_variance"] == pytest.approx(expected_ev, rel=1e-9, abs=1e-12)
                if expected_corr is None:
                    assert record["reward_advantage_corr"] is None
                else:
                    assert record["reward_advantage_corr"] == pytest.approx(expected_corr, rel=1e-9, abs=1e-12)
                assert record["num_samples"] == len(data) == 64 * NUM_ENVS
                assert record["rollout_ticks"] == 64 * NUM_ENVS
    finally:
        harness.close()


# ------------------------------------------------------------------------------ statistics reuse


@pytest.mark.parametrize("env_id", ENVS)
def test_minibatch_statistics_in_a_record_come_from_the_minibatch_results(env_id, monkeypatch):
    collector = Collector()
    harness = TrainingHarness(tiny(env_id=env_id, num_minibatches=4, update_epochs=3, total_steps=128), publish=collector.publish)
    by_epoch: dict[int, list[tuple]] = {}  # epoch -> [(MinibatchResult, minibatch size)]
    original = harness.agent.loss_and_grad

    def recording(obs, actions, *args):
        result = original(obs, actions, *args)
        by_epoch.setdefault(harness.epoch, []).append((result, len(actions)))
        return result

    monkeypatch.setattr(harness.agent, "loss_and_grad", recording)
    try:
        harness.run_ppo()
    finally:
        harness.close()

    records = collector.records
    assert len(records) == 4 * 3
    assert [r["epoch"] for r in records] == sorted(by_epoch) == list(range(12))
    for record in records:
        batch = by_epoch[record["epoch"]]
        results = [r for r, _ in batch]
        entropies = np.array([r.entropy for r in results])
        kls = np.array([r.approx_kl for r in results])
        assert len(results) == record["num_minibatches"] == 4
        assert record["batch_entropy_mean"] == pytest.approx(entropies.mean(), rel=1e-12)
        assert record["batch_entropy_std"] == pytest.approx(np.std(entropies), rel=1e-9, abs=1e-15)
        assert record["kl_divergence"] == pytest.approx(max(0.0, kls.mean()), rel=1e-12, abs=1e-18)
        assert record["kl_divergence_max"] == pytest.approx(max(0.0, kls.max()), rel=1e-12, abs=1e-18)
        assert record["clip_fraction"] == pytest.approx(sum(r.clipped for r in results) / sum(n for _, n in batch), rel=1e-12)
        assert record["grad_norm_max"] == max(r.grad_norm for r in results)
        assert record["policy_loss"] == pytest.approx(np.mean([r.pg_loss for r in results]), rel=1e-12)
        assert record["value_loss"] == pytest.approx(np.mean([r.v_loss for r in results]), rel=1e-12)
    assert_all_valid(records)


def test_target_kl_stops_the_cycle_and_the_record_counts_the_minibatches_run(monkeypatch):
    calls: list[float] = []
    collector = Collector()
    harness = TrainingHarness(tiny(num_minibatches=4, update_epochs=5, target_kl=1e-12), publish=collector.publish)
    original = harness.agent.loss_and_grad

    def recording(*args):
        result = original(*args)
        calls.append(result.approx_kl)
        return result

    monkeypatch.setattr(harness.agent, "loss_and_grad", recording)
    try:
        harness.run_ppo()
    finally:
        harness.close()
    records = collector.records
    assert len(records) == CYCLES  # one (cut short) epoch per cycle
    assert sum(r["num_minibatches"] for r in records) == len(calls)
    assert all(1 <= r["num_minibatches"] < 4 for r in records)
    assert_all_valid(records)


# ------------------------------------------------------------------------------ truncation bootstrap


class CountingEnv(gym.Env):
    """Never terminates; the observation counts ticks since reset, so every state is recognisable."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.obs(self.t), {}

    def step(self, action):
        self.t += 1
        return self.obs(self.t), float(action) + 0.1 * self.t, False, False, {}

    @staticmethod
    def obs(t: int) -> np.ndarray:
        return np.array([t / 5.0, (t / 5.0) ** 2, 1.0], dtype=np.float32)


TRUNCATING_ENV = "PpoTelemetryTruncatingTest-v0"
if TRUNCATING_ENV not in gym.registry:
    gym.register(id=TRUNCATING_ENV, entry_point=CountingEnv, max_episode_steps=5)


def keep_buffers(monkeypatch) -> list[RolloutBuffer]:
    buffers: list[RolloutBuffer] = []

    class KeptBuffer(RolloutBuffer):
        def __post_init__(self) -> None:
            super().__post_init__()
            buffers.append(self)

    monkeypatch.setattr(harness_module, "RolloutBuffer", KeptBuffer)
    return buffers


def test_no_truncation_leaves_the_bootstrap_values_zero(monkeypatch):
    buffers = keep_buffers(monkeypatch)
    harness = TrainingHarness(tiny(num_steps=32))  # CartPole-v1 truncates only at 500 ticks
    try:
        for _ in range(4):
            harness.capture_rollout()
    finally:
        harness.close()
    assert len(buffers) == 4
    assert any(b.terminated.any() for b in buffers)
    for buffer in buffers:
        assert not buffer.truncated.any()
        assert not buffer.truncation_values.any()


def test_truncated_episodes_bootstrap_from_the_value_of_their_final_observation(monkeypatch):
    buffers = keep_buffers(monkeypatch)
    harness = TrainingHarness(tiny(env_id=TRUNCATING_ENV, num_steps=12))
    steps = record_env_steps(harness, monkeypatch)
    try:
        cycle = harness.capture_rollout()
    finally:
        harness.close()
    (buffer,) = buffers
    cut_at = [4, 9]  # the 5th tick of each episode
    expected_truncated = np.zeros((12, NUM_ENVS))
    expected_truncated[cut_at] = 1.0
    np.testing.assert_array_equal(buffer.truncated, expected_truncated)
    assert not buffer.terminated.any()

    final_obs = CountingEnv.obs(5).astype(np.float64)
    for t in cut_at:
        infos = steps[t][3]
        for e in range(NUM_ENVS):
            np.testing.assert_array_equal(infos["final_obs"][e], CountingEnv.obs(5))  # what the harness read
        bootstrap = harness.agent.value(np.stack([final_obs] * NUM_ENVS))
        np.testing.assert_allclose(buffer.truncation_values[t], bootstrap, rtol=1e-12)
        # same-step autoreset: the next stored observation is already the next episode's first
        np.testing.assert_array_equal(buffer.obs[t + 1], np.stack([CountingEnv.obs(0)] * NUM_ENVS))
    others = np.ones(12, dtype=bool)
    others[cut_at] = False
    assert not buffer.truncation_values[others].any()

    # the truncated step's advantage is its one-step TD error with that bootstrap (its episode ends there)
    gamma = harness.config.gamma
    for t in cut_at:
        for e in range(NUM_ENVS):
            i = t * NUM_ENVS + e
            expected = buffer.rewards[t, e] + gamma * buffer.truncation_values[t, e] - buffer.values[t, e]
            assert cycle.dataset.advantages[i] == pytest.approx(expected, rel=1e-12)
    returns = [sum(steps[k][0][e] for k in range(start, start + 5)) for start in (0, 5) for e in range(NUM_ENVS)]
    assert sorted(cycle.meta.episode_returns) == pytest.approx(sorted(returns))
    assert cycle.meta.episode_lengths == (5, 5, 5, 5)


# --------------------------------------------------------------------------------------- stopping


def stoppable(data_mode: str, directory: Path, publish) -> TrainingHarness:
    return TrainingHarness(
        tiny(data_mode=data_mode, update_epochs=4, replay_manifest=directory if data_mode == "replay" else None),
        publish=publish,
    )


def count_minibatches(harness: TrainingHarness, monkeypatch, on_call=None) -> list[int]:
    """Epoch of every minibatch update run; `on_call(n)` runs before the n-th (from 1)."""
    epochs: list[int] = []
    original = harness.agent.loss_and_grad

    def counting(*args):
        if on_call is not None:
            on_call(len(epochs) + 1)
        epochs.append(harness.epoch)
        return original(*args)

    monkeypatch.setattr(harness.agent, "loss_and_grad", counting)
    return epochs


@pytest.mark.parametrize("data_mode", ["mixed", "rollout", "replay"])
def test_stop_requested_during_an_epoch_finishes_that_epoch_publishes_it_and_stops(data_mode, recording, monkeypatch):
    # as the CLI's Ctrl-C handler does: the flag is set while a minibatch runs
    directory, _, _ = recording
    published: list[dict] = []
    harness = stoppable(data_mode, directory, published.append)

    def request_stop(call):
        if call == 1:
            harness.stop_requested = True

    epochs = count_minibatches(harness, monkeypatch, request_stop)
    try:
        harness.run_ppo()
    finally:
        harness.close()
    assert epochs == [0, 0]  # both minibatches of the current epoch, then nothing
    assert [r["epoch"] for r in published] == [0]
    assert harness.epoch == 1
    if data_mode == "mixed":
        assert harness.global_step == PER_CYCLE  # no further capture either


@pytest.mark.parametrize("data_mode", ["mixed", "rollout", "replay"])
def test_stop_requested_from_the_publish_callback_stops_training(data_mode, recording, monkeypatch):
    directory, _, _ = recording
    published: list[dict] = []
    trained_after_stop: list[int] = []

    def publish(record):
        published.append(record)
        harness.stop_requested = True

    harness = stoppable(data_mode, directory, publish)
    epochs = count_minibatches(
        harness, monkeypatch, lambda call: trained_after_stop.append(call) if harness.stop_requested else None
    )
    try:
        harness.run_ppo()
    finally:
        harness.close()
    assert trained_after_stop == []  # no minibatch ran once the callback asked to stop
    assert published  # and every epoch that ran was published, in order
    assert [r["epoch"] for r in published] == sorted(set(epochs)) == list(range(harness.epoch))


@pytest.mark.parametrize("data_mode", ["mixed", "rollout"])
def test_stop_requested_from_the_publish_callback_without_publish_delay_stops_after_the_current_epoch(data_mode, recording, monkeypatch):
    directory, _, _ = recording
    published: list[dict] = []

    def publish(record):
        published.append(record)
        harness.stop_requested = True

    harness = stoppable(data_mode, directory, publish)
    harness.max_publish_delay = 0.0  # publish each record as soon as its epoch ends
    epochs = count_minibatches(harness, monkeypatch)
    try:
        harness.run_ppo()
    finally:
        harness.close()
    assert [r["epoch"] for r in published] == [0]
    assert epochs == [0, 0]
    assert harness.epoch == 1


# ------------------------------------------------------------------------------------ NDJSON sink


def test_records_through_the_ndjson_sink_have_contiguous_offsets_and_validate(tmp_path):
    stream = tmp_path / "stream"
    sink = NdjsonSink(stream, max_segment_bytes=4000)  # several segments
    harness = TrainingHarness(tiny(env_id="Conflict-v0" if CONFLICT_REGISTERED else "CartPole-v1"), publish=sink.publish)
    try:
        harness.run_ppo()
    finally:
        harness.close()
        sink.close()
    lines = list(iter_segment_lines(stream))
    assert len(lines) == CYCLES * UPDATE_EPOCHS
    assert len(list_segments(stream)) > 1
    records = [json.loads(line) for line in lines]
    assert [r["log_stream_offset"] for r in records] == list(range(len(records)))
    assert [r["epoch"] for r in records] == list(range(len(records)))
    validator = Validator()
    for line in lines:
        verdict = validator.validate_line(line)
        assert verdict.status == "valid", [e.to_json_dict() for e in verdict.errors]
        assert verdict.warnings == []
    assert validator.counts == {"valid": len(lines), "invalid": 0, "duplicate": 0}
    assert all(math.isfinite(r["policy_loss"]) for r in records)


def test_batches_cut_mid_cycle_give_the_records_of_one_batch_at_the_end():
    # a batch due mid-cycle packs the epochs so far in a block of their own (the arrays repeated)
    def records(delay: float) -> list[dict]:
        published: list[dict] = []
        harness = TrainingHarness(tiny(), publish=published.append)
        harness.max_publish_delay = delay
        try:
            harness.run_ppo()
        finally:
            harness.close()
        return without_timing(published)

    every_epoch, at_the_end = records(0.0), records(3600.0)
    assert len(every_epoch) == CYCLES * UPDATE_EPOCHS
    assert every_epoch == at_the_end
    assert len({(r["cycle_id"], r["explained_variance"]) for r in every_epoch}) == CYCLES
