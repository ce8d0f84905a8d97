"""PPO in PyTorch on gymnasium vector environments, one file, publishing one `EpochSummary` per epoch.

Written in the single-file style of CleanRL's ppo.py (the algorithm top to bottom, the update loop in
plain sight), discrete actions (CartPole-v1, the default) and continuous ones (Pendulum-v1). The
telemetry is the lines marked `# telemetry`: an `EpochRecorder`, `begin_cycle` once the advantages are
known, `minibatch` after each optimiser step, `end_epoch` after each pass over the data, and closing it.

    python examples/ppo_torch.py                               # records in runs/<run-id>/
    python examples/ppo_torch.py --ndjson-dir runs/a --kafka 127.0.0.1:9092 --run-id cartpole-a
    python examples/ppo_torch.py --env-id Pendulum-v1 --num-envs 4 --num-steps 1024 --num-minibatches 64 \\
        --update-epochs 10 --learning-rate 1e-3 --no-anneal-lr --gamma 0.9 --ent-coef 0   # rl-zoo's, no gSDE

Telemetry is always on: with neither --ndjson-dir nor --kafka the records go to runs/<run-id>/ (as
CleanRL writes its TensorBoard logs under runs/); read them with `ppo-telemetry validate runs/<run-id>`.
Exit codes: 0 trained; 2 bad arguments, an unknown environment, or a sink that cannot open (one line
on stderr, before training starts); 1 a sink failed during training; 130 interrupted.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import random
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from ppo_telemetry.recorder import EpochRecorder, TelemetryError  # telemetry

PROG = "ppo_torch.py"


@dataclass
class Args:
    env_id: str = "CartPole-v1"
    """the gymnasium environment (Discrete or Box actions, flat observations)"""
    seed: int = 1
    """seed of the environments, of the network's initialisation and of the minibatch shuffling"""
    total_timesteps: int = 500_000
    """environment steps to train for, over all environments"""
    learning_rate: float = 2.5e-4
    """Adam's learning rate (the starting one when annealed)"""
    anneal_lr: bool = True
    """decay the learning rate linearly towards 0 over the run"""
    num_envs: int = 4
    """environments stepped side by side (a gymnasium SyncVectorEnv)"""
    num_steps: int = 128
    """steps per environment in each rollout: a rollout is num_envs x num_steps samples"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """lambda of generalised advantage estimation"""
    num_minibatches: int = 4
    """minibatches per epoch"""
    update_epochs: int = 4
    """epochs (passes over the rollout) per update"""
    norm_adv: bool = True
    """normalise the advantages within each minibatch"""
    clip_coef: float = 0.2
    """the surrogate's clipping range (and the value clipping range with --clip-vloss)"""
    clip_vloss: bool = True
    """clip the value loss around the rollout's values, as in the PPO paper's implementation"""
    ent_coef: float = 0.01
    """weight of the entropy bonus"""
    vf_coef: float = 0.5
    """weight of the value loss"""
    max_grad_norm: float = 0.5
    """the gradient's global L2 norm is clipped to this"""
    target_kl: float | None = None
    """stop the update early when the last minibatch's approx KL exceeds this (off by default)"""
    torch_threads: int = 1
    """PyTorch CPU threads: one is fastest for a 64-unit MLP, and leaves a core to the publisher"""
    run_id: str | None = None
    """the records' run_id, 1-128 chars of [A-Za-z0-9._:-] (default: <env-id>__ppo_torch__<seed>__<unix time>)"""
    ndjson_dir: str | None = None
    """write the records to this NDJSON stream directory (default, when --kafka is not given: runs/<run-id>)"""
    kafka: str | None = None
    """publish the records to Kafka at these bootstrap servers (host:port,...)"""
    kafka_config: str | None = None
    """a TOML file of further Kafka client settings (security, namespace), as for `ppo-telemetry consume`"""


# ------------------------------------------------------------------------------------ command line


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose errors are one line (the usage block would make them three)."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see '{PROG} --help')")


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(code)


def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass (its docstring), read from the source as tyro does."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {
        field.target.id: doc.value.value
        for field, doc in zip(body, body[1:])
        if isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
    }


def parse_args(argv: list[str] | None = None) -> Args:
    """`Args` from the command line: one flag per field, `--field-name`, its docstring as help."""
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    docs, types = field_docs(Args), typing.get_type_hints(Args)
    for field in dataclasses.fields(Args):
        flag, kind = "--" + field.name.replace("_", "-"), types[field.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default,
                                help=docs[field.name])
        else:
            value_type = next(t for t in typing.get_args(kind) or (kind,) if t is not type(None))
            parser.add_argument(flag, type=value_type, default=field.default, help=docs[field.name])
    args = Args(**vars(parser.parse_args(argv)))
    if min(args.num_envs, args.num_steps, args.num_minibatches, args.update_epochs) < 1:
        parser.error("--num-envs, --num-steps, --num-minibatches and --update-epochs must be at least 1")
    rollout_size = args.num_envs * args.num_steps
    if args.total_timesteps < rollout_size:
        parser.error(f"--total-timesteps must be at least one rollout (--num-envs x --num-steps = {rollout_size})")
    if args.num_minibatches > rollout_size:
        parser.error("--num-minibatches must be at most the rollout's size (--num-envs x --num-steps)")
    if args.run_id is None:
        args.run_id = f"{args.env_id}__ppo_torch__{args.seed}__{int(time.time())}"
    if args.ndjson_dir is None and args.kafka is None and args.kafka_config is None:
        args.ndjson_dir = f"runs/{args.run_id}"
    return args


# ------------------------------------------------------------------------------------------ agent


def make_env(env_id: str, gamma: float) -> Callable[[], gym.Env]:
    """One environment for the vector env; for Box actions with clipping and CleanRL's normalisations."""

    def thunk() -> gym.Env:
        env = gym.make(env_id)
        env = gym.wrappers.RecordEpisodeStatistics(env)  # innermost: the episode's return before any scaling
        if isinstance(env.action_space, gym.spaces.Box):
            env = gym.wrappers.ClipAction(env)
            env = gym.wrappers.NormalizeObservation(env)
            env = gym.wrappers.NormalizeReward(env, gamma=gamma)
        return env

    return thunk


def mlp(inputs: int, outputs: int, last_layer_std: float) -> nn.Sequential:
    """Two tanh layers of 64, orthogonally initialised; a small last layer starts the policy near uniform."""
    layers = [nn.Linear(inputs, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, outputs)]
    for layer, std in zip(layers[::2], (np.sqrt(2), np.sqrt(2), last_layer_std)):
        nn.init.orthogonal_(layer.weight, std)
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class Agent(nn.Module):
    """Separate actor and critic MLPs; a categorical policy for Discrete actions, a diagonal Gaussian
    with state-independent standard deviations for Box actions."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        super().__init__()
        observation_size = int(np.prod(observation_space.shape))
        self.critic = mlp(observation_size, 1, last_layer_std=1.0)
        self.actor_logstd: nn.Parameter | None = None
        if isinstance(action_space, gym.spaces.Discrete):
            self.actor = mlp(observation_size, int(action_space.n), last_layer_std=0.01)
        else:
            action_size = int(np.prod(action_space.shape))
            self.actor = mlp(observation_size, action_size, last_layer_std=0.01)
            self.actor_logstd = nn.Parameter(torch.zeros(1, action_size))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).flatten()

    def policy(self, x: torch.Tensor) -> Distribution:
        if self.actor_logstd is None:
            return Categorical(logits=self.actor(x))
        mean = self.actor(x)
        return Independent(Normal(mean, self.actor_logstd.exp().expand_as(mean)), 1)  # sums over action dims

    def get_action_and_value(
        self, x: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A sampled action (or the given one), its log-probability, the policy's entropy, the state's value."""
        policy = self.policy(x)
        if action is None:
            action = policy.sample()
        return action, policy.log_prob(action), policy.entropy(), self.get_value(x)


# ------------------------------------------------------------------------------------------ training


def train(args: Args, envs: gym.vector.VectorEnv, recorder: EpochRecorder) -> None:
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)

    batch_size = args.num_envs * args.num_steps
    minibatch_size = batch_size // args.num_minibatches
    num_iterations = args.total_timesteps // batch_size
    observation_shape = envs.single_observation_space.shape
    action_shape = envs.single_action_space.shape
    agent = Agent(envs.single_observation_space, envs.single_action_space)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    # the rollout: step t of every environment
    obs = torch.zeros((args.num_steps, args.num_envs) + observation_shape)
    actions = torch.zeros((args.num_steps, args.num_envs) + action_shape)
    logprobs = torch.zeros((args.num_steps, args.num_envs))
    rewards = torch.zeros((args.num_steps, args.num_envs))
    dones = torch.zeros((args.num_steps, args.num_envs))  # 1 where obs[t] starts a new episode
    values = torch.zeros((args.num_steps, args.num_envs))
    truncation_values = torch.zeros((args.num_steps, args.num_envs))  # V(last obs) of episodes cut at step t

    global_step = 0
    start_time = time.time()
    next_obs = torch.as_tensor(envs.reset(seed=args.seed)[0], dtype=torch.float32)
    next_done = torch.zeros(args.num_envs)

    for iteration in range(1, num_iterations + 1):
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / num_iterations) * args.learning_rate

        episode_returns: list[float] = []
        for step in range(args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            dones[step] = next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
            actions[step], logprobs[step], values[step] = action, logprob, value

            next_obs, reward, terminations, truncations, infos = envs.step(action.numpy())
            rewards[step] = torch.as_tensor(reward, dtype=torch.float32)
            next_obs = torch.as_tensor(next_obs, dtype=torch.float32)
            next_done = torch.as_tensor(np.logical_or(terminations, truncations), dtype=torch.float32)
            # a time limit is not an end: a truncated episode bootstraps from its last observation's value
            truncation_values[step] = 0.0
            truncated = truncations & ~terminations
            if truncated.any():
                final_obs = torch.as_tensor(np.stack(infos["final_obs"][truncated]), dtype=torch.float32)
                with torch.no_grad():
                    truncation_values[step, torch.as_tensor(truncated)] = agent.get_value(final_obs)
            if "final_info" in infos:  # episodes that ended this step (RecordEpisodeStatistics)
                finished = infos["final_info"]["_episode"]
                episode_returns += infos["final_info"]["episode"]["r"][finished].tolist()
            recorder.poll()  # telemetry: hand finished epochs over while the rollout runs

        # generalised advantage estimation
        with torch.no_grad():
            next_values = torch.cat((values[1:], agent.get_value(next_obs)[None]))
            next_nonterminal = 1.0 - torch.cat((dones[1:], next_done[None]))
            deltas = rewards + args.gamma * (next_values * next_nonterminal + truncation_values) - values
            advantages = torch.zeros_like(rewards)
            running = torch.zeros(args.num_envs)
            for t in reversed(range(args.num_steps)):
                running = deltas[t] + args.gamma * args.gae_lambda * next_nonterminal[t] * running
                advantages[t] = running
            returns = advantages + values

        recorder.begin_cycle(  # telemetry: the dataset the epochs below train on
            rewards.cpu().numpy(), advantages.cpu().numpy(), returns.cpu().numpy(), values.cpu().numpy(),  # telemetry
            global_step=global_step, learning_rate=optimizer.param_groups[0]["lr"],  # telemetry
            episode_returns=episode_returns,  # telemetry
        )  # telemetry

        b_obs = obs.reshape((-1,) + observation_shape)
        b_actions = actions.reshape((-1,) + action_shape)
        b_logprobs = logprobs.reshape(-1)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        b_values = values.reshape(-1)

        sample_order = np.arange(batch_size)
        for epoch in range(args.update_epochs):
            np.random.shuffle(sample_order)
            for start in range(0, batch_size, minibatch_size):
                mb = sample_order[start:start + minibatch_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb], b_actions[mb])
                logratio = newlogprob - b_logprobs[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - logratio).mean()  # the k3 estimator of KL(old || new)
                    clip_fraction = ((ratio - 1).abs() > args.clip_coef).float().mean()

                mb_advantages = b_advantages[mb]
                if args.norm_adv:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                # clipped surrogate objective, as a loss
                clipped_ratio = torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                pg_loss = torch.max(-mb_advantages * ratio, -mb_advantages * clipped_ratio).mean()

                v_loss_unclipped = (newvalue - b_returns[mb]) ** 2
                if args.clip_vloss:
                    v_clipped = b_values[mb] + torch.clamp(newvalue - b_values[mb], -args.clip_coef, args.clip_coef)
                    v_loss = 0.5 * torch.max(v_loss_unclipped, (v_clipped - b_returns[mb]) ** 2).mean()
                else:
                    v_loss = 0.5 * v_loss_unclipped.mean()

                entropy_mean = entropy.mean()
                loss = pg_loss - args.ent_coef * entropy_mean + args.vf_coef * v_loss

                optimizer.zero_grad()
                loss.backward()
                # clip_grad_norm_ returns the norm before clipping (CleanRL and SB3 drop it)
                grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
                recorder.minibatch(  # telemetry
                    policy_loss=pg_loss.item(), value_loss=v_loss.item(), entropy=entropy_mean.item(),  # telemetry
                    kl=approx_kl.item(), grad_norm=grad_norm.item(), clip_fraction=clip_fraction.item(),  # telemetry
                    samples=len(mb),  # telemetry
                )  # telemetry

            recorder.end_epoch()  # telemetry: one EpochSummary for this pass over the rollout
            if args.target_kl is not None and approx_kl > args.target_kl:
                break  # as CleanRL: the last minibatch's KL ends the update; skipped epochs have no record

        print(
            f"iteration {iteration}/{num_iterations} global_step={global_step} "
            f"episodic_return={np.mean(episode_returns) if episode_returns else float('nan'):.1f} "
            f"SPS={int(global_step / (time.time() - start_time))}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        envs = gym.vector.SyncVectorEnv(
            [make_env(args.env_id, args.gamma) for _ in range(args.num_envs)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,  # obs after a done is the next episode's first
        )
    except gym.error.Error as exc:
        fail(f"--env-id {args.env_id}: {exc}")
    if not isinstance(envs.single_action_space, (gym.spaces.Discrete, gym.spaces.Box)):
        fail(f"--env-id {args.env_id}: only Discrete and Box action spaces are supported")
    try:
        recorder = EpochRecorder(  # telemetry
            args.run_id, ndjson_dir=args.ndjson_dir, kafka=args.kafka, kafka_config=args.kafka_config  # telemetry
        )  # telemetry
    except TelemetryError as exc:  # telemetry: a bad run_id, a directory or broker that cannot be used
        fail(str(exc))
    try:
        with recorder:  # telemetry: closing publishes what is left and waits until it is written
            train(args, envs, recorder)
    except TelemetryError as exc:  # telemetry: a sink failed (a full disk, Kafka undelivered)
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        envs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
