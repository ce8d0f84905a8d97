"""Per-epoch statistics (`producer.stats`) against direct computations on known arrays (SPEC §1)."""

from __future__ import annotations

import numpy as np
import pytest

from producer.stats import EpochStats, explained_variance, mean_or_none, pearson_or_none


# ------------------------------------------------------------------------------- explained variance


@pytest.mark.parametrize("seed", range(4))
def test_explained_variance_equals_one_minus_residual_over_return_variance(seed):
    rng = np.random.default_rng(seed)
    returns = rng.normal(size=200) * 3 + 1
    values = returns + rng.normal(size=200)
    expected = 1.0 - np.var(returns - values) / np.var(returns)
    assert explained_variance(returns, values) == pytest.approx(expected, rel=1e-12)


def test_explained_variance_on_known_arrays():
    returns = np.array([1.0, 2.0, 3.0, 4.0])  # var 1.25
    assert explained_variance(returns, returns) == 1.0
    assert explained_variance(returns, np.zeros(4)) == 0.0
    # residual [1, 1, 1, 1] has variance 0: a constant offset is fully "explained"
    assert explained_variance(returns, returns - 1.0) == 1.0
    # residual [-1, 1, -1, 1]: var 1 -> 1 - 1/1.25
    assert explained_variance(returns, returns + np.array([1.0, -1.0, 1.0, -1.0])) == pytest.approx(0.2)


def test_explained_variance_can_be_negative_and_never_exceeds_one():
    returns = np.array([1.0, -1.0, 1.0, -1.0])
    assert explained_variance(returns, -3 * returns) == pytest.approx(1 - 16.0)
    rng = np.random.default_rng(1)
    for _ in range(50):
        r, v = rng.normal(size=10), rng.normal(size=10)
        assert explained_variance(r, v) <= 1.0


def test_explained_variance_is_none_when_returns_are_constant():
    assert explained_variance(np.full(5, 3.0), np.arange(5.0)) is None


# ---------------------------------------------------------------------------------------- Pearson


@pytest.mark.parametrize("seed", range(4))
def test_pearson_equals_numpy_corrcoef(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=300)
    y = 0.3 * x + rng.normal(size=300)
    assert pearson_or_none(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)


@pytest.mark.parametrize("x, y", [
    (np.full(6, 2.0), np.arange(6.0)),
    (np.arange(6.0), np.full(6, -1.0)),
    (np.zeros(6), np.zeros(6)),
    (np.array([1.0]), np.array([2.0])),
])
def test_pearson_is_none_when_either_variance_is_zero(x, y):
    assert pearson_or_none(x, y) is None


def test_pearson_of_perfectly_linear_samples_is_clamped_to_plus_or_minus_one():
    x = np.linspace(0.1, 1.7, 1001) * 1e-3 + 1e5  # large offset: the centred products round
    for sign in (1.0, -1.0):
        r = pearson_or_none(x, sign * 3.3 * x + 0.7)
        assert r is not None and -1.0 <= r <= 1.0
        assert r == pytest.approx(sign, abs=1e-6)
    for seed in range(200):
        x = np.random.default_rng(seed).normal(size=7) * 1e-3 + 1e3
        r = pearson_or_none(x, 5 * x)
        assert r is not None and -1.0 <= r <= 1.0


def test_mean_or_none():
    assert mean_or_none(()) is None
    assert mean_or_none([]) is None
    assert mean_or_none((1.0, 2.0, 6.0)) == 3.0


# -------------------------------------------------------------------------------------- EpochStats


KNOWN = [
    # pg, v, entropy, kl, clipped, grad_norm, batch size
    (0.10, 2.0, 0.69, 0.004, 3, 1.5, 16),
    (-0.20, 1.0, 0.60, 0.010, 0, 0.4, 16),
    (0.05, 4.0, 0.55, 0.001, 7, 2.5, 16),
    (0.00, 0.5, 0.40, 0.020, 1, 0.9, 12),  # a short last minibatch
]


def test_epoch_stats_fields_equal_direct_computations_on_known_arrays():
    stats = EpochStats()
    for pg, v, ent, kl, clipped, gn, size in KNOWN:
        stats.add(pg, v, ent, kl, gn, clipped, size)
    cols = np.array([row[:6] for row in KNOWN], dtype=float).T
    pg, v, ent, kl, clipped, gn = cols
    samples = sum(row[6] for row in KNOWN)
    fields = stats.fields()
    assert stats.num_minibatches == 4
    assert fields["policy_loss"] == pytest.approx(pg.mean(), rel=1e-12)
    assert fields["value_loss"] == pytest.approx(v.mean(), rel=1e-12)
    assert fields["kl_divergence"] == pytest.approx(kl.mean(), rel=1e-12)
    assert fields["kl_divergence_max"] == 0.020
    assert fields["clip_fraction"] == pytest.approx(11 / samples, rel=1e-12)
    assert fields["batch_entropy_mean"] == pytest.approx(ent.mean(), rel=1e-12)
    assert fields["batch_entropy_std"] == pytest.approx(np.std(ent, ddof=0), rel=1e-12)
    assert fields["batch_entropy_std"] != pytest.approx(np.std(ent, ddof=1), rel=1e-6)  # population, not sample
    assert fields["grad_norm_max"] == 2.5
    # hand-computed: mean entropy 0.56, deviations .13 .04 -.01 -.16 -> population var 0.01105
    assert fields["batch_entropy_mean"] == pytest.approx(0.56)
    assert fields["batch_entropy_std"] == pytest.approx(np.sqrt(0.01105))
    assert fields["clip_fraction"] == pytest.approx(11 / 60)
    assert set(fields) == {
        "policy_loss", "value_loss", "kl_divergence", "kl_divergence_max", "clip_fraction",
        "batch_entropy_mean", "batch_entropy_std", "grad_norm_max",
    }


def test_epoch_stats_of_one_minibatch_has_zero_entropy_std_and_max_equal_to_mean():
    stats = EpochStats()
    stats.add(0.1, 1.0, 0.5, 0.03, 1.2, 2, 8)
    fields = stats.fields()
    assert fields["batch_entropy_std"] == 0.0
    assert fields["kl_divergence_max"] == fields["kl_divergence"] == 0.03
    assert fields["clip_fraction"] == 0.25


def test_epoch_stats_kl_max_is_at_least_the_mean_and_both_are_not_negative():
    rng = np.random.default_rng(0)
    stats = EpochStats()
    for _ in range(10):
        # the k3 estimator is >= 0 analytically; rounding can give -1e-17
        stats.add(0.0, 0.0, 1.0, float(rng.choice([0.0, -1e-17, 1e-3])), 0.0, 0, 4)
    fields = stats.fields()
    assert fields["kl_divergence"] >= 0.0
    assert fields["kl_divergence_max"] >= fields["kl_divergence"]


def test_epoch_stats_values_are_plain_floats():
    stats = EpochStats()
    for pg, v, ent, kl, clipped, gn, size in KNOWN:
        stats.add(pg, v, ent, kl, gn, clipped, size)
    for name, value in stats.fields().items():
        assert type(value) is float, name  # the validator wants JSON numbers, not numpy scalars


def test_constant_rewards_that_do_not_centre_exactly_give_null_correlation():
    from producer.stats import dataset_statistics

    rewards = np.full(256, 0.1)  # the mean of 256 x 0.1 is not exactly 0.1 in binary
    advantages = np.random.default_rng(0).normal(size=256)
    returns = np.random.default_rng(1).normal(size=256)
    assert pearson_or_none(rewards, advantages) is None
    assert dataset_statistics(returns, returns * 0.5, rewards, advantages)[1] is None
    assert explained_variance(np.full(256, 0.1), advantages) is None


def test_dataset_statistics_equal_the_separate_definitions():
    from producer.stats import dataset_statistics

    rng = np.random.default_rng(5)
    returns, values, rewards, advantages = rng.normal(size=(4, 300))
    ev, corr = dataset_statistics(returns, values, rewards, advantages)
    assert ev == pytest.approx(1 - np.var(returns - values) / np.var(returns), rel=1e-12)
    assert corr == pytest.approx(np.corrcoef(rewards, advantages)[0, 1], rel=1e-12)
