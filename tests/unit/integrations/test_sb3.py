"""`ppo_telemetry.integrations.sb3.TelemetryCallback` against real stable-baselines3 and PyTorch on CPU.

The values SB3 computes are captured independently of the callback: `SB3Values` reads them from
`PPO.train()`'s own frame (a trace function on that frame only: its per-minibatch lists `pg_losses`,
`value_losses`, `entropy_losses`, `clip_fractions`, each epoch's `approx_kl_divs`, and whether it
stopped at the target KL), the rollout buffer as `train()` starts, the norms `clip_grad_norm_` returns
(wrapped in `torch.nn.utils`, where `train()` looks it up, before the callback wraps it in turn), and
the episodes from the `Monitor` files.
Means are compared to 1e-12 (float64 sums of the same float32 values), maxima exactly.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env

from avro_schemas.errors import TelemetryError
from avro_schemas.ndjson import iter_segment_lines
from consumers.validator import Validator
from ppo_telemetry.integrations.sb3 import TelemetryCallback, TelemetryCallbackError

CLOSE = {"rel": 1e-12, "abs": 1e-15}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """One thread per run: the machine's cores are shared, and SB3 on tiny networks gains nothing from more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------- SB3's own values


@dataclass
class TrainCall:
    """What one `PPO.train()` computed, read from its frame, and the data it trained on."""

    num_timesteps: int
    rewards: np.ndarray
    advantages: np.ndarray
    epoch_kls: list[list[Any]] = field(default_factory=list)
    """Each epoch's `approx_kl_divs` (per minibatch evaluated)."""
    grad_norms: list[float] = field(default_factory=list)
    """What `clip_grad_norm_` returned, per minibatch trained on."""
    locals: dict[str, Any] = field(default_factory=dict)
    """`train()`'s locals as it returned."""

    def epochs(self) -> Iterator[dict[str, Any]]:
        """Per epoch: the per-minibatch values SB3 computed and the norms of the minibatches trained on."""
        start, norms = 0, iter(self.grad_norms)
        for index, kls in enumerate(self.epoch_kls):
            count = len(kls)
            stopped = index == len(self.epoch_kls) - 1 and not self.locals["continue_training"]
            window = slice(start, start + count)
            yield {
                "policy_losses": self.locals["pg_losses"][window],
                "value_losses": self.locals["value_losses"][window],
                "entropies": [-loss for loss in self.locals["entropy_losses"][window]],
                "clip_fractions": self.locals["clip_fractions"][window],
                "kls": [float(kl) for kl in kls],
                "grad_norms": [next(norms) for _ in range(count - 1 if stopped else count)],
                "stopped": stopped,
            }
            start += count
        assert next(norms, None) is None, "a clip_grad_norm_ call outside the epochs"


class SB3Values:
    """Captures what every `PPO.train()` call computes (see the module docstring)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[TrainCall] = []
        self._previous_trace: Any = None
        clip_grad_norm = torch.nn.utils.clip_grad_norm_

        def recording_clip_grad_norm(*args: Any, **kwargs: Any) -> torch.Tensor:
            norm = clip_grad_norm(*args, **kwargs)
            self.calls[-1].grad_norms.append(float(norm))
            return norm

        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip_grad_norm)

    def __enter__(self) -> SB3Values:
        self._previous_trace = sys.gettrace()  # a coverage tool's, say: put back after
        sys.settrace(self._trace_calls)
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.settrace(self._previous_trace)

    def _trace_calls(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code is PPO.train.__code__:
            model = frame.f_locals["self"]
            buffer = model.rollout_buffer
            self.calls.append(TrainCall(model.num_timesteps, buffer.rewards.copy(), buffer.advantages.copy()))
            return self._trace_train
        return None

    def _trace_train(self, frame: Any, event: str, arg: Any) -> Any:
        call = self.calls[-1]
        kls = frame.f_locals.get("approx_kl_divs")
        if kls is not None and (not call.epoch_kls or call.epoch_kls[-1] is not kls):
            call.epoch_kls.append(kls)
        if event == "return":
            call.locals = dict(frame.f_locals)
            call.locals["learning_rate"] = call.locals["self"].policy.optimizer.param_groups[0]["lr"]
        return self._trace_train


def episode_returns_by_rollout(monitor_dir: Path, steps_per_env: int) -> dict[int, list[float]]:
    """Returns of the episodes each rollout (1, 2, ...) saw finish, from the Monitor files (one per env)."""
    by_rollout: dict[int, list[float]] = {}
    for path in sorted(monitor_dir.glob("*.monitor.csv")):
        with path.open() as lines:
            next(lines)  # the Monitor's JSON header
            env_steps = 0
            for row in csv.DictReader(lines):
                env_steps += int(row["l"])
                by_rollout.setdefault(math.ceil(env_steps / steps_per_env), []).append(float(row["r"]))
    return by_rollout


# ----------------------------------------------------------------------------------------- helpers


def read_stream(directory: Path) -> list[dict[str, Any]]:
    """The records of an NDJSON stream, after checking each is valid and the offsets run 0, 1, ..."""
    lines = list(iter_segment_lines(directory))
    validator = Validator()
    for line in lines:
        verdict = validator.validate_line(line)
        assert verdict.status == "valid", (line, verdict)
    records = [json.loads(line) for line in lines]
    assert [record["log_stream_offset"] for record in records] == list(range(len(records)))
    return records


def train_with_capture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env_id: str, n_envs: int, total_timesteps: int, **ppo: Any
) -> tuple[PPO, list[dict[str, Any]], list[TrainCall], Path]:
    monitor_dir = tmp_path / "monitor"
    env = make_vec_env(env_id, n_envs=n_envs, seed=5, monitor_dir=str(monitor_dir))
    model = PPO("MlpPolicy", env, seed=5, device="cpu", **ppo)
    with SB3Values(monkeypatch) as sb3:
        model.learn(total_timesteps, callback=TelemetryCallback(ndjson_dir=tmp_path / "telemetry", run_id="sb3-test"))
    return model, read_stream(tmp_path / "telemetry"), sb3.calls, monitor_dir


def assert_records_equal_sb3(model: PPO, records: list[dict[str, Any]], calls: list[TrainCall], monitor_dir: Path) -> None:
    """Each record against the values SB3 computed for the same epoch's minibatches."""
    samples = model.n_steps * model.n_envs
    episodes = episode_returns_by_rollout(monitor_dir, model.n_steps)
    expected = [(cycle, call, epoch) for cycle, call in enumerate(calls, 1) for epoch in call.epochs()]
    assert len(records) == len(expected)
    for index, (record, (cycle, call, epoch)) in enumerate(zip(records, expected)):
        count = len(epoch["kls"])
        assert (record["epoch"], record["cycle_id"], record["data_mode"]) == (index, cycle, "mixed")
        assert record["global_step"] == call.num_timesteps == cycle * samples
        assert record["num_samples"] == record["rollout_ticks"] == samples
        assert record["num_minibatches"] == count
        assert record["learning_rate"] == call.locals["learning_rate"]
        assert record["policy_loss"] == pytest.approx(sum(epoch["policy_losses"]) / count, **CLOSE)
        assert record["value_loss"] == pytest.approx(sum(epoch["value_losses"]) / count, **CLOSE)
        assert record["kl_divergence"] == pytest.approx(max(sum(epoch["kls"]) / count, 0.0), **CLOSE)
        assert record["kl_divergence_max"] == max(max(epoch["kls"]), 0.0)
        sizes = [min(model.batch_size, samples - index * model.batch_size) for index in range(count)]
        clipped = sum(fraction * size for fraction, size in zip(epoch["clip_fractions"], sizes))
        assert record["clip_fraction"] == pytest.approx(clipped / sum(sizes), **CLOSE)  # a share of samples
        assert record["batch_entropy_mean"] == pytest.approx(statistics.fmean(epoch["entropies"]), **CLOSE)
        assert record["batch_entropy_std"] == pytest.approx(statistics.pstdev(epoch["entropies"]), rel=1e-9, abs=1e-12)
        assert record["grad_norm_max"] == max(epoch["grad_norms"], default=0.0)
        assert record["explained_variance"] == pytest.approx(float(call.locals["explained_var"]), abs=1e-5)
        rewards, advantages = call.rewards.ravel(), call.advantages.ravel()
        if np.var(rewards) == 0.0:  # CartPole pays 1 a step: no correlation (SPEC §1: null)
            assert record["reward_advantage_corr"] is None
        else:
            correlation = np.corrcoef(rewards, advantages)[0, 1]
            assert record["reward_advantage_corr"] == pytest.approx(correlation, rel=1e-9, abs=1e-12)
        finished = episodes.get(cycle)
        assert record["mean_episode_return"] == (None if not finished else pytest.approx(statistics.fmean(finished), **CLOSE))


# ------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    ("env_id", "n_envs", "ppo"),
    [
        pytest.param("CartPole-v1", 2, {}, id="discrete-2-envs"),
        pytest.param("Pendulum-v1", 2, {"clip_range_vf": 0.2}, id="continuous-2-envs-value-clipping"),
        pytest.param("Pendulum-v1", 1, {"use_sde": True, "policy_kwargs": {"squash_output": True}}, id="continuous-no-entropy"),
    ],
)
def test_one_valid_record_per_epoch_with_the_values_sb3_computed(tmp_path, monkeypatch, env_id, n_envs, ppo):
    model, records, calls, monitor_dir = train_with_capture(
        tmp_path, monkeypatch, env_id, n_envs, 2048, n_steps=256 // n_envs, batch_size=64, n_epochs=3, **ppo
    )
    assert len(calls) == 8  # 2048 steps / 256 per rollout
    assert len(records) == 8 * 3  # n_epochs per rollout
    assert all(len(call.epoch_kls) == 3 and len(call.grad_norms) == 3 * 4 for call in calls)
    assert_records_equal_sb3(model, records, calls, monitor_dir)
    assert {record["num_minibatches"] for record in records} == {4}
    assert any(norm > model.max_grad_norm for call in calls for norm in call.grad_norms)  # clipped: pre-clip norms
    assert any(record["mean_episode_return"] is not None for record in records)


@pytest.mark.filterwarnings("ignore:You have specified a mini-batch size of 50:UserWarning")  # SB3 says so too
def test_minibatches_of_unequal_sizes_down_to_one_sample(tmp_path, monkeypatch):
    """201 samples in minibatches of 50: four of 50 and one of 1 (not normalised, as SB3 skips it); the
    clip fraction is the share of the epoch's samples, not the mean of the minibatches' shares."""
    model, records, calls, monitor_dir = train_with_capture(
        tmp_path, monkeypatch, "CartPole-v1", 1, 4 * 201, n_steps=201, batch_size=50, n_epochs=2
    )
    assert len(records) == 4 * 2 and {record["num_minibatches"] for record in records} == {5}
    assert_records_equal_sb3(model, records, calls, monitor_dir)


def test_no_analytic_entropy_is_estimated_as_sb3_does(tmp_path, monkeypatch):
    """gSDE with a squashing bijector has no entropy: SB3 takes -mean(log_prob), and so does the record."""
    model, records, calls, _ = train_with_capture(
        tmp_path, monkeypatch, "Pendulum-v1", 1, 256, n_steps=256, batch_size=64, n_epochs=1,
        use_sde=True, policy_kwargs={"squash_output": True},
    )
    assert model.policy.action_dist.bijector is not None
    [record] = records
    [epoch] = calls[0].epochs()
    assert record["batch_entropy_mean"] == pytest.approx(statistics.fmean(epoch["entropies"]), **CLOSE)


@pytest.mark.parametrize("batch_size", [32, 256], ids=["minibatches-of-32", "one-minibatch-per-epoch"])
def test_a_target_kl_stop_ends_the_update_and_its_epoch_counts_the_stopping_minibatch(tmp_path, monkeypatch, batch_size):
    """With one minibatch per epoch, the stop comes at an epoch's first minibatch: a record of that
    minibatch alone, with no gradient (grad_norm_max 0)."""
    target_kl = 0.002
    model, records, calls, monitor_dir = train_with_capture(
        tmp_path, monkeypatch, "CartPole-v1", 1, 2048, n_steps=256, batch_size=batch_size, n_epochs=6,
        learning_rate=3e-3, target_kl=target_kl,
    )
    stopped = [call for call in calls if not call.locals["continue_training"]]
    assert stopped, "no update reached the target KL: the test needs a smaller target_kl"
    assert len(records) == sum(len(call.epoch_kls) for call in calls) < len(calls) * 6
    assert_records_equal_sb3(model, records, calls, monitor_dir)
    by_cycle: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        by_cycle.setdefault(record["cycle_id"], []).append(record)
    for cycle, call in enumerate(calls, 1):
        last = by_cycle[cycle][-1]
        if call.locals["continue_training"]:
            assert len(by_cycle[cycle]) == 6
            continue
        # the KL that stopped the update is the epoch's maximum, above SB3's threshold; not trained on
        assert last["kl_divergence_max"] == float(call.epoch_kls[-1][-1]) > 1.5 * target_kl
        assert len(call.grad_norms) == sum(len(kls) for kls in call.epoch_kls) - 1
        if batch_size == 256:
            assert (last["num_minibatches"], last["grad_norm_max"]) == (1, 0.0)


def test_the_callback_does_not_change_what_ppo_learns(tmp_path):
    def learn(callback: TelemetryCallback | None) -> dict[str, torch.Tensor]:
        model = PPO("MlpPolicy", "Pendulum-v1", n_steps=128, batch_size=32, n_epochs=2, seed=11, device="cpu")
        model.learn(512, callback=callback)
        return model.policy.state_dict()

    with_callback = learn(TelemetryCallback(ndjson_dir=tmp_path / "telemetry"))
    without = learn(None)
    assert with_callback.keys() == without.keys()
    assert all(torch.equal(with_callback[name], without[name]) for name in without)
    assert len(read_stream(tmp_path / "telemetry")) == 4 * 2


def assert_unwrapped(model: PPO, clip_grad_norm: Any) -> None:
    assert "evaluate_actions" not in vars(model.policy) and "get" not in vars(model.rollout_buffer)
    assert torch.nn.utils.clip_grad_norm_ is clip_grad_norm


def test_hooks_come_off_and_a_reused_callback_goes_on_with_the_run(tmp_path):
    clip_grad_norm = torch.nn.utils.clip_grad_norm_
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, seed=3, device="cpu")
    callback = TelemetryCallback(ndjson_dir=tmp_path / "telemetry")
    model.learn(128, callback=callback)
    assert_unwrapped(model, clip_grad_norm)
    model.learn(128, callback=callback, reset_num_timesteps=False)
    records = read_stream(tmp_path / "telemetry")
    assert [record["epoch"] for record in records] == list(range(8))
    assert [record["cycle_id"] for record in records] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert [record["global_step"] for record in records] == [64, 64, 128, 128, 192, 192, 256, 256]
    assert {record["run_id"] for record in records} == {callback.run_id}
    assert re.fullmatch(r"sb3-CartPole-v1-3-\d{8}T\d{6}\.\d{6}Z", callback.run_id)
    assert callback.records == 8 and callback.recorder is None


def test_a_learn_ended_by_an_exception_is_closed_by_the_with_block(tmp_path):
    clip_grad_norm = torch.nn.utils.clip_grad_norm_

    class StopAtStep(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps > 100:
                raise RuntimeError("stopped by the test")
            return True

    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, device="cpu")
    with pytest.raises(RuntimeError, match="stopped by the test"):
        with TelemetryCallback(ndjson_dir=tmp_path / "telemetry") as callback:
            model.learn(1000, callback=CallbackList([callback, StopAtStep()]))
    assert_unwrapped(model, clip_grad_norm)
    records = read_stream(tmp_path / "telemetry")
    assert [record["cycle_id"] for record in records] == [1, 1]
    assert re.fullmatch(r"sb3-CartPole-v1-noseed-.+", records[0]["run_id"])


def test_a_train_that_clips_unseen_is_warned_of_and_records_norm_zero(tmp_path):
    """A train() whose clip_grad_norm_ is not torch.nn.utils' (here: the module attribute set back to the
    function after the callback wrapped it) gives the callback no norm: one warning, and 0 in the records."""
    clip_grad_norm = torch.nn.utils.clip_grad_norm_

    class ClipUnseen(BaseCallback):
        def _on_training_start(self) -> None:
            torch.nn.utils.clip_grad_norm_ = clip_grad_norm

        def _on_step(self) -> bool:
            return True

    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, seed=1, device="cpu")
    with pytest.warns(UserWarning, match="without torch.nn.utils.clip_grad_norm_ clipping"):
        model.learn(128, callback=CallbackList([TelemetryCallback(ndjson_dir=tmp_path / "telemetry"), ClipUnseen()]))
    assert [record["grad_norm_max"] for record in read_stream(tmp_path / "telemetry")] == [0.0] * 4
    assert torch.nn.utils.clip_grad_norm_ is clip_grad_norm  # not ours any more: left as it is


def test_an_update_at_learning_rate_zero_is_left_out_with_a_warning(tmp_path):
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=1, seed=1, device="cpu",
                learning_rate=lambda progress_remaining: 1e-3 * progress_remaining)
    with pytest.warns(UserWarning, match="learning rate 0.0; a record needs a rate > 0"):
        model.learn(256, callback=TelemetryCallback(ndjson_dir=tmp_path / "telemetry"))
    records = read_stream(tmp_path / "telemetry")
    assert [record["cycle_id"] for record in records] == [1, 2, 3]
    assert [record["learning_rate"] for record in records] == pytest.approx([0.75e-3, 0.5e-3, 0.25e-3], rel=1e-12)


# ------------------------------------------------------------------------------------- bad input


def test_a_callback_without_a_sink_is_refused():
    with pytest.raises(TelemetryCallbackError, match="^a TelemetryCallback needs somewhere to publish"):
        TelemetryCallback()


def test_a_bad_run_id_is_refused(tmp_path):
    with pytest.raises(TelemetryCallbackError, match=r"^run_id must be 1-128 chars of \[A-Za-z0-9._:-\], got 'a b'$"):
        TelemetryCallback(ndjson_dir=tmp_path, run_id="a b")


def test_a_model_other_than_ppo_is_refused_in_one_line(tmp_path):
    model = A2C("MlpPolicy", "CartPole-v1", n_steps=8, device="cpu")
    with pytest.raises(TelemetryCallbackError) as caught:
        model.learn(16, callback=TelemetryCallback(ndjson_dir=tmp_path / "telemetry"))
    assert str(caught.value) == "TelemetryCallback works with PPO only (stable_baselines3.PPO or a subclass), got A2C"
    assert not (tmp_path / "telemetry").exists()


def test_a_directory_that_cannot_hold_a_stream_fails_learn_in_one_line_and_unwraps_the_model(tmp_path):
    # the publisher starts beside the first rollout: its failure stops learn at the next poll (or at the
    # first hand-over of records, if the publisher answers later than that)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, device="cpu")
    with pytest.raises(TelemetryError) as caught:
        model.learn(64 * 64, callback=TelemetryCallback(ndjson_dir=blocker))
    assert "\n" not in str(caught.value) and "file" in str(caught.value)
    assert_unwrapped(model, torch.nn.utils.clip_grad.clip_grad_norm_)
