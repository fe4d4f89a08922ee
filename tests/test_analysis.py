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


# --- what the code carries, prior draws against codes -------------------------------------------

def test_detail_energy_against_a_loop_and_known_images():
    """A flat image has none, a black-and-white checkerboard 1; a random image matches the
    mean of squared neighbour differences counted pixel by pixel; blurring lowers it."""
    flat = torch.full((1, 3, 8, 8), 0.3)
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    board = ((i + j) % 2).float().expand(1, 3, 8, 8)
    assert analysis.detail_energy(flat).item() == 0
    assert analysis.detail_energy(board).item() == pytest.approx(1.0)
    img = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(0), dtype=D64)
    for b in range(2):
        h = [(img[b, c, y, x + 1] - img[b, c, y, x]) ** 2
             for c in range(3) for y in range(5) for x in range(5)]
        v = [(img[b, c, y + 1, x] - img[b, c, y, x]) ** 2
             for c in range(3) for y in range(4) for x in range(6)]
        by_hand = 0.5 * (sum(h) / len(h) + sum(v) / len(v))
        assert analysis.detail_energy(img)[b].item() == pytest.approx(by_hand.item(), rel=1e-12)
    blurred = torch.nn.functional.avg_pool2d(img, 2, stride=1)
    assert (analysis.detail_energy(blurred) < analysis.detail_energy(img)).all()


def test_paired_difference_mean_and_standard_error():
    a = torch.tensor([1.0, 2.0, 4.0, 7.0])
    b = torch.tensor([0.0, 1.0, 1.0, 1.0])
    mean, se = analysis.paired_difference(a, b)
    d = [1.0, 1.0, 3.0, 6.0]
    sd = math.sqrt(sum((v - 2.75) ** 2 for v in d) / 3)
    assert mean == pytest.approx(2.75) and se == pytest.approx(sd / 2)


def test_image_elbos_match_the_closed_form_elbo():
    """On the linear-Gaussian model the per-image ELBO from many draws is the closed-form
    one, within 5 Monte Carlo standard errors (from the spread of one-draw estimates)."""
    model = LinearGaussianVAE(data_dim=5, latent_dim=2, sigma=0.7, seed=3)
    torch.manual_seed(0)
    x = model.sample(6)
    batches = [(x[:3], None), (x[3:], None)]
    got = analysis.image_elbos(model, batches, num_samples=20000)
    sd = torch.stack([analysis.image_elbos(model, batches) for _ in range(400)]).std(0)
    exact = model.exact_elbo(x).detach().double()
    assert ((got - exact).abs() < 5 * sd / math.sqrt(20000)).all()


def _split(a: torch.Tensor, b: torch.Tensor):
    """(a_train, b_train, a_test, b_test): each sample halved."""
    return a[: len(a) // 2], b[: len(b) // 2], a[len(a) // 2:], b[len(b) // 2:]


@pytest.mark.parametrize("hidden", [0, 32])
def test_two_sample_test_on_one_distribution_is_at_chance(hidden):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 16, generator=g), torch.randn(2000, 16, generator=g)
    out = analysis.two_sample_test(*_split(a, b), hidden=hidden)
    assert abs(out["accuracy"] - 0.5) < 3 * out["se"] + 0.01
    assert out["se"] == pytest.approx(0.5 * math.sqrt(0.25 / 1000 * 2), rel=0.05)


@pytest.mark.parametrize("hidden", [0, 32])
def test_two_sample_test_on_separated_distributions_is_near_perfect(hidden):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(1000, 16, generator=g)
    b = torch.randn(1000, 16, generator=g) + 8 * torch.eye(16)[0]  # Bayes: Phi(4) = 0.99997
    out = analysis.two_sample_test(*_split(a, b), hidden=hidden)
    assert out["accuracy"] > 0.99
    z, e0 = torch.randn(5, 16, generator=g), torch.eye(16)[0]
    assert (out["classifier"](z + 8 * e0) > out["classifier"](z - 8 * e0)).all()  # b's side


def test_clustered_se_of_copies_is_that_of_the_distinct_rows():
    """Closed form: m identical copies of each of k values carry the information of k rows, so
    the clustered s.e. of the n = m k copies is the plain s.e. (population variance / k)^0.5 of
    the k distinct values, where treating the copies as independent understates it by m^0.5."""
    g = torch.Generator().manual_seed(0)
    distinct = (torch.rand(300, generator=g) < 0.7).double()  # k = 300 Bernoulli values
    copies, ids = distinct.repeat_interleave(4), torch.arange(300).repeat_interleave(4)
    plain = math.sqrt(float(distinct.var(unbiased=False)) / 300)
    assert analysis.clustered_se(copies, ids) == pytest.approx(plain, rel=1e-9)
    assert analysis.clustered_se(copies) == pytest.approx(plain / 2, rel=1e-9)
    assert analysis.clustered_se(distinct) == pytest.approx(plain, rel=1e-9)


def test_sample_aggregate_names_the_image_of_each_draw():
    """The same draws with and without the image indices; each draw lies near its image's
    mean (posteriors far apart and narrow)."""
    means = torch.arange(5, dtype=D64)[:, None] * 100 * torch.ones(5, 3, dtype=D64)
    log_vars = torch.full((5, 3), -4.0, dtype=D64)
    z = analysis.sample_aggregate(means, log_vars, 50, torch.Generator().manual_seed(3))
    z2, pick = analysis.sample_aggregate(means, log_vars, 50, torch.Generator().manual_seed(3),
                                         return_images=True)
    assert torch.equal(z, z2) and pick.shape == (50,) and len(set(pick.tolist())) > 1
    assert ((z - means[pick]).abs() < 1).all()


def test_two_sample_test_counts_clustered_rows_once():
    """The same test rows copied four times and grouped: the same accuracy, and the s.e. of
    the distinct rows; ungrouped copies would halve it."""
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(1000, 4, generator=g), torch.randn(1000, 4, generator=g) + 0.5
    a_tr, b_tr, a_te, b_te = _split(a, b)
    once = analysis.two_sample_test(a_tr, b_tr, a_te, b_te)
    ids = torch.arange(500).repeat_interleave(4)
    copies = analysis.two_sample_test(a_tr, b_tr, a_te.repeat_interleave(4, 0),
                                      b_te.repeat_interleave(4, 0), a_groups=ids, b_groups=ids)
    naive = analysis.two_sample_test(a_tr, b_tr, a_te.repeat_interleave(4, 0),
                                     b_te.repeat_interleave(4, 0))
    assert copies["accuracy"] == pytest.approx(once["accuracy"], abs=1e-12)
    assert copies["se"] == pytest.approx(once["se"], rel=1e-9)
    assert naive["se"] == pytest.approx(once["se"] / 2, rel=1e-9)


def test_two_sample_test_reaches_the_bayes_accuracy():
    """Independent reference: the best possible accuracy between N(0, 1) and N(0, 2^2) in
    one dimension is 0.5 (P(|z| < t) + P(|2z| > t)) at the threshold t where the densities
    cross, t^2 = 8 ln 2 / 3; and between N(0, 1) and N(1, 1), Phi(1/2). The logistic
    regression on (z, z^2) gets within sampling error of both."""
    phi = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))  # noqa: E731
    t = math.sqrt(8 * math.log(2) / 3)
    spread = 0.5 * ((2 * phi(t) - 1) + 2 * (1 - phi(t / 2)))
    g = torch.Generator().manual_seed(2)
    a = torch.randn(20000, 1, generator=g)
    for b, bayes in ((2 * torch.randn(20000, 1, generator=g), spread),
                     (torch.randn(20000, 1, generator=g) + 1, phi(0.5))):
        out = analysis.two_sample_test(*_split(a, b), hidden=0, steps=800, lr=0.05)
        assert abs(out["accuracy"] - bayes) < 3 * out["se"] + 0.005


def test_refine_posterior_trace_rises_to_the_refined_elbo():
    """The trace holds one mean ELBO per step, starting at the encoder's and ending near
    the closed-form ELBO of the refined Gaussians."""
    model = _non_orthogonal()
    torch.manual_seed(0)
    x = model.sample(8)
    trace = []
    mean, log_var = analysis.refine_posterior(model, x, steps=300, lr=0.05, num_samples=16,
                                              trace=trace)
    assert len(trace) == 300
    with torch.no_grad():
        start = model.exact_elbo(x).mean().item()
        model.A.zero_()  # the encoder's output is now c: set it to each refined mean
    finals = []
    for i in range(len(x)):
        with torch.no_grad():
            model.c.copy_(mean[i])
            model.q_log_var.copy_(log_var[i])
            finals.append(model.exact_elbo(x[i:i + 1]).item())
    end = sum(finals) / len(finals)
    assert end > start + 1
    assert abs(sum(trace[:3]) / 3 - start) < 0.2 * (end - start)
    assert abs(sum(trace[-30:]) / 30 - end) < 0.05 * (end - start)


def test_fit_diagonal_prior_matches_the_aggregate_moments():
    """The fitted mean and variance are those of many draws of the aggregate posterior (the
    law of total variance), and a standard-normal aggregate gives N(0, I)."""
    g = torch.Generator().manual_seed(5)
    means = torch.randn(40, 3, generator=g, dtype=D64) * torch.tensor([0.5, 2.0, 0.1], dtype=D64)
    log_vars = torch.randn(40, 3, generator=g, dtype=D64) - 1
    m, v = analysis.fit_diagonal_prior(means, log_vars)
    z = analysis.sample_aggregate(means, log_vars, 400_000, g)
    assert m.shape == v.shape == (3,)
    assert torch.allclose(m, z.mean(0), atol=0.01)
    assert torch.allclose(v, z.var(0), rtol=0.02)
    m0, v0 = analysis.fit_diagonal_prior(torch.zeros(7, 4), torch.zeros(7, 4))
    assert torch.equal(m0, torch.zeros(4, dtype=D64)) and torch.equal(v0, torch.ones(4, dtype=D64))


def test_prior_vs_codes_sees_a_scale_mismatch_that_the_fitted_diagonal_prior_removes():
    """Codes from a diagonal Gaussian of other spreads per dimension: N(0, I) is told from them
    well above chance; the diagonal Gaussian fitted to their posteriors is at chance."""
    g = torch.Generator().manual_seed(6)
    n, d = 1000, 16
    spread = torch.linspace(0.2, 3.0, d)
    means = torch.randn(n, d, generator=g) * spread.sqrt() * 0.9  # Var mu + sigma^2 = spread
    log_vars = (0.19 * spread).log().expand(n, d)
    half = n // 2
    train = analysis.sample_aggregate(means[:half], log_vars[:half], 2 * half, g)
    test, images = analysis.sample_aggregate(means[half:], log_vars[half:], 2 * half, g,
                                             return_images=True)
    standard = analysis.prior_vs_codes(lambda k: torch.randn(k, d, generator=g), train, test,
                                       images)
    m, v = analysis.fit_diagonal_prior(means, log_vars)
    fitted = analysis.prior_vs_codes(
        lambda k: (m + v.sqrt() * torch.randn(k, d, generator=g, dtype=D64)).float(),
        train, test, images)
    assert standard["accuracy"] > 0.75
    assert abs(fitted["accuracy"] - 0.5) < 3 * fitted["se"] + 0.01
    assert fitted["n_test"] == 2 * len(test)
