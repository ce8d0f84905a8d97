"""PPO's learning machinery in plain numpy: the actor-critic MLP, its hand-written gradients, and Adam.

Read top to bottom like CleanRL's `ppo.py`: `ActorCritic.policy` samples actions during rollouts;
`ActorCritic.loss_and_grad` is one minibatch of the PPO objective

    loss = pg_loss - ent_coef * entropy + vf_coef * v_loss
    pg_loss = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))
    v_loss  = 0.5 * mean((V(s) - R)^2)

with its exact gradient (checked against finite differences in the tests); `Adam.step` applies it.

The actor's outputs parameterise a policy head: `CategoricalHead` (Discrete actions: the outputs are
logits) or `DiagGaussianHead` (Box actions: the outputs are the mean of a diagonal Gaussian whose
log-std is a state-independent parameter vector, as CleanRL's `ppo_continuous_action.py`). A Gaussian
action is stored as sampled, unclipped, with the log-probability of that sample; only the environment
sees it clipped to the bounds. Its entropy is differential entropy and may be negative.

All parameters live in one flat vector (each weight matrix is a view into it), so the global gradient
norm, clipping and Adam are single vector operations. The harness trains in float32, like the PyTorch
implementations, which halves the cost of the matrix products; float64 is there for the gradient checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ActorCritic", "Adam", "CategoricalHead", "DiagGaussianHead", "MinibatchResult"]

HALF_LOG_2PI = 0.5 * float(np.log(2.0 * np.pi))
GAUSSIAN_ENTROPY_CONSTANT = 0.5 + HALF_LOG_2PI  # 0.5 * ln(2 pi e): a unit Gaussian's entropy per dimension


def _orthogonal(rng: np.random.Generator, rows: int, cols: int, gain: float) -> np.ndarray:
    """Orthogonal initialisation (as torch.nn.init.orthogonal_), the PPO implementations' default."""
    flat = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return gain * q[:rows, :cols]


@dataclass(slots=True)
class MinibatchResult:
    """One minibatch's loss terms and the statistics telemetry needs, all from the same forward pass."""

    loss: float
    pg_loss: float
    v_loss: float
    entropy: float  # mean policy entropy over the minibatch (nats)
    approx_kl: float  # k3 estimator mean((ratio - 1) - log ratio)
    clipped: int  # samples with |ratio - 1| > clip_range
    grad_norm: float  # global L2 norm of the gradient before clipping


class CategoricalHead:
    """Discrete actions: the actor's `n_actions` outputs are the logits of a softmax."""

    def __init__(self, n_actions: int) -> None:
        self.n_actions = n_actions

    @staticmethod
    def _log_softmax(logits: np.ndarray) -> np.ndarray:
        shifted = logits - logits.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    def sample(self, logits: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Actions drawn from the softmax (one uniform per row, inverse CDF) and their log-probabilities."""
        logp_all = self._log_softmax(logits)
        cdf = np.exp(logp_all).cumsum(axis=1)
        u = rng.random((logits.shape[0], 1)) * cdf[:, -1:]  # scale by the sum: exp/cumsum rounding
        actions = np.minimum((cdf < u).sum(axis=1), self.n_actions - 1)
        return actions, logp_all[np.arange(len(actions)), actions]

    def log_prob_entropy(self, logits: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log pi(a|s) and the entropy of each row's distribution."""
        logp_all = self._log_softmax(logits)
        entropy = -(np.exp(logp_all) * logp_all).sum(axis=1)
        return logp_all[np.arange(len(actions)), actions], entropy

    def forward(self, logits: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
        """log pi(a|s), the entropy, and what `backward` needs."""
        logp_all = self._log_softmax(logits)
        probs = np.exp(logp_all)
        entropy = -(probs * logp_all).sum(axis=1)
        return logp_all[np.arange(len(actions)), actions], entropy, (logp_all, probs, entropy, actions)

    def backward(self, cache: tuple, g_logp: np.ndarray, ent_coef: float) -> np.ndarray:
        """d loss / d logits, given d loss / d log pi(a|s) per sample and the bonus -ent_coef * mean(entropy)."""
        logp_all, probs, entropy, actions = cache
        n = len(g_logp)
        # the surrogate reaches every logit through the softmax's normaliser, the taken one directly
        g_logits = -probs * g_logp[:, None]
        g_logits[np.arange(n), actions] += g_logp
        g_logits += (ent_coef / n) * probs * (logp_all + entropy[:, None])
        return g_logits


class DiagGaussianHead:
    """Box actions: the actor's outputs are the mean of N(mean, diag(exp(log_std))^2).

    `log_std` (one per action dimension) is a parameter independent of the state, a view into the
    agent's flat parameter vector, so gradient clipping and Adam treat it like any weight.
    """

    def __init__(self, action_dim: int, log_std: np.ndarray, log_std_grad: np.ndarray) -> None:
        self.n_actions = action_dim
        self.log_std, self.log_std_grad = log_std, log_std_grad

    def _log_prob(self, mean: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        std = np.exp(self.log_std)
        z = (actions.astype(mean.dtype, copy=False) - mean) / std
        logp = -0.5 * (z * z).sum(axis=1) - self.log_std.sum() - self.n_actions * HALF_LOG_2PI
        return logp, z, std

    def entropy(self, rows: int) -> np.ndarray:
        """Differential entropy, the same for every state: sum of 0.5 ln(2 pi e) + log_std (may be < 0)."""
        value = self.n_actions * GAUSSIAN_ENTROPY_CONSTANT + self.log_std.sum()
        return np.full(rows, value, dtype=self.log_std.dtype)

    def sample(self, mean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Unclipped actions mean + std * N(0, 1) and their log-probabilities."""
        noise = rng.standard_normal(mean.shape).astype(mean.dtype, copy=False)
        actions = mean + np.exp(self.log_std) * noise
        return actions, self._log_prob(mean, actions)[0]

    def log_prob_entropy(self, mean: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log pi(a|s) and the (state-independent) entropy for each row."""
        return self._log_prob(mean, actions)[0], self.entropy(len(mean))

    def forward(self, mean: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
        """log pi(a|s), the entropy, and what `backward` needs."""
        logp, z, std = self._log_prob(mean, actions)
        return logp, self.entropy(len(mean)), (z, std)

    def backward(self, cache: tuple, g_logp: np.ndarray, ent_coef: float) -> np.ndarray:
        """d loss / d mean; writes d loss / d log_std (surrogate and entropy bonus) into `log_std_grad`."""
        z, std = cache
        # d log pi / d mean = z / std,  d log pi / d log_std = z^2 - 1,  d entropy / d log_std = 1
        self.log_std_grad[...] = (g_logp[:, None] * (z * z - 1.0)).sum(axis=0) - ent_coef
        return g_logp[:, None] * z / std


class ActorCritic:
    """Separate actor and critic MLPs (obs -> hidden -> hidden -> out, tanh), as CleanRL and SB3 use.

    Layer shapes are `(in, out)`; `params` is the flat vector and `grad` its gradient buffer. With
    `continuous`, `n_actions` is the dimension of a Box action, the actor outputs the Gaussian's mean
    and `log_std` (initialised to 0) sits in `params` between the actor's and the critic's layers.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden: int = 64,
        seed: int = 0,
        dtype: type = np.float64,
        continuous: bool = False,
    ) -> None:
        self.obs_dim, self.n_actions, self.hidden = obs_dim, n_actions, hidden
        self.continuous = continuous
        self.dtype = np.dtype(dtype)

        def mlp_shapes(out_dim: int) -> list[tuple[int, ...]]:
            return [(obs_dim, hidden), (hidden,), (hidden, hidden), (hidden,), (hidden, out_dim), (out_dim,)]

        shapes = mlp_shapes(n_actions) + ([(n_actions,)] if continuous else []) + mlp_shapes(1)
        sizes = [int(np.prod(s)) for s in shapes]
        self.params = np.zeros(sum(sizes), dtype=self.dtype)
        self.grad = np.zeros_like(self.params)
        views, grad_views = [], []
        start = 0
        for shape, size in zip(shapes, sizes):
            views.append(self.params[start : start + size].reshape(shape))
            grad_views.append(self.grad[start : start + size].reshape(shape))
            start += size
        (self.a_w1, self.a_b1, self.a_w2, self.a_b2, self.a_w3, self.a_b3) = views[:6]
        (self.c_w1, self.c_b1, self.c_w2, self.c_b2, self.c_w3, self.c_b3) = views[-6:]
        self._actor_grads, self._critic_grads = grad_views[:6], grad_views[-6:]
        self.head: CategoricalHead | DiagGaussianHead
        if continuous:
            self.log_std = views[6]
            self.head = DiagGaussianHead(n_actions, views[6], grad_views[6])
        else:
            self.head = CategoricalHead(n_actions)
        rng = np.random.default_rng(seed)
        gains = (np.sqrt(2), np.sqrt(2), 0.01, np.sqrt(2), np.sqrt(2), 1.0)  # CleanRL's layer_init gains
        weights = [self.a_w1, self.a_w2, self.a_w3, self.c_w1, self.c_w2, self.c_w3]
        for w, gain in zip(weights, gains):
            w[...] = _orthogonal(rng, w.shape[0], w.shape[1], gain)

    # ------------------------------------------------------------------------------------ forward

    def _actor(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h1 = np.tanh(obs @ self.a_w1 + self.a_b1)
        h2 = np.tanh(h1 @ self.a_w2 + self.a_b2)
        return h1, h2, h2 @ self.a_w3 + self.a_b3

    def _critic(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h1 = np.tanh(obs @ self.c_w1 + self.c_b1)
        h2 = np.tanh(h1 @ self.c_w2 + self.c_b2)
        return h1, h2, (h2 @ self.c_w3)[:, 0] + self.c_b3[0]

    def value(self, obs: np.ndarray) -> np.ndarray:
        """V(s) for a batch of observations, shape (B,)."""
        return self._critic(obs.astype(self.dtype, copy=False))[2]

    def policy(self, obs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample actions for a batch: (actions, their log-probabilities, V(s)).

        Discrete actions are indices (B,); continuous ones (B, n_actions), unclipped."""
        obs = obs.astype(self.dtype, copy=False)
        actions, logp = self.head.sample(self._actor(obs)[2], rng)
        return actions, logp, self.value(obs)

    def log_prob_entropy(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log pi(a|s) and the policy entropy for a batch."""
        obs = obs.astype(self.dtype, copy=False)
        return self.head.log_prob_entropy(self._actor(obs)[2], actions)

    # ----------------------------------------------------------------------------- loss and grad

    def loss_and_grad(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        old_logp: np.ndarray,
        advantages: np.ndarray,
        returns: np.ndarray,
        clip_range: float,
        ent_coef: float,
        vf_coef: float,
    ) -> MinibatchResult:
        """The PPO loss on one minibatch; its gradient is written into `self.grad`."""
        n = obs.shape[0]
        dtype = self.dtype
        obs = obs.astype(dtype, copy=False)
        old_logp = old_logp.astype(dtype, copy=False)
        advantages = advantages.astype(dtype, copy=False)
        returns = returns.astype(dtype, copy=False)

        # actor forward: the head turns the actor's outputs into log pi(a|s) and the entropy
        a_h1, a_h2, actor_out = self._actor(obs)
        new_logp, entropy, head_cache = self.head.forward(actor_out, actions)
        log_ratio = new_logp - old_logp
        ratio = np.exp(log_ratio)

        # clipped surrogate: the gradient flows where the unclipped term is the larger one
        clipped_ratio = np.clip(ratio, 1.0 - clip_range, 1.0 + clip_range)
        surr_unclipped = -advantages * ratio
        surr_clipped = -advantages * clipped_ratio
        pg_loss = float(np.maximum(surr_unclipped, surr_clipped).mean())
        active = surr_unclipped >= surr_clipped

        # critic forward
        c_h1, c_h2, values = self._critic(obs)
        v_err = values - returns
        v_loss = 0.5 * float(v_err @ v_err) / n
        mean_entropy = float(entropy.mean())

        # d loss / d actor outputs: the surrogate through log pi(a|s), the entropy bonus through the head
        g_logp = np.where(active, -advantages * ratio, 0.0) / n
        g_actor_out = self.head.backward(head_cache, g_logp, ent_coef)
        self._backward(obs, a_h1, a_h2, g_actor_out, self._actor_grads, self.a_w2, self.a_w3)

        g_values = (vf_coef / n) * v_err
        self._backward(obs, c_h1, c_h2, g_values[:, None], self._critic_grads, self.c_w2, self.c_w3)

        return MinibatchResult(
            loss=pg_loss - ent_coef * mean_entropy + vf_coef * v_loss,
            pg_loss=pg_loss,
            v_loss=v_loss,
            entropy=mean_entropy,
            approx_kl=float(((ratio - 1.0) - log_ratio).mean()),
            clipped=int(np.count_nonzero(np.abs(ratio - 1.0) > clip_range)),
            grad_norm=float(np.sqrt(self.grad @ self.grad)),
        )

    @staticmethod
    def _backward(obs, h1, h2, g_out, grads, w2, w3) -> None:
        gw1, gb1, gw2, gb2, gw3, gb3 = grads
        np.matmul(h2.T, g_out, out=gw3)
        gb3[...] = g_out.sum(axis=0)
        g_pre2 = (g_out @ w3.T) * (1.0 - h2 * h2)
        np.matmul(h1.T, g_pre2, out=gw2)
        gb2[...] = g_pre2.sum(axis=0)
        g_pre1 = (g_pre2 @ w2.T) * (1.0 - h1 * h1)
        np.matmul(obs.T, g_pre1, out=gw1)
        gb1[...] = g_pre1.sum(axis=0)


class Adam:
    """Adam on a flat parameter vector (bias-corrected, eps outside the sqrt, as torch.optim.Adam)."""

    def __init__(
        self, size: int, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-5, dtype: type = np.float64
    ) -> None:
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.m = np.zeros(size, dtype=dtype)
        self.v = np.zeros(size, dtype=dtype)
        self.t = 0

    def step(self, params: np.ndarray, grad: np.ndarray) -> None:
        """One update of `params` in place."""
        self.t += 1
        self.m *= self.beta1
        self.m += (1.0 - self.beta1) * grad
        self.v *= self.beta2
        self.v += (1.0 - self.beta2) * grad * grad
        step = self.lr / (1.0 - self.beta1**self.t)
        denom = np.sqrt(self.v / (1.0 - self.beta2**self.t))
        denom += self.eps
        params -= step * self.m / denom
