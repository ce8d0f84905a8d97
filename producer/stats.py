"""Per-epoch health statistics exactly as SPEC §1 defines them.

`EpochStats` accumulates what each minibatch's forward/backward pass already computed (loss terms,
entropy, k3 KL, clip count, pre-clip gradient norm), so telemetry adds no extra pass over the data.
The dataset-level statistics (explained variance, reward/advantage correlation) depend only on the
dataset, so the harness computes them once per cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .ppo import MinibatchResult

__all__ = ["EpochStats", "explained_variance", "pearson_or_none", "mean_or_none"]


def explained_variance(returns: np.ndarray, values: np.ndarray) -> float | None:
    """`1 - Var(returns - values) / Var(returns)`; None when Var(returns) is 0."""
    var_returns = float(np.var(returns))
    if var_returns == 0.0:
        return None
    return 1.0 - float(np.var(returns - values)) / var_returns


def pearson_or_none(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation of two samples; None when either variance is zero (or not finite)."""
    xc = x - x.mean()
    yc = y - y.mean()
    sxx = float(xc @ xc)
    syy = float(yc @ yc)
    if sxx == 0.0 or syy == 0.0 or not math.isfinite(sxx * syy):
        return None
    r = float(xc @ yc) / math.sqrt(sxx * syy)
    return min(1.0, max(-1.0, r))  # rounding can step just outside [-1, 1]


def mean_or_none(values) -> float | None:
    """The mean of a sequence, or None when it is empty."""
    return float(np.mean(values)) if len(values) else None


@dataclass(slots=True)
class EpochStats:
    """Minibatch results of one epoch, reduced to the record's fields."""

    pg_losses: list[float] = field(default_factory=list)
    v_losses: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    kls: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    clipped: int = 0
    samples: int = 0

    def add(self, result: MinibatchResult, batch_size: int) -> None:
        """Take one minibatch's result."""
        self.pg_losses.append(result.pg_loss)
        self.v_losses.append(result.v_loss)
        self.entropies.append(result.entropy)
        self.kls.append(result.approx_kl)
        self.grad_norms.append(result.grad_norm)
        self.clipped += result.clipped
        self.samples += batch_size

    @property
    def num_minibatches(self) -> int:
        """Minibatches run this epoch (fewer than planned after a target-KL stop)."""
        return len(self.kls)

    def fields(self) -> dict[str, float]:
        """The minibatch-derived fields of SPEC §1, by field name."""
        # plain Python on a handful of floats: numpy's per-call overhead would dominate here
        n = len(self.kls)
        entropies = self.entropies
        entropy_mean = sum(entropies) / n
        entropy_var = sum((e - entropy_mean) ** 2 for e in entropies) / n  # population variance (SPEC §1)
        return {
            "policy_loss": sum(self.pg_losses) / n,
            "value_loss": sum(self.v_losses) / n,
            # the k3 estimator is >= 0; rounding can leave -1e-17
            "kl_divergence": max(0.0, sum(self.kls) / n),
            "kl_divergence_max": max(0.0, max(self.kls)),
            "clip_fraction": self.clipped / self.samples,
            "batch_entropy_mean": entropy_mean,
            "batch_entropy_std": math.sqrt(entropy_var),
            "grad_norm_max": max(self.grad_norms),
        }
