"""Built-in Gymnasium environments. Importing this package registers `Conflict-v0`.

The registration names the entry point as a string, so the environment module itself is imported only
when an environment is made (and `python -m producer.envs.conflict` runs cleanly).
"""

import gymnasium

__all__: list[str] = []

# Must equal `producer.envs.conflict.MAX_TICKS` (a test checks); the environment also truncates itself.
_CONFLICT_MAX_TICKS = 200

# Guard: importing the package again (or under another name) must not register twice.
if "Conflict-v0" not in gymnasium.registry:
    gymnasium.register(
        id="Conflict-v0",
        entry_point="producer.envs.conflict:ConflictEnv",
        max_episode_steps=_CONFLICT_MAX_TICKS,
    )
