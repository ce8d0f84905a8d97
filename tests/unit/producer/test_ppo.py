"""PPO's numerics (`producer.ppo`): hand-written gradients, minibatch statistics, sampling and Adam.

Every expectation here is computed independently of the code under test: the test has its own small
forward pass built from the weight views (`a_w1` ... `c_b3`, `log_std`), its own loss, and its own Adam.
Gradients and statistics are checked for both policy heads: the softmax over Discrete actions and the
diagonal Gaussian over Box actions (`continuous`).
"""

from __future__ import annotations

import numpy as np
import pytest

from producer.harness import HarnessConfig, TrainingHarness
from producer.ppo import ActorCritic, Adam

OBS_DIM, N_ACTIONS, HIDDEN, BATCH = 5, 3, 8, 24
ACTION_DIM = 2  # of the continuous agents
HEADS = [pytest.param(False, id="categorical"), pytest.param(True, id="gaussian")]


# ------------------------------------------------------------------------- an independent forward


def actor_logits(agent: ActorCritic, obs: np.ndarray) -> np.ndarray:
    h = np.tanh(obs @ agent.a_w1 + agent.a_b1)
    h = np.tanh(h @ agent.a_w2 + agent.a_b2)
    return h @ agent.a_w3 + agent.a_b3


def critic_values(agent: ActorCritic, obs: np.ndarray) -> np.ndarray:
    h = np.tanh(obs @ agent.c_w1 + agent.c_b1)
    h = np.tanh(h @ agent.c_w2 + agent.c_b2)
    return (h @ agent.c_w3 + agent.c_b3)[:, 0]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def gaussian_log_prob_entropy(mean: np.ndarray, log_std: np.ndarray, actions: np.ndarray):
    """log N(a; mean, diag(exp(log_std))^2) and the Gaussian's differential entropy, per row."""
    var = np.exp(2.0 * log_std)
    logp = (-((actions - mean) ** 2) / (2.0 * var) - 0.5 * np.log(2.0 * np.pi * var)).sum(axis=1)
    entropy = np.full(len(mean), 0.5 * np.log(2.0 * np.pi * np.e * var).sum())
    return logp, entropy


def reference_log_prob_entropy(agent: ActorCritic, obs: np.ndarray, actions: np.ndarray):
    """log pi(a|s) and the entropy per row, for either head, from scratch."""
    if agent.continuous:
        return gaussian_log_prob_entropy(actor_logits(agent, obs), agent.log_std, actions)
    p = softmax(actor_logits(agent, obs))
    return np.log(p[np.arange(len(actions)), actions]), -(p * np.log(p)).sum(axis=1)


def reference_loss(agent, obs, actions, old_logp, adv, returns, clip, ent_coef, vf_coef) -> float:
    """The PPO objective as the module docstring (and CleanRL) writes it, from scratch."""
    logp, entropy = reference_log_prob_entropy(agent, obs, actions)
    ratio = np.exp(logp - old_logp)
    pg = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - clip, 1 + clip)).mean()
    v = 0.5 * ((critic_values(agent, obs) - returns) ** 2).mean()
    return float(pg - ent_coef * entropy.mean() + vf_coef * v)


def random_agent(seed: int, continuous: bool = False) -> ActorCritic:
    """An agent with every parameter random and O(1), so no layer's gradient is negligible."""
    action_count = ACTION_DIM if continuous else N_ACTIONS
    agent = ActorCritic(OBS_DIM, action_count, hidden=HIDDEN, seed=seed, continuous=continuous)
    agent.params[:] = np.random.default_rng(seed + 1000).normal(0.0, 0.6, agent.params.size)
    return agent


def random_actions(agent: ActorCritic, rng: np.random.Generator) -> np.ndarray:
    if agent.continuous:  # some far outside [-1, 1]: stored actions are unclipped samples
        return rng.normal(size=(BATCH, agent.n_actions)) * 1.5
    return rng.integers(0, N_ACTIONS, BATCH)


def random_minibatch(agent: ActorCritic, seed: int, regime: str):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(BATCH, OBS_DIM))
    actions = random_actions(agent, rng)
    new_logp, _ = agent.log_prob_entropy(obs, actions)
    adv = rng.normal(size=BATCH)
    if regime == "inside_clip":
        shift = rng.uniform(-0.1, 0.1, BATCH)  # ratio in [0.905, 1.105], well inside [0.8, 1.2]
    elif regime == "outside_clip":
        # ratios e and 1/e, with each sign of advantage: both the clipped (zero-gradient) and the
        # unclipped-and-larger (gradient) branch of the surrogate occur
        shift = np.tile([1.0, -1.0], BATCH // 2)
        adv = np.tile([1.0, 1.0, -1.0, -1.0], BATCH // 4) * rng.uniform(0.5, 2.0, BATCH)
    else:
        shift = np.where(rng.random(BATCH) < 0.5, rng.uniform(-0.1, 0.1, BATCH), rng.choice([-1.0, 1.0], BATCH))
    old_logp = new_logp + shift
    returns = rng.normal(size=BATCH) * 2.0
    return obs, actions, old_logp, adv, returns


REGIMES = {
    # regime: (ent_coef, vf_coef)
    "inside_clip": (0.0, 0.0),
    "outside_clip": (0.0, 0.0),
    "entropy_and_value": (0.07, 0.6),
}


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return float(np.linalg.norm(a - b) / scale) if scale > 0 else 0.0


# ------------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("continuous", HEADS)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("regime", list(REGIMES))
def test_loss_and_grad_matches_central_finite_differences(regime, seed, continuous):
    agent = random_agent(seed, continuous)
    batch = random_minibatch(agent, seed, regime)
    ent_coef, vf_coef = REGIMES[regime]
    clip = 0.2
    result = agent.loss_and_grad(*batch, clip, ent_coef, vf_coef)
    analytic = agent.grad.copy()
    assert result.loss == pytest.approx(reference_loss(agent, *batch, clip, ent_coef, vf_coef), rel=1e-12, abs=1e-12)

    eps = 1e-6
    numeric = np.empty_like(agent.params)
    for i in range(agent.params.size):
        saved = agent.params[i]
        agent.params[i] = saved + eps
        plus = reference_loss(agent, *batch, clip, ent_coef, vf_coef)
        agent.params[i] = saved - eps
        minus = reference_loss(agent, *batch, clip, ent_coef, vf_coef)
        agent.params[i] = saved
        numeric[i] = (plus - minus) / (2 * eps)

    actor = slice(0, _actor_size(agent))
    assert np.linalg.norm(numeric[actor]) > 1e-3, "the actor gradient should not vanish in this regime"
    assert relative_error(analytic, numeric) < 1e-6
    assert relative_error(analytic[actor], numeric[actor]) < 1e-6
    if vf_coef > 0:
        critic = slice(_actor_size(agent), None)
        assert np.linalg.norm(numeric[critic]) > 1e-3
        assert relative_error(analytic[critic], numeric[critic]) < 1e-6
    else:
        assert not analytic[_actor_size(agent):].any()
    if continuous:  # log_std: the last entries of the actor's part, through the surrogate and the bonus
        log_std = slice(_actor_size(agent) - ACTION_DIM, _actor_size(agent))
        assert np.linalg.norm(numeric[log_std]) > 1e-3
        assert relative_error(analytic[log_std], numeric[log_std]) < 1e-6


def _actor_size(agent: ActorCritic) -> int:
    """Entries of `params` the actor owns: its layers, then (Gaussian head) log_std."""
    layers = sum(v.size for v in (agent.a_w1, agent.a_b1, agent.a_w2, agent.a_b2, agent.a_w3, agent.a_b3))
    return layers + (agent.log_std.size if agent.continuous else 0)


@pytest.mark.parametrize("continuous", HEADS)
def test_samples_in_the_clipped_branch_contribute_no_policy_gradient(continuous):
    agent = random_agent(3, continuous)
    rng = np.random.default_rng(3)
    obs = rng.normal(size=(BATCH, OBS_DIM))
    actions = random_actions(agent, rng)
    new_logp, _ = agent.log_prob_entropy(obs, actions)
    # ratio = e > 1 + clip with A > 0 and ratio = 1/e < 1 - clip with A < 0: the clipped term is the max
    old_logp = new_logp - np.tile([1.0, -1.0], BATCH // 2)
    adv = np.tile([1.0, -1.0], BATCH // 2)
    agent.loss_and_grad(obs, actions, old_logp, adv, np.zeros(BATCH), 0.2, 0.0, 0.0)
    assert not agent.grad.any()


# ---------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("continuous", HEADS)
@pytest.mark.parametrize("regime", list(REGIMES))
def test_minibatch_statistics_equal_direct_computations(regime, continuous):
    agent = random_agent(5, continuous)
    obs, actions, old_logp, adv, returns = random_minibatch(agent, 5, regime)
    ent_coef, vf_coef = REGIMES[regime]
    clip = 0.2
    result = agent.loss_and_grad(obs, actions, old_logp, adv, returns, clip, ent_coef, vf_coef)

    new_logp, _ = agent.log_prob_entropy(obs, actions)
    r = np.exp(new_logp - old_logp)
    assert result.approx_kl == pytest.approx(np.mean((r - 1) - np.log(r)), rel=1e-12)
    assert result.clipped == int(np.sum(np.abs(r - 1) > clip))

    _, entropy = reference_log_prob_entropy(agent, obs, actions)  # independent of the module's forward
    assert result.entropy == pytest.approx(entropy.mean(), rel=1e-12)
    pg = np.maximum(-adv * r, -adv * np.clip(r, 1 - clip, 1 + clip)).mean()
    assert result.pg_loss == pytest.approx(pg, rel=1e-12)
    assert result.v_loss == pytest.approx(0.5 * np.mean((critic_values(agent, obs) - returns) ** 2), rel=1e-12)
    assert result.grad_norm == pytest.approx(np.linalg.norm(agent.grad), rel=1e-12)


def test_clip_count_is_zero_inside_and_full_far_outside_the_clip_range():
    agent = random_agent(6)
    inside = agent.loss_and_grad(*random_minibatch(agent, 6, "inside_clip"), 0.2, 0.0, 0.0)
    outside = agent.loss_and_grad(*random_minibatch(agent, 6, "outside_clip"), 0.2, 0.0, 0.0)
    assert inside.clipped == 0
    assert outside.clipped == BATCH


def test_log_prob_entropy_matches_an_independent_softmax():
    agent = random_agent(7)
    rng = np.random.default_rng(7)
    obs = rng.normal(size=(BATCH, OBS_DIM))
    actions = rng.integers(0, N_ACTIONS, BATCH)
    logp, entropy = agent.log_prob_entropy(obs, actions)
    p = softmax(actor_logits(agent, obs))
    np.testing.assert_allclose(logp, np.log(p[np.arange(BATCH), actions]), rtol=1e-12)
    np.testing.assert_allclose(entropy, -(p * np.log(p)).sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(agent.value(obs), critic_values(agent, obs), rtol=1e-12)


def test_reported_grad_norm_is_the_norm_before_the_harness_clips(monkeypatch):
    config = HarnessConfig(
        num_envs=2, num_steps=16, update_epochs=2, total_steps=64, num_minibatches=2,
        max_grad_norm=1e-3,  # every gradient gets clipped
    )
    records: list[dict] = []
    harness = TrainingHarness(config, publish=records.append)
    seen: list[tuple[float, float]] = []  # (reported grad_norm, norm of agent.grad right after the pass)
    stepped: list[float] = []  # norm of the gradient Adam received
    original_loss, original_step = harness.agent.loss_and_grad, harness.optimizer.step

    def recording_loss(*args, **kwargs):
        result = original_loss(*args, **kwargs)
        seen.append((result.grad_norm, float(np.linalg.norm(harness.agent.grad))))
        return result

    def recording_step(params, grad):
        stepped.append(float(np.linalg.norm(grad)))
        original_step(params, grad)

    monkeypatch.setattr(harness.agent, "loss_and_grad", recording_loss)
    monkeypatch.setattr(harness.optimizer, "step", recording_step)
    try:
        harness.run_ppo()
    finally:
        harness.close()

    assert len(seen) == len(stepped) == 2 * 2 * 2  # cycles x epochs x minibatches
    for (reported, direct), applied in zip(seen, stepped):
        assert reported == pytest.approx(direct, rel=1e-12)
        assert reported > config.max_grad_norm
        assert applied == pytest.approx(config.max_grad_norm, rel=1e-3)  # the clip happened after
    per_epoch = [max(r for r, _ in seen[i : i + 2]) for i in range(0, len(seen), 2)]
    assert [r["grad_norm_max"] for r in records] == pytest.approx(per_epoch, rel=1e-12)


# ------------------------------------------------------------------------------------- sampling


def test_policy_samples_actions_with_softmax_frequencies():
    agent = random_agent(8)
    distinct = np.random.default_rng(8).normal(size=(4, OBS_DIM))
    per_obs = 5000
    obs = np.repeat(distinct, per_obs, axis=0)  # 20,000 samples
    actions, logp, values = agent.policy(obs, np.random.default_rng(123))

    p = softmax(actor_logits(agent, distinct))
    assert p.min() > 0.02  # every cell has a healthy expected count
    chi2 = 0.0
    for k in range(len(distinct)):
        counts = np.bincount(actions[k * per_obs : (k + 1) * per_obs], minlength=N_ACTIONS)
        expected = per_obs * p[k]
        chi2 += float(((counts - expected) ** 2 / expected).sum())
    dof = len(distinct) * (N_ACTIONS - 1)
    assert chi2 < dof + 6 * np.sqrt(2 * dof)  # 32: about chi-square(8)'s 99.99th percentile
    np.testing.assert_allclose(logp, np.log(softmax(actor_logits(agent, obs))[np.arange(len(obs)), actions]), rtol=1e-12)
    np.testing.assert_allclose(values, critic_values(agent, obs), rtol=1e-12)


def test_policy_with_the_same_generator_seed_samples_the_same_actions():
    agent = random_agent(9)
    obs = np.random.default_rng(9).normal(size=(100, OBS_DIM))
    first = agent.policy(obs, np.random.default_rng(4))[0]
    second = agent.policy(obs, np.random.default_rng(4))[0]
    np.testing.assert_array_equal(first, second)


# --------------------------------------------------------------------------- the Gaussian head


def test_gaussian_log_prob_matches_the_density_and_entropy_the_closed_form():
    agent = random_agent(11, continuous=True)
    rng = np.random.default_rng(11)
    obs = rng.normal(size=(BATCH, OBS_DIM))
    actions = random_actions(agent, rng)
    logp, entropy = agent.log_prob_entropy(obs, actions)

    mean, std = actor_logits(agent, obs), np.exp(agent.log_std)
    density = np.prod(np.exp(-0.5 * ((actions - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi)), axis=1)
    np.testing.assert_allclose(logp, np.log(density), rtol=1e-12)
    # sum over action dimensions of 0.5 ln(2 pi e) + log_std, the same for every state
    np.testing.assert_allclose(entropy, (0.5 * np.log(2 * np.pi * np.e) + agent.log_std).sum(), rtol=1e-12)


def test_gaussian_entropy_is_minus_the_expected_log_prob_of_its_samples():
    agent = random_agent(12, continuous=True)
    obs = np.repeat(np.random.default_rng(12).normal(size=(1, OBS_DIM)), 200_000, axis=0)
    actions, logp, _ = agent.policy(obs, np.random.default_rng(5))
    _, entropy = agent.log_prob_entropy(obs[:1], actions[:1])
    standard_error = logp.std() / np.sqrt(len(logp))
    assert abs(-logp.mean() - entropy[0]) < 6 * standard_error


def test_gaussian_entropy_is_negative_for_a_narrow_policy_and_reported_so():
    agent = random_agent(13, continuous=True)
    agent.log_std[:] = -3.0  # std 0.05: entropy 2 x (1.419 - 3) < 0
    batch = random_minibatch(agent, 13, "inside_clip")
    result = agent.loss_and_grad(*batch, 0.2, 0.01, 0.5)
    assert result.entropy == pytest.approx(2 * (0.5 * np.log(2 * np.pi * np.e) - 3.0), rel=1e-12)
    assert result.entropy < 0 and np.isfinite(result.loss)


def test_gaussian_entropy_bonus_alone_pushes_every_log_std_up_by_ent_coef():
    agent = random_agent(14, continuous=True)
    obs, actions, old_logp, _, _ = random_minibatch(agent, 14, "inside_clip")
    # zero advantages and vf_coef: the entropy bonus is the loss's only term
    agent.loss_and_grad(obs, actions, old_logp, np.zeros(BATCH), np.zeros(BATCH), 0.2, 0.05, 0.0)
    np.testing.assert_array_equal(agent.grad[_actor_size(agent) - ACTION_DIM : _actor_size(agent)], [-0.05, -0.05])
    assert not np.delete(agent.grad, np.s_[_actor_size(agent) - ACTION_DIM : _actor_size(agent)]).any()


def test_gaussian_policy_samples_unclipped_actions_around_the_mean_with_exp_log_std():
    agent = random_agent(15, continuous=True)
    agent.log_std[:] = [0.5, -1.0]
    distinct = np.random.default_rng(15).normal(size=(3, OBS_DIM))
    per_obs = 20_000
    obs = np.repeat(distinct, per_obs, axis=0)
    actions, logp, values = agent.policy(obs, np.random.default_rng(6))
    assert actions.shape == (len(obs), ACTION_DIM) and actions.dtype == np.float64
    mean, std = actor_logits(agent, distinct), np.exp(agent.log_std)
    for k in range(len(distinct)):
        sample = actions[k * per_obs : (k + 1) * per_obs]
        np.testing.assert_array_less(np.abs(sample.mean(axis=0) - mean[k]), 6 * std / np.sqrt(per_obs))
        np.testing.assert_allclose(sample.std(axis=0), std, rtol=0.03)
    assert np.abs(actions).max() > 3.0  # nothing clips a sample: bounds are the environment's business
    expected_logp, _ = gaussian_log_prob_entropy(actor_logits(agent, obs), agent.log_std, actions)
    np.testing.assert_allclose(logp, expected_logp, rtol=1e-12)
    np.testing.assert_allclose(values, critic_values(agent, obs), rtol=1e-12)


def test_continuous_agent_starts_with_log_std_zero_in_params_and_the_discrete_layer_init():
    gaussian = ActorCritic(OBS_DIM, ACTION_DIM, hidden=16, seed=42, continuous=True)
    categorical = ActorCritic(OBS_DIM, ACTION_DIM, hidden=16, seed=42)
    assert gaussian.params.size == categorical.params.size + ACTION_DIM
    assert np.shares_memory(gaussian.log_std, gaussian.params) and not gaussian.log_std.any()
    for name in ("a_w1", "a_w2", "a_w3", "c_w1", "c_w2", "c_w3"):  # same orthogonal draws, same gains
        np.testing.assert_array_equal(getattr(gaussian, name), getattr(categorical, name))
    assert np.abs(gaussian.a_w3).max() < 0.02  # gain 0.01: the mean starts near 0


# ------------------------------------------------------------------------------------------ Adam


def test_adam_step_equals_the_torch_formula_for_three_steps():
    rng = np.random.default_rng(10)
    size, lr, b1, b2, eps = 50, 3e-3, 0.9, 0.999, 1e-5
    params = rng.normal(size=size)
    reference = params.copy()
    grads = [rng.normal(size=size) * scale for scale in (1.0, 0.01, 5.0)]
    optimizer = Adam(size, lr, betas=(b1, b2), eps=eps)
    m = np.zeros(size)
    v = np.zeros(size)
    for t, g in enumerate(grads, start=1):
        optimizer.step(params, g)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        reference = reference - lr * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(params, reference, rtol=1e-12, atol=1e-15)
    assert optimizer.t == 3


def test_adam_first_step_moves_each_parameter_by_about_lr_against_its_gradient_sign():
    params = np.zeros(4)
    Adam(4, 0.01).step(params, np.array([3.0, -2.0, 0.5, -100.0]))
    np.testing.assert_allclose(params, [-0.01, 0.01, -0.01, 0.01], rtol=1e-4)


# ---------------------------------------------------------------------------------- initialisation


def test_same_seed_gives_identical_parameters_and_different_seed_different():
    a = ActorCritic(OBS_DIM, N_ACTIONS, hidden=16, seed=42)
    b = ActorCritic(OBS_DIM, N_ACTIONS, hidden=16, seed=42)
    c = ActorCritic(OBS_DIM, N_ACTIONS, hidden=16, seed=43)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)


def test_weight_views_share_memory_with_the_flat_parameter_vector():
    agent = ActorCritic(OBS_DIM, N_ACTIONS, hidden=16, seed=0)
    views = (agent.a_w1, agent.a_b1, agent.a_w2, agent.a_b2, agent.a_w3, agent.a_b3,
             agent.c_w1, agent.c_b1, agent.c_w2, agent.c_b2, agent.c_w3, agent.c_b3)
    assert sum(v.size for v in views) == agent.params.size
    for view in views:
        assert np.shares_memory(view, agent.params)
    agent.params[:] = 0.0
    assert not agent.a_w3.any() and not agent.c_b3.any()
