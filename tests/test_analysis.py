"""Notebook 7's computations against cases with known answers: the aggregate posterior of
posteriors equal to the prior, identical posteriors, the best diagonal Gaussian of the
linear-Gaussian model in closed form."""

import json
import math
from pathlib import Path

import pytest
import torch

from vae_tutorial import analysis, losses
from vae_tutorial.linear_gaussian import LinearGaussianVAE

D64 = torch.float64
RESULTS = Path(__file__).resolve().parent.parent / "results"


def test_aggregate_of_prior_posteriors_is_the_prior():
    """Every q(z|x) = N(0, I): the aggregate is the prior, log q(z) = log p(z) everywhere, and
    the estimated KL from aggregate to prior is exactly 0."""
    means, log_vars = torch.zeros(50, 6, dtype=D64), torch.zeros(50, 6, dtype=D64)
    z = torch.randn(300, 6, dtype=D64)
    torch.testing.assert_close(analysis.aggregate_log_density(z, means, log_vars),
                               losses.standard_normal_log_prob(z).sum(-1))
    kl, se = analysis.aggregate_kl(means, log_vars, num_samples=500)
    assert abs(kl) < 1e-12 and se < 1e-12
    assert analysis.hole_scores(z, means, log_vars).abs().max() < 1e-12


def test_identical_posteriors_give_the_closed_form_kl():
    """All q(z|x) = N(m, v): the aggregate is that Gaussian and its KL to the prior is
    gaussian_kl(m, log v), within 4 Monte Carlo standard errors."""
    m = torch.tensor([[1.0, -0.5, 0.2]], dtype=D64)
    lv = torch.tensor([[-1.0, 0.3, -2.0]], dtype=D64)
    kl, se = analysis.aggregate_kl(m.expand(20, 3), lv.expand(20, 3), num_samples=4000)
    exact = losses.gaussian_kl(m, lv).item()
    assert abs(kl - exact) < 4 * se + 1e-9 and se > 0


def test_two_narrow_posteriors_make_a_two_bump_aggregate():
    """q(z) of two narrow posteriors at +-2 equals half of each at its centre, and the prior's
    most likely point, 0, is a hole: log q(0) - log p(0) is very negative there."""
    means = torch.tensor([[2.0], [-2.0]], dtype=D64)
    log_vars = torch.full((2, 1), math.log(0.1 ** 2), dtype=D64)
    at_bump = analysis.aggregate_log_density(torch.tensor([[2.0]], dtype=D64), means, log_vars)
    expected = math.log(0.5) + losses.normal_log_prob(
        torch.tensor(2.0, dtype=D64), torch.tensor(2.0, dtype=D64), log_vars[0, 0]).item()
    assert abs(at_bump.item() - expected) < 1e-9
    score = analysis.hole_scores(torch.zeros(1, 1, dtype=D64), means, log_vars)
    assert score.item() < -100


def test_sample_aggregate_moments():
    """Draws of the aggregate have its mean (the mean of the means) and per-dimension variance
    (variance of the means plus the mean posterior variance)."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(40, 3, generator=g, dtype=D64)
    log_vars = torch.randn(40, 3, generator=g, dtype=D64) - 1
    z = analysis.sample_aggregate(means, log_vars, 200_000, torch.Generator().manual_seed(1))
    var = means.var(0, unbiased=False) + log_vars.exp().mean(0)
    assert (z.mean(0) - means.mean(0)).abs().max() < 5 * (var / 200_000).sqrt().max()
    assert ((z.var(0) / var) - 1).abs().max() < 0.02


def _non_orthogonal():
    """A linear-Gaussian model whose exact posterior has a correlated (non-diagonal) covariance."""
    model = LinearGaussianVAE(data_dim=5, latent_dim=2, sigma=0.7, seed=3)
    with torch.no_grad():
        model.W[:, 1] += 0.8 * model.W[:, 0]  # correlate the two columns
    return model


def test_refine_posterior_reaches_the_best_diagonal_gaussian():
    """On the linear-Gaussian model the best diagonal Gaussian is known: the posterior's mean,
    and variances 1 / diag(posterior precision). refine_posterior gets there from the
    (poor) encoder, and its ELBO reaches the closed-form optimum."""
    model = _non_orthogonal()
    torch.manual_seed(0)
    x = model.sample(4)
    mean, log_var = analysis.refine_posterior(model, x, steps=600, lr=0.05, num_samples=16)
    s2 = model.log_sigma.exp() ** 2
    precision = torch.eye(2, dtype=D64) + model.W.T @ model.W / s2
    post_mean, post_cov = model.posterior(x)
    assert not torch.allclose(post_cov, torch.diag(torch.diagonal(post_cov)), atol=1e-3)
    torch.testing.assert_close(mean, post_mean.detach(), atol=0.03, rtol=0)
    best_log_var = -torch.diagonal(precision).log().detach()
    torch.testing.assert_close(log_var, best_log_var.expand_as(log_var), atol=0.06, rtol=0)

    def closed_form_elbo(m, lv):  # the model's exact ELBO for q = N(m, diag(exp(lv)))
        with torch.no_grad():
            model.A.zero_()
            model.c.copy_(m)
            model.q_log_var.copy_(lv)
            return model.exact_elbo(x[i:i + 1]).item()

    for i in range(len(x)):
        best = closed_form_elbo(post_mean[i].detach(), best_log_var)
        got = closed_form_elbo(mean[i], log_var[i])
        assert best - 1e-3 < got + 2e-3 and got <= best + 1e-9
        # and the optimum is not the exact posterior: diagonal q has an approximation gap
        assert model.log_marginal(x[i:i + 1]).item() - best > 1e-3


def test_gaps_vanish_when_the_encoder_is_the_exact_posterior():
    """With W orthogonal the exact posterior is diagonal and the encoder can equal it: both
    the approximation gap and the amortization gap are zero (to Monte Carlo error)."""
    model = LinearGaussianVAE(data_dim=5, latent_dim=2, sigma=0.7, seed=3)
    model.orthogonalize()
    model.set_encoder_to_posterior()
    torch.manual_seed(1)
    x = model.sample(6)
    refined = analysis.refine_posterior(model, x, steps=50, lr=0.01)
    out = analysis.gaps(model, x, refined, num_samples=2000, elbo_samples=2000)
    assert abs(out["log_px"] - model.log_marginal(x).mean().item()) < 0.01
    assert abs(out["approximation_gap"]) < 0.05 and abs(out["amortization_gap"]) < 0.05


def test_gaps_split_the_bound_of_a_poor_encoder():
    """A random encoder on a correlated posterior: the amortization gap is large and
    positive, the approximation gap small and positive, and they add up to log p(x) - ELBO."""
    model = _non_orthogonal()
    torch.manual_seed(2)
    x = model.sample(4)
    refined = analysis.refine_posterior(model, x, steps=400, lr=0.05, num_samples=8)
    out = analysis.gaps(model, x, refined, num_samples=4000, elbo_samples=4000)
    exact = model.log_marginal(x).mean().item()
    assert abs(out["log_px"] - exact) < 0.02
    assert out["amortization_gap"] > 5 * out["approximation_gap"] > 0
    total = out["approximation_gap"] + out["amortization_gap"]
    assert total == pytest.approx(out["log_px"] - out["elbo_encoder"], abs=1e-9)


def test_rate_and_distortion_sum_to_the_negative_elbo():
    ev = {"elbo": -100.0, "reconstruction": -80.0, "kl": 20.0}
    rd = analysis.rate_distortion(ev)
    assert rd == {"rate": 20.0, "distortion": 80.0, "negative_elbo": 100.0}


def test_every_stored_sweep_point_has_rate_plus_distortion_equal_to_its_elbo():
    """results/sweep/*/eval.json (notebook 7's rate-distortion sweep): R + D = -ELBO."""
    points = sorted(RESULTS.glob("sweep/*/eval.json"))
    if not points:
        pytest.skip("no stored sweep yet (make sweep results)")
    for path in points:
        rd = analysis.rate_distortion(json.loads(path.read_text()))
        assert rd["rate"] + rd["distortion"] == pytest.approx(rd["negative_elbo"], rel=1e-6)
        assert rd["rate"] >= 0 and rd["distortion"] > 0
