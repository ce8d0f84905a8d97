"""Recorded rollouts: `--record-rollouts DIR` writes them, `--replay MANIFEST` trains from them.

A recording is a directory with `manifest.json` and one `.npz` per capture. The manifest is versioned:

    {"format": "ppo-telemetry.rollouts", "version": 1, "env_id": "Conflict-v0",
     "obs_shape": [8], "n_actions": 3,
     "rollouts": [{"file": "rollout-000001.npz", "cycle_id": 1, "samples": 2048, "sha256": "..."}]}

Each `.npz` holds the raw capture (observations, actions, behaviour log-probabilities, values, rewards,
terminated/truncated flags, truncation bootstrap values, the last values and the finished episodes), so a
replay rebuilds exactly the dataset that was captured. The manifest is rewritten atomically after each
capture, so a recording cut short is still a valid, shorter recording.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avro_schemas.errors import TelemetryError

from .rollout import Dataset, DatasetMeta, RolloutBuffer

__all__ = ["ReplayError", "RolloutRecorder", "RecordedRollout", "Recording", "load_manifest", "MANIFEST_NAME"]

MANIFEST_NAME = "manifest.json"
FORMAT = "ppo-telemetry.rollouts"
VERSION = 1
_ARRAYS = ("obs", "actions", "logprobs", "values", "rewards", "terminated", "truncated", "truncation_values")


class ReplayError(TelemetryError):
    """A replay manifest or rollout file that is missing, corrupt or of another format."""


class RolloutRecorder:
    """Writes each capture of a run into `directory` and keeps the manifest current."""

    def __init__(self, directory: Path, env_id: str, obs_shape: tuple[int, ...], n_actions: int) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReplayError(f"cannot create {self.directory}: {exc.strerror}") from exc
        self.manifest = {
            "format": FORMAT,
            "version": VERSION,
            "env_id": env_id,
            "obs_shape": list(obs_shape),
            "n_actions": n_actions,
            "rollouts": [],
        }

    def record(self, buffer: RolloutBuffer, last_values: np.ndarray, cycle_id: int) -> Path:
        """Save one full capture and add it to the manifest."""
        name = f"rollout-{cycle_id:06d}.npz"
        path = self.directory / name
        arrays = {key: getattr(buffer, key) for key in _ARRAYS}
        try:
            with open(path, "wb") as handle:
                np.savez(
                    handle,
                    last_values=last_values,
                    episode_returns=np.asarray(buffer.episode_returns, dtype=np.float64),
                    episode_lengths=np.asarray(buffer.episode_lengths, dtype=np.int64),
                    **arrays,
                )
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            self.manifest["rollouts"].append(
                {"file": name, "cycle_id": cycle_id, "samples": buffer.num_steps * buffer.num_envs, "sha256": digest}
            )
            tmp = self.directory / (MANIFEST_NAME + ".tmp")
            tmp.write_text(json.dumps(self.manifest, indent=1))
            os.replace(tmp, self.directory / MANIFEST_NAME)
        except OSError as exc:
            raise ReplayError(f"cannot write rollout {path}: {exc.strerror}") from exc
        return path


@dataclass(frozen=True)
class RecordedRollout:
    """One recorded capture, loaded."""

    buffer: RolloutBuffer
    last_values: np.ndarray

    def build_dataset(self, gamma: float, gae_lambda: float) -> tuple[Dataset, DatasetMeta]:
        """The dataset this capture feeds (GAE recomputed exactly as at capture time)."""
        return self.buffer.build_dataset(gamma, gae_lambda, self.last_values)


@dataclass(frozen=True)
class Recording:
    """A checked manifest; rollouts are loaded (and verified) one at a time."""

    path: Path
    env_id: str
    obs_shape: tuple[int, ...]
    n_actions: int
    entries: tuple[dict, ...]

    def __len__(self) -> int:
        return len(self.entries)

    def iter_rollouts(self) -> Iterator[RecordedRollout]:
        """Each recorded capture in order; a missing, altered or malformed file is a `ReplayError`."""
        for entry in self.entries:
            yield self._load(entry)

    def _load(self, entry: dict) -> RecordedRollout:
        path = self.path.parent / entry["file"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ReplayError(f"replay file {path}: {exc.strerror}") from exc
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ReplayError(f"replay file {path} does not match its sha256 in the manifest")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in (*_ARRAYS, "last_values", "episode_returns", "episode_lengths")}
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ReplayError(f"replay file {path} is not a rollout archive: {exc or type(exc).__name__}") from exc
        rewards = arrays["rewards"]
        steps, envs = rewards.shape if rewards.ndim == 2 else (0, 0)
        expected = {key: (steps, envs) for key in _ARRAYS}
        expected["obs"] = (steps, envs, *self.obs_shape)
        expected["last_values"] = (envs,)
        shapes_ok = steps * envs == entry["samples"] and steps > 0 and all(
            arrays[key].shape == shape for key, shape in expected.items()
        )
        if not shapes_ok:
            raise ReplayError(f"replay file {path} has array shapes that disagree with the manifest")
        actions = arrays["actions"]
        if actions.dtype.kind not in "iu" or actions.min() < 0 or actions.max() >= self.n_actions:
            raise ReplayError(f"replay file {path} holds actions outside 0..{self.n_actions - 1}")
        for key in ("obs", "logprobs", "values", "rewards", "truncation_values", "last_values", "episode_returns"):
            if not np.all(np.isfinite(arrays[key])):
                raise ReplayError(f"replay file {path}: {key} holds NaN or Infinity")
        buffer = RolloutBuffer(steps, envs, self.obs_shape)
        for key in _ARRAYS:
            getattr(buffer, key)[...] = arrays[key]
        buffer.step = steps
        buffer.episode_returns = [float(x) for x in arrays["episode_returns"]]
        buffer.episode_lengths = [int(x) for x in arrays["episode_lengths"]]
        return RecordedRollout(buffer, arrays["last_values"])


def load_manifest(path: Path) -> Recording:
    """Read and check a manifest (a file, or the directory holding `manifest.json`)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReplayError(f"replay manifest {path}: {exc.strerror}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReplayError(f"replay manifest {path} is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ReplayError(f"replay manifest {path} is not a {FORMAT} manifest")
    if doc.get("version") != VERSION:
        raise ReplayError(f"replay manifest {path} has version {doc.get('version')!r}; this build reads {VERSION}")
    try:
        obs_shape = tuple(int(x) for x in doc["obs_shape"])
        n_actions = int(doc["n_actions"])
        env_id = str(doc["env_id"])
        entries = tuple(doc["rollouts"])
        for entry in entries:
            if not (isinstance(entry["file"], str) and "/" not in entry["file"] and isinstance(entry["sha256"], str)):
                raise ValueError(f"bad rollout entry {entry!r}")
            int(entry["samples"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReplayError(f"replay manifest {path} is malformed: {exc}") from exc
    if not entries:
        raise ReplayError(f"replay manifest {path} lists no rollouts")
    return Recording(path, env_id, obs_shape, n_actions, entries)
