"""Conflict-v0: a fight for a front line against a scripted opponent that telegraphs, and bluffs.

Rules
-----
A front line sits on integer positions from -20 (the agent has lost) to +20 (the agent has won) and
starts at 0. Each tick both sides choose one of three moves at once, and each move beats one other:

- ``DEFEND`` repels an ``ATTACK``;
- ``ATTACK`` raids a side that is busy with ``GATHER``;
- ``GATHER`` out-builds a side that sits in ``DEFEND``.

The winner of an exchange gains 2 ground. Equal moves are a stalemate, and a stalemate favours the
opponent, who holds the line: it gains 1.

The opponent is scripted, stochastic and readable. Before each tick it picks a move uniformly at random
and shows it as its *stance*. On 65% of ticks it means it and plans that move; on the other 35% it
*bluffs*: it plans the move that beats the agent's counter to the stance, and its posture gives the
bluff away (the observation's bluff flag). Either way it sticks to its plan 60% of the time and plays
each of the two other moves 20% of the time.

So the best play counters the stance, except against a bluff, where it plays the very move the stance
shows; it takes the opponent's end in about 34 ticks. Countering the stance regardless wins more
ground than it loses, but slowly; ignoring the stance loses almost every contest.

Observation (``Box(9,)``, float32)
----------------------------------
``[front / 20, stance is ATTACK, stance is DEFEND, stance is GATHER, bluffing, opponent's last move was
ATTACK, ... DEFEND, ... GATHER, tick / 200]``: the front in [-1, 1], everything else in [0, 1]. The
stance and the bluff flag are about the coming tick; the last-move one-hot is all zeros on the first.

Actions (``Discrete(3)``)
-------------------------
``0`` ATTACK, ``1`` DEFEND, ``2`` GATHER.

Rewards
-------
Each tick ``0.05 × (change of the front)``: +0.1 for a won exchange, -0.1 for a lost one, -0.05 for a
stalemate (less next to an end, where the front stops at ±20). Taking the opponent's end adds +1,
losing one's own adds -1, so an episode's return is ``front / 20`` at its end plus that bonus, within
[-2, +2].

Episode end
-----------
Terminated when the front reaches either end; truncated after 200 ticks (the environment's own limit,
also registered as ``max_episode_steps``).

Baselines
---------
Mean episode return ± population std over 1000 episodes (seeds 0..999), measured with
``python -m producer.envs.conflict``:

- uniform random policy: -1.957 ± 0.390 (wins 1%, loses 99%, in 58 ticks on average);
- :func:`heuristic_action` (counter the stance, blind to the bluff): +0.480 ± 1.788 (wins 54%,
  loses 31%, 102 ticks);
- the best play (also reading the bluff flag; not in the API, to leave PPO something to find):
  +2.000 ± 0.000 (wins every contest, 34 ticks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = [
    "ATTACK",
    "DEFEND",
    "GATHER",
    "HEURISTIC_MEAN_RETURN",
    "MAX_TICKS",
    "RANDOM_MEAN_RETURN",
    "ConflictEnv",
    "evaluate_policy",
    "heuristic_action",
    "random_action",
]

ATTACK, DEFEND, GATHER = 0, 1, 2
FRONT_END = 20
MAX_TICKS = 200
EXCHANGE_GAIN = 2
STALEMATE_LOSS = 1
STEP_REWARD_SCALE = 1.0 / FRONT_END
TERMINAL_REWARD = 1.0
# How often the opponent bluffs, and how often it sticks to its plan rather than switching.
BLUFF_PROB = 0.35
OPPONENT_RESOLVE = 0.6

# The measured figures of the module docstring (1000 episodes, seeds 0..999).
RANDOM_MEAN_RETURN = -1.957
HEURISTIC_MEAN_RETURN = 0.480

# _COUNTER[m] is the move that beats m; _COUNTER[_COUNTER[m]] beats the counter to m.
_COUNTER = (DEFEND, GATHER, ATTACK)
_OTHERS = ((DEFEND, GATHER), (ATTACK, GATHER), (ATTACK, DEFEND))
_ONE_HOT = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, 0.0))
_NO_MOVE = 3  # the opponent's last move before the first tick
_SWITCH_SPLIT = (1.0 + OPPONENT_RESOLVE) / 2.0
_OBS_LOW = np.array([-1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)
_OBS_HIGH = np.ones(9, dtype=np.float32)


class ConflictEnv(gym.Env):
    """A fight for a front line against a scripted opponent that shows its next move, and bluffs.

    Actions: 0 ATTACK, 1 DEFEND, 2 GATHER (defend beats attack, attack beats gather, gather beats
    defend; the winner gains 2, a stalemate gives the opponent 1). Observation (9 floats): the front,
    the opponent's stance (one-hot), its bluff flag, its last move (one-hot) and the tick fraction. The
    opponent plays its stance, or on a flagged bluff the move that beats the counter to it, 60% of the
    time. Rewards: 0.05 per unit of front gained or lost each tick, ±1 for taking or losing the front;
    terminated at either end (±20), truncated after 200 ticks. Mean returns over 1000 episodes (seeds
    0..999): random -1.957, `heuristic_action` +0.480. The module docstring has the full rules.
    """

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = spaces.Box(low=_OBS_LOW, high=_OBS_HIGH, dtype=np.float32)
        self.action_space = spaces.Discrete(3)
        self._front = 0
        self._stance = ATTACK
        self._bluff = False
        self._last_opp_move = _NO_MOVE
        self._tick = 0

    def _observation(self) -> np.ndarray:
        stance = _ONE_HOT[self._stance]
        last = _ONE_HOT[self._last_opp_move]
        return np.array(
            (
                self._front / FRONT_END,
                stance[0],
                stance[1],
                stance[2],
                1.0 if self._bluff else 0.0,
                last[0],
                last[1],
                last[2],
                self._tick / MAX_TICKS,
            ),
            dtype=np.float32,
        )

    def _plan_next(self) -> None:
        """Draw the opponent's stance for the coming tick and whether it bluffs."""
        self._stance = int(self.np_random.random() * 3.0)
        self._bluff = self.np_random.random() < BLUFF_PROB

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a contest: front at 0, tick 0, the opponent's first stance."""
        super().reset(seed=seed)
        self._front = 0
        self._tick = 0
        self._last_opp_move = _NO_MOVE
        self._plan_next()
        return self._observation(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Play one exchange; see the module docstring for the rules and rewards."""
        move = int(action)
        if not 0 <= move < 3:
            raise ValueError(f"action must be 0, 1 or 2, got {action!r}")
        front = self._front
        stance = self._stance
        plan = _COUNTER[_COUNTER[stance]] if self._bluff else stance
        u = self.np_random.random()
        if u < OPPONENT_RESOLVE:
            opp_move = plan
        else:
            opp_move = _OTHERS[plan][0 if u < _SWITCH_SPLIT else 1]

        if move == opp_move:
            new_front = front - STALEMATE_LOSS
        elif move == _COUNTER[opp_move]:
            new_front = front + EXCHANGE_GAIN
        else:
            new_front = front - EXCHANGE_GAIN
        terminated = True
        if new_front >= FRONT_END:
            new_front = FRONT_END
            bonus = TERMINAL_REWARD
        elif new_front <= -FRONT_END:
            new_front = -FRONT_END
            bonus = -TERMINAL_REWARD
        else:
            bonus = 0.0
            terminated = False
        reward = STEP_REWARD_SCALE * (new_front - front) + bonus

        self._front = new_front
        self._last_opp_move = opp_move
        self._tick += 1
        truncated = not terminated and self._tick >= MAX_TICKS
        self._plan_next()
        return self._observation(), reward, terminated, truncated, {}


def heuristic_action(obs: np.ndarray) -> int:
    """A sensible hand-written policy for `Conflict-v0`: play the move that beats the shown stance.

    It reads the stance but not the bluff flag, so it wins ground on honest ticks and gives most of it
    back on bluffs; a policy that also reads the flag wins every contest, and quickly.
    """
    if obs[1] > 0.5:  # stance ATTACK
        return DEFEND
    if obs[2] > 0.5:  # stance DEFEND
        return GATHER
    return ATTACK


def random_action(obs: np.ndarray, rng: np.random.Generator) -> int:
    """The uniform random policy, in the `evaluate_policy` signature."""
    return int(rng.integers(3))


def evaluate_policy(
    policy: Callable[[np.ndarray, np.random.Generator], int], episodes: int, seed: int
) -> tuple[float, float]:
    """Mean and population std of the episode return of `policy(obs, rng) -> action` on `ConflictEnv`.

    Episode i is reset with seed `seed + i`; `rng`, for stochastic policies, is seeded with `seed`.
    """
    env = ConflictEnv()
    rng = np.random.default_rng(seed)
    returns = np.empty(episodes)
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total = 0.0
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs, rng))
            total += reward
            done = terminated or truncated
        returns[i] = total
    return float(returns.mean()), float(returns.std())


def _best_action(obs: np.ndarray, rng: np.random.Generator) -> int:
    """Counter the stance, or play it against a bluff: the reference for the best play."""
    stance = int(np.argmax(obs[1:4]))
    return stance if obs[4] > 0.5 else _COUNTER[stance]


def _main() -> None:
    """Print the baseline figures quoted in the module docstring."""
    policies = (
        ("random", random_action),
        ("heuristic", lambda obs, rng: heuristic_action(obs)),
        ("best", _best_action),
    )
    for name, policy in policies:
        mean, std = evaluate_policy(policy, episodes=1000, seed=0)
        print(f"{name}: {mean:+.3f} ± {std:.3f}")


if __name__ == "__main__":
    _main()
