"""Per-epoch health statistics exactly as SPEC §1 defines them.

`EpochStats` accumulates what each minibatch's forward/backward pass already computed (loss terms,
entropy, k3 KL, clip count, pre-clip gradient norm), so telemetry adds no extra pass over the data.
The dataset-level statistics (explained variance, reward/advantage correlation) depend only on the
dataset, so they are computed once per cycle, by whoever reads the packed rows (`producer.records`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["EPOCH_STAT_FIELDS", "EpochStats", "explained_variance", "pearson_or_none", "dataset_statistics", "mean_or_none"]


def _constant(x: np.ndarray) -> bool:
    return bool(x.min() == x.max())


def explained_variance(returns: np.ndarray, values: np.ndarray) -> float | None:
    """`1 - Var(returns - values) / Var(returns)`; None when Var(returns) is 0."""
    centered = returns - returns.mean()
    var_returns = float(centered @ centered)
    if var_returns == 0.0 or _constant(returns):
        return None
    residual = returns - values
    residual -= residual.mean()
    return 1.0 - float(residual @ residual) / var_returns  # the 1/n of both variances cancels


def pearson_or_none(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation of two samples; None when either variance is zero (or not finite)."""
    xc = x - x.mean()
    yc = y - y.mean()
    sxx = float(xc @ xc)
    syy = float(yc @ yc)
    if sxx == 0.0 or syy == 0.0 or not math.isfinite(sxx * syy) or _constant(x) or _constant(y):
        return None
    r = float(xc @ yc) / math.sqrt(sxx * syy)
    return min(1.0, max(-1.0, r))  # rounding can step just outside [-1, 1]


def dataset_statistics(
    returns: np.ndarray, values: np.ndarray, rewards: np.ndarray, advantages: np.ndarray
) -> tuple[float | None, float | None]:
    """(explained_variance, reward_advantage_corr) of a dataset, from one centred 4x4 Gram matrix.

    The same definitions as `explained_variance` and `pearson_or_none`. It runs once per cycle inside
    the training loop, where each numpy call costs microseconds, so it makes few of them: the four
    rows (returns, residuals, rewards, advantages) are centred together (two passes, as exact as the
    separate functions), and exact constancy, the zero-variance guard, is tested for all four rows at
    once. CartPole's rewards are all 1.0, so that guard is the common case, not a corner.
    """
    # ufunc reductions, not .min()/.mean(): those wrappers cost more than the work on 4 x 256 numbers
    rows = np.array((returns, returns - values, rewards, advantages), dtype=np.float64)
    constant = (np.minimum.reduce(rows, axis=1) == np.maximum.reduce(rows, axis=1)).tolist()
    rows -= (np.add.reduce(rows, axis=1) / rows.shape[1])[:, None]
    gram = (rows @ rows.T).tolist()
    var_returns, var_residual, var_rewards, var_advantages = (gram[i][i] for i in range(4))
    ev = None
    if not constant[0] and var_returns > 0.0:
        ev = 1.0 - var_residual / var_returns  # the 1/n of both variances cancels
    corr = None
    denominator = var_rewards * var_advantages
    if not (constant[2] or constant[3]) and denominator > 0.0 and math.isfinite(denominator):
        corr = min(1.0, max(-1.0, gram[2][3] / math.sqrt(denominator)))
    return ev, corr


def mean_or_none(values) -> float | None:
    """The mean of a sequence of floats, or None when it is empty."""
    return math.fsum(values) / len(values) if len(values) else None


@dataclass(slots=True)
class EpochStats:
    """Minibatch results of one epoch, reduced as they arrive to what the record's fields need."""

    pg_loss_sum: float = 0.0
    v_loss_sum: float = 0.0
    kl_sum: float = 0.0
    kl_max: float = -math.inf
    grad_norm_max: float = 0.0
    entropies: list[float] = field(default_factory=list)  # kept whole: the std is taken in two passes
    clipped: float = 0  # samples clipped (a sum of clip fraction x minibatch size)
    samples: int = 0

    def add(
        self, policy_loss: float, value_loss: float, entropy: float, kl: float, grad_norm: float,
        clipped: float, samples: int,
    ) -> None:
        """Take one minibatch's numbers: its mean losses, mean entropy and k3 KL, its pre-clip gradient
        norm, and how many of its `samples` were clipped (a count, or clip fraction x samples)."""
        self.pg_loss_sum += policy_loss
        self.v_loss_sum += value_loss
        self.kl_sum += kl
        if kl > self.kl_max:
            self.kl_max = kl
        if grad_norm > self.grad_norm_max:
            self.grad_norm_max = grad_norm
        self.entropies.append(entropy)
        self.clipped += clipped
        self.samples += samples

    @property
    def num_minibatches(self) -> int:
        """Minibatches run this epoch (fewer than planned after a target-KL stop)."""
        return len(self.entropies)

    def entropy_mean_std(self) -> tuple[float, float]:
        """Mean and population std (SPEC §1) of the per-minibatch mean entropies."""
        entropies = self.entropies
        if len(entropies) == 1:
            return entropies[0], 0.0
        n = len(entropies)
        mean = sum(entropies) / n
        return mean, math.sqrt(sum((e - mean) ** 2 for e in entropies) / n)

    def values(self) -> tuple[float, float, float, float, float, float, float, float]:
        """(policy_loss, value_loss, kl_divergence, kl_divergence_max, clip_fraction,
        batch_entropy_mean, batch_entropy_std, grad_norm_max): the minibatch-derived fields of SPEC §1."""
        n = len(self.entropies)
        entropy_mean, entropy_std = self.entropy_mean_std()
        kl_mean = self.kl_sum / n
        kl_max = self.kl_max
        return (
            self.pg_loss_sum / n,
            self.v_loss_sum / n,
            kl_mean if kl_mean > 0.0 else 0.0,  # the k3 estimator is >= 0; rounding can leave -1e-17
            kl_max if kl_max > 0.0 else 0.0,
            self.clipped / self.samples,
            entropy_mean,
            entropy_std,
            self.grad_norm_max,
        )

    def fields(self) -> dict[str, float]:
        """`values()` by field name."""
        return dict(zip(EPOCH_STAT_FIELDS, self.values()))


EPOCH_STAT_FIELDS = (
    "policy_loss", "value_loss", "kl_divergence", "kl_divergence_max", "clip_fraction",
    "batch_entropy_mean", "batch_entropy_std", "grad_norm_max",
)
"""The record fields `EpochStats.values()` gives, in its order."""
