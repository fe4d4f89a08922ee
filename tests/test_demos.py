"""vae_tutorial.demos against independent references: closed forms, Gauss-Hermite quadrature,
finite differences and brute-force minimisation."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vae_tutorial import demos
from vae_tutorial.linear_gaussian import LinearGaussianVAE
from vae_tutorial.model import build_model, count_parameters


def _hermite(n: int = 120):
    """Nodes and weights of E[g(eps)], eps ~ N(0, 1): sum(w * g(nodes))."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n)
    return (torch.tensor(nodes, dtype=torch.float64),
            torch.tensor(weights / math.sqrt(2 * math.pi), dtype=torch.float64))


@pytest.fixture
def linear():
    model = LinearGaussianVAE(data_dim=4, latent_dim=2, sigma=0.5, seed=0)
    model.orthogonalize()
    torch.manual_seed(1)
    return model, model.sample(64)


# --- 01 -----------------------------------------------------------------------------------------

def test_interpolate_states_endpoints_and_midpoint():
    a = {"A": torch.zeros(2, 3), "c": torch.ones(2)}
    b = {"A": torch.ones(2, 3), "c": 3 * torch.ones(2)}
    assert torch.equal(demos.interpolate_states(a, b, 0.0)["c"], a["c"])
    assert torch.equal(demos.interpolate_states(a, b, 1.0)["A"], b["A"])
    assert torch.allclose(demos.interpolate_states(a, b, 0.5)["c"], 2 * torch.ones(2))


def test_elbo_path_identity_and_zero_gap_at_posterior(linear):
    model, x = linear
    start = demos.encoder_state(model)
    model.set_encoder_to_posterior()
    end = demos.encoder_state(model)
    demos.set_encoder(model, start)
    path = demos.elbo_path(model, x, start, end, [0.0, 0.3, 1.0])
    assert torch.allclose(path["log_px"], path["elbo"] + path["gap"], atol=1e-10, rtol=0)
    assert (path["gap"][:2] > 0.1).all() and abs(path["gap"][-1]) < 1e-10
    # independent reference for log p(x) at t = 0: the Gaussian density formula by hand
    cov = model.W @ model.W.T + model.log_sigma.exp() ** 2 * torch.eye(4, dtype=torch.float64)
    r = x - model.b
    by_hand = -0.5 * (torch.linalg.solve(cov, r.T).T * r).sum(1) - 0.5 * (
        torch.logdet(cov) + 4 * math.log(2 * math.pi))
    assert torch.allclose(path["log_px"][0], by_hand.mean().detach(), atol=1e-10)
    for k in demos.ENCODER_PARAMS:  # the model's encoder is restored
        assert torch.equal(getattr(model, k).detach(), start[k])


def test_mc_elbo_is_unbiased(linear):
    model, x = linear
    torch.manual_seed(0)
    mean, se = demos.mc_elbo(model, x[:8], 4000)
    exact = model.exact_elbo(x[:8]).detach()
    assert ((mean - exact).abs() < 5 * se).all()
    with pytest.raises(ValueError):
        demos.mc_elbo(model, x, 1)


# --- 02 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", [build_model(kind="conv", width=8, latent_dim=4, res_blocks=1,
                                               likelihood="logistic", mixtures=1),
                                   build_model(kind="seed", latent_dim=4, likelihood="bernoulli")])
def test_layer_table_shapes_and_counts(model):
    rows = demos.layer_table(model, torch.rand(1, 3, 32, 32))
    assert sum(r["params"] for r in rows) == count_parameters(model)  # no likelihood params
    enc = [r for r in rows if r["part"] == "encoder"]
    dec = [r for r in rows if r["part"] == "decoder"]
    assert enc[-1]["shape"] == (1, 2 * model.latent_dim)
    assert dec[-1]["shape"] == (1, model.likelihood.channels, 32, 32)
    assert all(r["shape"] is not None for r in rows)
    assert model.training  # mode restored


def test_layer_table_shared_activation_gets_each_call_shape():
    # SeedVAE reuses one LeakyReLU module at several positions
    rows = demos.layer_table(build_model(kind="seed", latent_dim=4, likelihood="bernoulli"),
                             torch.rand(2, 3, 32, 32))
    shapes = {(r["part"], r["index"]): r["shape"] for r in rows}
    assert shapes[("encoder", 1)] == (2, 16, 32, 32)
    assert shapes[("encoder", 3)] == (2, 32, 32, 32)
    assert shapes[("decoder", 1)] == (2, 32 * 32 * 32)
    assert shapes[("decoder", 4)] == (2, 16, 32, 32)


def test_superposition_error_detects_nonlinearity():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(True), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, 5)).double()
    relu = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.01), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5)).double()
    relu.load_state_dict(lin.state_dict())
    x, y = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 8, 8,
                                                                      dtype=torch.float64)
    assert demos.superposition_error(lin, x, y) < 1e-12
    assert demos.superposition_error(relu, x, y) > 1e-3


# --- 03 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mu,sigma", [(0.0, 1.0), (1.3, 0.4), (-2.0, 2.5)])
def test_both_estimators_unbiased_and_variances_exact_by_quadrature(mu, sigma):
    nodes, w = _hermite()
    f = lambda z: (z - 2.0) ** 2  # noqa: E731
    exact = torch.tensor(demos.quadratic_gradient(mu, sigma), dtype=torch.float64)
    var = demos.quadratic_gradient_variance(mu, sigma)
    for name, est in (("reparam", demos.reparam_gradients),
                      ("score", demos.score_function_gradients)):
        g = est(f, mu, sigma, nodes)  # (n, 2): the estimator at every quadrature node
        mean = (w[:, None] * g).sum(0)
        assert torch.allclose(mean, exact, atol=1e-9), name
        second = (w[:, None] * g.pow(2)).sum(0)
        assert torch.allclose(second - mean.pow(2), torch.tensor(var[name], dtype=torch.float64),
                              rtol=1e-9), name


def test_estimators_unbiased_for_a_non_polynomial_function():
    # E[sin z] = sin(mu) exp(-sigma^2 / 2): d/dmu = cos(mu) e^.., d/dsigma = -sigma sin(mu) e^..
    mu, sigma = 0.7, 0.9
    damp = math.exp(-sigma ** 2 / 2)
    exact = torch.tensor([math.cos(mu) * damp, -sigma * math.sin(mu) * damp],
                         dtype=torch.float64)
    nodes, w = _hermite()
    for est in (demos.reparam_gradients, demos.score_function_gradients):
        mean = (w[:, None] * est(torch.sin, mu, sigma, nodes)).sum(0)
        assert torch.allclose(mean, exact, atol=1e-10)


def test_estimators_monte_carlo_means_and_variance_ordering():
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(200_000, generator=g, dtype=torch.float64)
    f = lambda z: (z - 2.0) ** 2  # noqa: E731
    exact = torch.tensor(demos.quadratic_gradient(0.5, 0.3), dtype=torch.float64)
    r = demos.reparam_gradients(f, 0.5, 0.3, eps)
    s = demos.score_function_gradients(f, 0.5, 0.3, eps)
    for est in (r, s):
        se = est.std(0) / math.sqrt(len(eps))
        assert ((est.mean(0) - exact).abs() < 5 * se).all()
    assert (s.var(0) > 10 * r.var(0)).all()


def test_elbo_gradient_exact_matches_finite_differences(linear):
    model, x = linear
    x1 = x[:1]
    grad = demos.exact_elbo_gradient(model, x1)
    h, fd = 1e-6, []
    for name in ("c", "q_log_var"):
        p = getattr(model, name)
        for i in range(p.numel()):
            with torch.no_grad():
                p[i] += h
                up = model.exact_elbo(x1).item()
                p[i] -= 2 * h
                down = model.exact_elbo(x1).item()
                p[i] += h
            fd.append((up - down) / (2 * h))
    assert torch.allclose(grad, torch.tensor(fd, dtype=torch.float64), atol=1e-6)


def test_elbo_gradient_estimators_are_unbiased(linear):
    model, x = linear
    x1 = x[:1]
    exact = demos.exact_elbo_gradient(model, x1)
    eps = torch.randn(100_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    variances = {}
    baseline = model.log_marginal(x1).item()
    for name in demos.ESTIMATORS:
        g = demos.elbo_gradient_samples(model, x1, eps, name, baseline=baseline)
        se = g.std(0) / math.sqrt(len(eps))
        assert ((g.mean(0) - exact).abs() < 5 * se).all(), name
        variances[name] = g.var(0)
    assert (variances["score"] > variances["reparam"]).all()
    assert (variances["score-baseline"] < variances["score"]).all()
    with pytest.raises(ValueError):
        demos.elbo_gradient_samples(model, x1, eps, "pathwise")


def test_at_the_exact_posterior_baseline_and_stl_have_no_variance(linear):
    """At q = p(z|x), g(z) = log p(x) for every z: the score estimator is log p(x) grad log q,
    its variance (log p(x))^2 times that of grad log q, whose c-part is eps / sigma, so the
    reparameterization gradient's variance is 1 / sigma^2; with the baseline log p(x), and
    with sticking the landing, every draw is exactly zero."""
    model, x = linear
    model.set_encoder_to_posterior()
    x1 = x[:1]
    log_px = model.log_marginal(x1).item()
    eps = torch.randn(50_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    draws = {name: demos.elbo_gradient_samples(model, x1, eps, name, baseline=log_px)
             for name in demos.ESTIMATORS}
    assert draws["score-baseline"].abs().max() < 1e-9
    assert draws["stl"].abs().max() < 1e-9
    ratio = draws["score"].var(0) / draws["reparam"].var(0)
    torch.testing.assert_close(ratio, torch.full_like(ratio, log_px ** 2), rtol=1e-6, atol=0)
    sigma2 = model.q_log_var.detach().exp()
    torch.testing.assert_close(draws["reparam"][:, :2].var(0) * sigma2, torch.ones(2,
                               dtype=torch.float64), rtol=0.03, atol=0)


# --- 04 -----------------------------------------------------------------------------------------

def test_bce_probability_form_matches_torch_on_valid_targets():
    p = torch.tensor([0.0, 1e-50, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
    y = torch.tensor([0.0, 0.3, 1.0, 0.5, 0.25, 1.0], dtype=torch.float64)
    ours = demos.bce_probability_form(p, y)
    ref = F.binary_cross_entropy(p, y, reduction="none")
    assert torch.allclose(ours, ref, atol=1e-12)
    assert demos.bce_probability_form(torch.tensor([0.0]), torch.tensor([-1.0])).item() == -100


def test_bce_floor_is_the_minimum_over_p():
    p = torch.cat([torch.tensor([0.0, 1.0]), torch.logspace(-60, -1e-9, 4000,
                                                            dtype=torch.float64),
                   1 - torch.logspace(-16, -1, 2000, dtype=torch.float64),
                   torch.linspace(0, 1, 20001, dtype=torch.float64)])
    y = torch.tensor([-1.0, -0.37, -1 / 255, 0.0, 1 / 255, 0.3, 0.5, 1.0, 1.2],
                     dtype=torch.float64)
    brute = demos.bce_probability_form(p[:, None], y[None, :]).min(0).values
    assert torch.allclose(demos.bce_floor(y), brute, atol=1e-6)
    assert demos.bce_floor(torch.tensor([0.5])).item() == pytest.approx(math.log(2))


def test_discretized_gaussian_masses():
    xs = torch.arange(256, dtype=torch.float64) / 255
    for mean, std in ((0.3, 0.05), (0.5, 10.0), (0.99, 1e-3), (-0.2, 0.1)):
        log_mass = demos.discretized_gaussian_log_mass(xs, mean, std)
        assert torch.isfinite(log_mass).any()
        assert log_mass.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    # an interior bin against the difference of CDFs and a fine trapezoid integral
    normal = torch.distributions.Normal(torch.tensor(0.3, dtype=torch.float64),
                                        torch.tensor(0.05, dtype=torch.float64))
    k = torch.tensor(80 / 255, dtype=torch.float64)
    cdf = normal.cdf(k + 0.5 / 255) - normal.cdf(k - 0.5 / 255)
    grid = torch.linspace(k - 0.5 / 255, k + 0.5 / 255, 2001, dtype=torch.float64)
    trapz = torch.trapezoid(normal.log_prob(grid).exp(), grid)
    ours = demos.discretized_gaussian_log_mass(k, 0.3, 0.05).exp()
    assert ours.item() == pytest.approx(cdf.item(), rel=1e-10)
    assert ours.item() == pytest.approx(trapz.item(), rel=1e-6)
    # far in the upper tail the mass is tiny but its log is finite and accurate
    far = demos.discretized_gaussian_log_mass(torch.tensor(0.9, dtype=torch.float64), 0.3, 0.02)
    assert torch.isfinite(far) and far.item() < -400


def test_fit_encoder_beta_one_recovers_the_posterior(linear):
    model, x = linear
    out = demos.fit_encoder(model, x, beta=1.0)
    assert abs(out["gap"]) < 1e-6 and out["elbo"] == pytest.approx(out["log_px"], abs=1e-6)
    mean_q, _ = model.encode(x)
    mean_p, cov_p = model.posterior(x)
    assert torch.allclose(mean_q, mean_p, atol=1e-4)
    assert torch.allclose(model.q_log_var.exp(), torch.diagonal(cov_p), atol=1e-4)


def test_fit_encoder_large_beta_collapses_to_the_prior(linear):
    model, x = linear
    out = demos.fit_encoder(model, x, beta=3072.0)
    assert out["kl"] < 0.01 and out["gap"] > 1.0
