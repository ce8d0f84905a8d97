"""Does our PPO learn, and how fast? CartPole-v1, Conflict-v0 and Pendulum-v1, seeds 0-2, beside baselines in the same run.

CartPole-v1 (targets, issue 3): every seed ends 100,000 environment steps with a mean episode return
≥ 475 (the last 20 episodes), first reaches a 20-episode mean of 475 within 50,000 steps, and takes
< 15 s wall. Baselines measured in the same run: the random policy's return, and the wall time of
100,000 random-action steps through the same vector environment (the floor any agent pays).

Conflict-v0 (target): after 100,000 ticks PPO closes at least half the gap between the random and the
heuristic policy: (ppo - random) / (heuristic - random) ≥ 0.5. All three are evaluated the same way,
over the same seeded episodes; PPO samples from its final stochastic policy.

Pendulum-v1 (target, issue 8): with continuous actions (the diagonal Gaussian policy and our preset),
every seed ends 300,000 environment steps with a mean episode return ≥ −500 (the last 20 episodes),
beside the random policy's mean return measured in the same run (about −1,200).

Runs publish telemetry to an NDJSON stream in a temporary directory, as a user's run would.
The process exits 1 when a target is missed.

    .venv/bin/python bench/learning.py [--env cartpole|conflict|pendulum|all] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np

from producer.harness import TrainingHarness, preset_for
from producer.ndjson_sink import NdjsonSink


def train(env_id: str, seed: int, steps: int) -> tuple[TrainingHarness, float]:
    config = replace(preset_for(env_id), seed=seed, total_steps=steps, run_id=f"bench-{env_id}-{seed}")
    with tempfile.TemporaryDirectory() as tmp:
        sink = NdjsonSink(Path(tmp))
        harness = TrainingHarness(config, publish=sink.publish)
        start = time.perf_counter()
        harness.run_ppo()
        sink.close()
        return harness, time.perf_counter() - start


def first_reaching(steps: list[int], returns: list[float], window: int, level: float) -> int | None:
    """The global step at which the mean of the last `window` episodes first reached `level`."""
    r = np.asarray(returns)
    if len(r) < window:
        return None
    means = np.convolve(r, np.ones(window) / window, mode="valid")
    hits = np.flatnonzero(means >= level)
    return int(steps[hits[0] + window - 1]) if hits.size else None


def random_floor(env_id: str, steps: int, num_envs: int) -> tuple[float, float]:
    """(wall seconds, mean episode return) of random actions for `steps` ticks in the same vector env."""
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id) for _ in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    envs.reset(seed=123)
    envs.action_space.seed(123)
    totals, finished = np.zeros(num_envs), []
    start = time.perf_counter()
    for _ in range(steps // num_envs):
        _, reward, term, trunc, _ = envs.step(envs.action_space.sample())
        totals += reward
        for i in np.flatnonzero(term | trunc):
            finished.append(totals[i])
            totals[i] = 0.0
    wall = time.perf_counter() - start
    envs.close()
    return wall, float(np.mean(finished))


def cartpole(seeds: list[int]) -> bool:
    steps = 100_000
    floor_wall, random_return = random_floor("CartPole-v1", steps, preset_for("CartPole-v1").num_envs)
    print(f"CartPole-v1, {steps:,} steps per run")
    print(f"  baseline: random policy mean return {random_return:.1f}; random-action stepping alone {floor_wall:.2f} s")
    ok = True
    for seed in seeds:
        harness, wall = train("CartPole-v1", seed, steps)
        final = float(np.mean(harness.episodes.returns[-20:]))
        reached = first_reaching(harness.episodes.steps, harness.episodes.returns, 20, 475.0)
        passed = final >= 475 and reached is not None and reached <= 50_000 and wall < 15
        ok &= passed
        print(
            f"  seed {seed}: final mean return (last 20 episodes) {final:6.1f}; 20-episode mean first >= 475 at "
            f"{reached if reached is not None else 'never':>6} steps; wall {wall:5.2f} s; "
            f"{harness.epoch} records  [{'met' if passed else 'NOT met'}]"
        )
    return ok


def conflict(seeds: list[int]) -> bool:
    from producer.envs.conflict import evaluate_policy, heuristic_action, random_action

    episodes, eval_seed, steps = 1000, 10_000, 100_000
    random_mean, _ = evaluate_policy(random_action, episodes, eval_seed)
    heuristic_mean, _ = evaluate_policy(lambda obs, rng: heuristic_action(obs), episodes, eval_seed)
    print(f"Conflict-v0, {steps:,} ticks per run; evaluation: {episodes} episodes from seed {eval_seed}")
    print(f"  baselines: random {random_mean:+.3f}, heuristic {heuristic_mean:+.3f}")
    ok = True
    for seed in seeds:
        harness, wall = train("Conflict-v0", seed, steps)
        agent = harness.agent

        def ppo_policy(obs, rng, agent=agent):
            return int(agent.policy(np.asarray(obs, dtype=np.float64)[None], rng)[0][0])

        ppo_mean, _ = evaluate_policy(ppo_policy, episodes, eval_seed)
        closed = (ppo_mean - random_mean) / (heuristic_mean - random_mean)
        ok &= closed >= 0.5
        print(
            f"  seed {seed}: PPO {ppo_mean:+.3f}, gap closed {closed:6.1%}, wall {wall:5.2f} s, "
            f"{harness.epoch} records  [{'met' if closed >= 0.5 else 'NOT met'}]"
        )
    return ok


def pendulum(seeds: list[int]) -> bool:
    steps, target = 300_000, -500.0
    _, random_return = random_floor("Pendulum-v1", steps, preset_for("Pendulum-v1").num_envs)
    print(f"Pendulum-v1, {steps:,} steps per run; target: mean return of the last 20 episodes >= {target:.0f}")
    print(f"  baseline: random policy mean return {random_return:.1f}")
    ok = True
    for seed in seeds:
        harness, wall = train("Pendulum-v1", seed, steps)
        final = float(np.mean(harness.episodes.returns[-20:]))
        passed = final >= target
        ok &= passed
        print(
            f"  seed {seed}: final mean return (last 20 episodes) {final:7.1f}; policy std "
            f"{float(np.exp(harness.agent.log_std).mean()):.2f}; wall {wall:5.1f} s; {harness.epoch} records  "
            f"[{'met' if passed else 'NOT met'}]"
        )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=("cartpole", "conflict", "pendulum", "all"), default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    results = []
    if args.env in ("cartpole", "all"):
        results.append(cartpole(args.seeds))
    if args.env in ("conflict", "all"):
        results.append(conflict(args.seeds))
    if args.env in ("pendulum", "all"):
        results.append(pendulum(args.seeds))
    print("all targets met" if all(results) else "some targets NOT met")
    if not all(results):
        sys.exit(1)


if __name__ == "__main__":
    main()
