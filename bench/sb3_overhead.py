"""What `TelemetryCallback` costs a stable-baselines3 run: the same seeded PPO with and without it, paired.

"off" is `PPO(...)` trained with no callback; "on" is the same model, same seed, trained with
`TelemetryCallback(ndjson_dir=...)`, which records every minibatch and publishes one v1.1 record per
SB3 epoch through the publisher process to an NDJSON stream in a temporary directory. Same seed, same
numbers (the callback does not change training; a test holds it to that), so the time difference is
telemetry.

    .venv/bin/python bench/sb3_overhead.py [--env CartPole-v1] [--env Pendulum-v1] [--iterations 8] [--rounds 8]

How it pairs, as `bench/telemetry_overhead.py` does: this 2-core VM changes speed for seconds at a
time, so the two models run in lockstep, a phase at a time: both collect a rollout, back to back,
then both train on it, in the other order, and the order flips every iteration. The loop is SB3's own
`learn()` loop driven from here (the same calls: `_setup_learn`, `on_training_start`,
`collect_rollouts`, `train`, `on_training_end`). SB3's defaults: 2,048 steps per rollout and 10 epochs
of 32 minibatches for both environments. Each phase of each iteration gives a pair (with / without,
run back to back): the steady cost is the median extra time of the collect phases plus that of the
train phases, over the median iteration without the callback (medians, because the VM's slow spells
hit single pairs hard); all iterations pooled, and the spread of the per-iteration ratios, are printed
beside it. The callback's fixed cost, starting the recorder and its
publisher process and closing them at the end of `learn`, is timed too, and spread over a learn of
`--run-steps` (100,000 by default, SB3's CartPole example is 25,000 ... 1M). Target (issue 10): a
learn's overhead ≤ 1 % of its wall time. Exit 1 when missed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from stable_baselines3 import PPO

from ppo_telemetry.integrations.sb3 import TelemetryCallback

TARGET = 0.01


class _Run:
    """One model inside SB3's learn loop, driven a phase at a time (collect a rollout; train on it)."""

    def __init__(self, env_id: str, seed: int, total_steps: int, callback: TelemetryCallback | None) -> None:
        self.model = PPO("MlpPolicy", env_id, seed=seed, device="cpu", verbose=0)
        started = time.perf_counter()
        self.total, self.callback = self.model._setup_learn(total_steps, callback, True, "PPO", False)
        self.callback.on_training_start(locals(), globals())
        self.fixed_seconds = time.perf_counter() - started
        """Start and end of `learn` (for "on": the recorder, its publisher process, closing it)."""
        self.collects: list[float] = []
        """Seconds of each iteration's rollout collection (the callback's steps and its update's records)."""
        self.trains: list[float] = []
        """Seconds of each iteration's `train()` (the callback's wrappers)."""

    @property
    def iterations(self) -> list[float]:
        return [collect + train for collect, train in zip(self.collects, self.trains)]

    def collect(self) -> None:
        model = self.model
        started = time.perf_counter()
        model.collect_rollouts(model.env, self.callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
        model._update_current_progress_remaining(model.num_timesteps, self.total)
        self.collects.append(time.perf_counter() - started)

    def train(self) -> None:
        started = time.perf_counter()
        self.model.train()
        self.trains.append(time.perf_counter() - started)

    def finish(self) -> None:
        started = time.perf_counter()
        self.callback.on_training_end()
        self.fixed_seconds += time.perf_counter() - started
        self.model.env.close()


def run_round(env_id: str, iterations: int, seed: int) -> tuple[_Run, _Run, int]:
    """(off, on, records written) of one lockstep round."""
    with tempfile.TemporaryDirectory() as tmp:
        stream = Path(tmp) / "telemetry"
        callback = TelemetryCallback(ndjson_dir=stream, run_id=f"sb3-overhead-{env_id}")
        probe = PPO("MlpPolicy", env_id, device="cpu", verbose=0)
        total = iterations * probe.n_steps * probe.n_envs
        probe.env.close()
        off, on = _Run(env_id, seed, total, None), _Run(env_id, seed, total, callback)
        for index in range(iterations):
            pair = (off, on) if index % 2 == 0 else (on, off)
            for run in pair:  # each phase of the pair back to back, the order flipped between phases
                run.collect()
            for run in reversed(pair):
                run.train()
        off.finish()
        on.finish()
        records = sum(1 for path in stream.glob("*.ndjson") for line in path.read_bytes().splitlines() if line)
    return off, on, records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", action="append", help="environment id (repeatable; default CartPole-v1 and Pendulum-v1)")
    parser.add_argument("--iterations", type=int, default=8, help="SB3 iterations (rollout + train) per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--run-steps", type=int, default=100_000,
                        help="the learn() length the start and close costs are spread over (default 100,000 steps)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # both models alike; a 64-wide MLP gains nothing from a second thread here
    met = True
    for env_id in args.env or ["CartPole-v1", "Pendulum-v1"]:
        run_round(env_id, 1, seed=99)  # warm-up: imports, torch kernels, env construction
        ratios, offs, ons, fixed = [], [], [], []
        collect_extra, train_extra, off_collects, off_trains = [], [], [], []
        for round_index in range(args.rounds):
            off, on, records = run_round(env_id, args.iterations, seed=round_index)
            ratios += [with_callback / without - 1 for with_callback, without in zip(on.iterations, off.iterations)]
            offs += off.iterations
            ons += on.iterations
            collect_extra += [with_callback - without for with_callback, without in zip(on.collects, off.collects)]
            train_extra += [with_callback - without for with_callback, without in zip(on.trains, off.trains)]
            off_collects += off.collects
            off_trains += off.trains
            fixed.append(on.fixed_seconds - off.fixed_seconds)
        low, high = statistics.quantiles(ratios, n=4)[0], statistics.quantiles(ratios, n=4)[2]
        pooled = sum(ons) / sum(offs) - 1
        per_iteration = statistics.median(off_collects) + statistics.median(off_trains)
        # each phase's pairs ran back to back (~0.3 s apart): the median extra seconds of each phase
        steady = (statistics.median(collect_extra) + statistics.median(train_extra)) / per_iteration
        run_iterations = args.run_steps / 2048  # SB3's default n_steps, one environment
        whole_run = steady + statistics.median(fixed) / (per_iteration * run_iterations)
        print(f"{env_id}: {args.rounds} rounds of {args.iterations} SB3 iterations (2,048 steps, 10 epochs of 32 "
              f"minibatches), with and without the callback in lockstep; {records} records per round")
        print(f"  iteration without callback: median {per_iteration:.3f} s; with: {statistics.median(ons):.3f} s")
        print(f"  overhead per iteration, from each phase's median extra time: {steady:+.2%} (collect "
              f"{statistics.median(collect_extra) * 1e3:+.1f} ms, train {statistics.median(train_extra) * 1e3:+.1f} ms); "
              f"all iterations pooled {pooled:+.2%}; per iteration interquartile range {low:+.2%} … {high:+.2%} "
              f"({len(ratios)} pairs)")
        print(f"  start and close of learn with the callback: median {statistics.median(fixed) * 1e3:+.0f} ms")
        print(f"  a {args.run_steps:,}-step learn(): {whole_run:+.2%} of its wall time "
              f"(target <= {TARGET:.0%}: {'met' if whole_run <= TARGET else 'NOT met'})")
        met = met and whole_run <= TARGET
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
