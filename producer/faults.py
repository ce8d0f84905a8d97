"""Fault injection (SPEC §8): `train --fault NAME@STEP[:VALUE]` breaks the training itself, from STEP on.

Each fault is a real change to what PPO does — the optimizer's step size, the loss, the rewards the
advantages are computed from, the value network — never an edit of the records: the records go on
reporting what the trainer did, so an alert has to notice the consequences as it would in a real run.

When a fault is active: a fault is active for every cycle whose training starts at `global_step >= STEP`,
`global_step` being the run's environment ticks once the cycle's capture is done (the `global_step` the
cycle's records carry). So the records with `global_step >= STEP` are exactly the ones a fault changed.
The reward faults change the rewards of that cycle's whole capture before GAE (its first ticks may lie
a little before STEP: a dataset is trained on as a whole). `first_cycle_id` is that first cycle's id.
Once active a fault stays active to the end of the run; `value_reset` acts once, at its first cycle.

`FaultSchedule` holds a run's faults and turns each training knob into the value in use; the harness
asks it once per cycle. Its random draws (reward noise, the re-initialised critic) come from a
generator of their own, seeded from the run seed, so a run is bit-identical to the same run without
faults up to the first affected cycle.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from avro_schemas.errors import TelemetryError

from .ppo import ActorCritic, Adam, _orthogonal
from .rollout import Dataset

__all__ = [
    "FAULTS_FILE",
    "FAULT_DEFAULTS",
    "Fault",
    "FaultError",
    "FaultSchedule",
    "check_fault_steps",
    "parse_fault",
    "reinitialise_critic",
    "write_faults_file",
]


class FaultError(TelemetryError):
    """A `--fault` that cannot be injected: unknown name, bad VALUE or STEP, VALUE where none is taken."""


FAULT_DEFAULTS: dict[str, float | None] = {
    "lr_spike": 50.0,
    "clip_off": 1000.0,
    "negative_entropy_bonus": 0.5,
    "reward_scale": 1000.0,
    "advantage_sign": None,
    "value_reset": None,
    "reward_noise": 1.0,
    "grad_clip_off": 10.0,
}
"""Every fault of SPEC §8 and its default VALUE (None: the fault takes no VALUE)."""

# Which VALUEs make sense: a factor of the learning rate, a clip range and a noise std must be > 0 (the
# records' learning_rate must stay > 0); an entropy coefficient of -VALUE is a fault only for VALUE > 0;
# a reward scale may be negative (a sign bug of the rewards) but not 0 (no rewards at all is another fault).
_VALUE_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr_spike": (lambda value: value > 0, "> 0"),
    "clip_off": (lambda value: value > 0, "> 0"),
    "negative_entropy_bonus": (lambda value: value > 0, "> 0"),
    "reward_scale": (lambda value: value != 0, "non-zero"),
    "reward_noise": (lambda value: value > 0, "> 0"),
    "grad_clip_off": (lambda value: value > 0, "> 0"),
}

FAULTS_FILE = "faults.json"
"""The name of the file, beside a run's NDJSON segments, that lists the faults injected."""

_FAULT_RE = re.compile(r"^(?P<name>[^@:]*)@(?P<step>[^:]*)(?::(?P<value>.*))?$")
_NOISE_SEED_TAG = 0x0FA017  # the fault generator's stream, apart from the run's own generator


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault: its SPEC §8 name, the environment step it starts from, its VALUE (None when
    the fault takes none)."""

    name: str
    step: int
    value: float | None

    def __str__(self) -> str:
        return f"{self.name}@{self.step}" + ("" if self.value is None else f":{self.value:g}")


def parse_fault(text: str) -> Fault:
    """`NAME@STEP[:VALUE]` as a `Fault`, VALUE defaulting to the fault's own (SPEC §8 table)."""
    match = _FAULT_RE.match(text.strip())
    if match is None:
        raise FaultError(f"a fault is NAME@STEP[:VALUE], got {text!r}")
    name, step_text, value_text = match["name"], match["step"], match["value"]
    if name not in FAULT_DEFAULTS:
        raise FaultError(f"unknown fault {name!r} (one of {', '.join(FAULT_DEFAULTS)})")
    try:
        step = int(step_text)
    except ValueError:
        raise FaultError(f"{name}: STEP must be an integer environment step, got {step_text!r}") from None
    if step < 0:
        raise FaultError(f"{name}: STEP must be >= 0, got {step}")
    default = FAULT_DEFAULTS[name]
    if value_text is None:
        return Fault(name, step, default)
    if default is None:
        raise FaultError(f"{name} takes no VALUE, got {value_text!r}")
    try:
        value = float(value_text)
    except ValueError:
        raise FaultError(f"{name}: VALUE must be a number, got {value_text!r}") from None
    accepts, rule = _VALUE_RULES[name]
    if not math.isfinite(value) or not accepts(value):
        raise FaultError(f"{name}: VALUE must be finite and {rule}, got {value_text!r}")
    return Fault(name, step, value)


def check_fault_steps(faults: Iterable[Fault], total_steps: int) -> None:
    """Refuse a fault whose STEP lies beyond the run (`total_steps` environment ticks)."""
    for fault in faults:
        if fault.step > total_steps:
            raise FaultError(f"{fault}: STEP {fault.step:,} is beyond the run's {total_steps:,} environment steps")


def _offset_in(flat: np.ndarray, view: np.ndarray) -> int:
    """Where `view` starts in the flat vector it is a view of."""
    start = view.__array_interface__["data"][0] - flat.__array_interface__["data"][0]
    return start // flat.itemsize


def reinitialise_critic(agent: ActorCritic, optimizer: Adam, rng: np.random.Generator) -> None:
    """A fresh critic in place: the value network's weights re-drawn as at construction (orthogonal,
    CleanRL's gains sqrt(2), sqrt(2), 1), its biases 0; the actor is untouched.

    Adam's moments of the critic's parameters are zeroed too, as a new critic with a new optimizer
    would start; without that, the old critic's small second moments would turn the new critic's large
    gradients into steps of up to ~30 x lr. Adam's step count is shared by all parameters, so the new
    critic's first updates are not bias-corrected (steps of a few x lr for a few hundred updates).
    """
    gains = (math.sqrt(2.0), math.sqrt(2.0), 1.0)
    for weight, gain in zip((agent.c_w1, agent.c_w2, agent.c_w3), gains):
        weight[...] = _orthogonal(rng, weight.shape[0], weight.shape[1], gain)
    for bias in (agent.c_b1, agent.c_b2, agent.c_b3):
        bias[...] = 0.0
    start = _offset_in(agent.params, agent.c_w1)
    end = _offset_in(agent.params, agent.c_b3) + agent.c_b3.size
    optimizer.m[start:end] = 0.0
    optimizer.v[start:end] = 0.0


class FaultSchedule:
    """A run's faults: which are active, and what each training knob becomes under them.

    `activate` is called once per cycle, after its capture, with the run's `global_step` then; the
    knob methods return the value in use given the healthy one (unchanged while no fault is active, so
    a healthy run computes exactly what it computed without this class).
    """

    def __init__(self, faults: Sequence[Fault], seed: int) -> None:
        self.faults = tuple(faults)
        self.first_cycle_ids: list[int | None] = [None] * len(self.faults)
        self.on_activate: Callable[[Fault, int, int], None] | None = None
        """Called as (fault, cycle_id, global_step) when a fault becomes active (train prints a line)."""
        self._active: tuple[Fault, ...] = ()
        self._pending_resets = 0
        self._rng = np.random.default_rng([seed, _NOISE_SEED_TAG]) if self.faults else None

    def activate(self, global_step: int, cycle_id: int) -> list[Fault]:
        """Make active every fault due at `global_step` for the cycle `cycle_id`; returns those newly active."""
        started = []
        for index, fault in enumerate(self.faults):
            if self.first_cycle_ids[index] is None and global_step >= fault.step:
                self.first_cycle_ids[index] = cycle_id
                started.append(fault)
                if fault.name == "value_reset":
                    self._pending_resets += 1
                if self.on_activate is not None:
                    self.on_activate(fault, cycle_id, global_step)
        if started:
            self._active = tuple(f for f, first in zip(self.faults, self.first_cycle_ids) if first is not None)
        return started

    @property
    def active(self) -> tuple[Fault, ...]:
        """The faults active now, in the order given."""
        return self._active

    def _values(self, name: str) -> list[float | None]:
        return [fault.value for fault in self._active if fault.name == name]

    def change_rewards(self, rewards: np.ndarray) -> None:
        """Apply the active reward faults to a capture's rewards, in place, in the order given:
        `reward_scale` multiplies them, `reward_noise` replaces them by N(0, VALUE^2) draws."""
        for fault in self._active:
            if fault.name == "reward_scale":
                rewards *= fault.value
            elif fault.name == "reward_noise":
                rewards[...] = self._rng.normal(0.0, fault.value, rewards.shape)

    def learning_rate(self, healthy: float) -> float:
        """The learning rate in use: × VALUE for each active `lr_spike` and `grad_clip_off`."""
        lr = healthy
        for value in self._values("lr_spike") + self._values("grad_clip_off"):
            lr *= value
        return lr

    def clip_range(self, healthy: float) -> float:
        """The clip range in use: the VALUE of the latest active `clip_off`."""
        values = self._values("clip_off")
        return values[-1] if values else healthy

    def ent_coef(self, healthy: float) -> float:
        """The entropy coefficient in use: -VALUE of the latest active `negative_entropy_bonus`."""
        values = self._values("negative_entropy_bonus")
        return -values[-1] if values else healthy

    def max_grad_norm(self, healthy: float) -> float | None:
        """The gradient-norm clip in use: None (no clipping) once a `grad_clip_off` is active."""
        return None if self._values("grad_clip_off") else healthy

    def change_dataset(self, dataset: Dataset) -> Dataset:
        """The dataset the trainer trains on: its advantages negated while an `advantage_sign` is
        active. The returns (advantages + values, computed before) stay right, so only the policy
        loss gets the sign bug; telemetry reads this same dataset."""
        if not self._values("advantage_sign"):
            return dataset
        return replace(dataset, advantages=-dataset.advantages)

    def reset_critic_if_due(self, agent: ActorCritic, optimizer: Adam) -> bool:
        """Re-initialise the critic once for each `value_reset` that became active since the last call."""
        if not self._pending_resets:
            return False
        for _ in range(self._pending_resets):
            reinitialise_critic(agent, optimizer, self._rng)
        self._pending_resets = 0
        return True

    def report(self) -> list[dict[str, Any]]:
        """The faults as `faults.json` lists them: {"name", "step", "value", "first_cycle_id"} each."""
        return [
            {"name": fault.name, "step": fault.step, "value": fault.value, "first_cycle_id": first}
            for fault, first in zip(self.faults, self.first_cycle_ids)
        ]


def write_faults_file(path: Path, run_id: str, entries: list[dict[str, Any]]) -> None:
    """Write a run's faults (`FaultSchedule.report()`) to `faults.json`, atomically.

    Each entry also carries its `run_id`: several runs may share a segment directory, so the entries
    of other runs already in the file are kept and this run's replaced. A file that is not such a
    JSON array (damaged, or not ours) is replaced.
    """
    kept: list[dict[str, Any]] = []
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        existing = None
    if isinstance(existing, list) and all(isinstance(entry, dict) for entry in existing):
        kept = [entry for entry in existing if entry.get("run_id") != run_id]
    document = kept + [{**entry, "run_id": run_id} for entry in entries]
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)  # readers see the old file or the new one, never half of one
