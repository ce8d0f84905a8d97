"""Telemetry for PPO trainers of other frameworks, each built on `ppo_telemetry.recorder.EpochRecorder`.

`ppo_telemetry.integrations.sb3`: a stable-baselines3 callback (needs the `[sb3]` extra).
"""
