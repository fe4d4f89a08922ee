"""ELBO, IWAE and latent statistics against the exactly solvable linear-Gaussian VAE."""

import math

import numpy as np
import pytest
import torch

from vae_tutorial import losses
from vae_tutorial.data import CifarLoader
from vae_tutorial.evaluate import evaluate, iwae_log_likelihood, latent_statistics
from vae_tutorial.linear_gaussian import LinearGaussianVAE
from vae_tutorial.model import ConvVAE, build_model

D64 = torch.float64


@pytest.fixture
def lg():
    """A linear-Gaussian VAE (x in R^6, z in R^3) with a deliberately imperfect encoder."""
    return LinearGaussianVAE(data_dim=6, latent_dim=3, sigma=0.5, seed=0)


@pytest.fixture
def lg_exact():
    """The same model with q(z|x) set to the exact posterior."""
    model = LinearGaussianVAE(data_dim=6, latent_dim=3, sigma=0.5, seed=0)
    model.orthogonalize()
    model.set_encoder_to_posterior()
    return model


def tiny_conv(likelihood: str = "logistic_mixture") -> ConvVAE:
    return build_model(kind="conv", width=8, res_blocks=1, latent_dim=8, likelihood=likelihood,
                       mixtures=2)


def mean_and_se(t: torch.Tensor, dim: int = 0):
    """Mean along dim and its standard error."""
    return t.mean(dim), t.std(dim) / math.sqrt(t.shape[dim])


# --- the linear-Gaussian model's closed forms ----------------------------------------------------

def test_log_marginal_matches_hand_computation(lg):
    """log p(x) equals -(D log 2 pi + log det C + r^T C^-1 r) / 2, C = W W^T + s^2 I (numpy)."""
    x = torch.cat([lg.sample(10), 3 * torch.randn(5, 6, dtype=D64)])
    w, b = lg.W.detach().numpy(), lg.b.detach().numpy()
    s = math.exp(float(lg.log_sigma.detach()))
    c = w @ w.T + s * s * np.eye(6)
    r = x.numpy() - b
    quad = np.einsum("bi,ij,bj->b", r, np.linalg.inv(c), r)
    ref = -0.5 * (6 * math.log(2 * math.pi) + np.linalg.slogdet(c)[1] + quad)
    np.testing.assert_allclose(lg.log_marginal(x).detach().numpy(), ref, rtol=1e-12, atol=1e-10)


def test_log_marginal_matches_monte_carlo(lg):
    """log p(x) = log E_{p(z)} p(x|z), estimated with 200k prior samples, within 5 s.e."""
    x = lg.sample(4)
    z = torch.randn(200_000, 1, 3, dtype=D64)
    with torch.no_grad():
        mean = z @ lg.W.T + lg.b  # (S, 1, 6)
        log_px_z = torch.distributions.Normal(mean, lg.log_sigma.exp()).log_prob(x).sum(-1)
        n = log_px_z.shape[0]
        est = torch.logsumexp(log_px_z, 0) - math.log(n)  # (4,)
        w = (log_px_z - log_px_z.max(0).values).exp()
        se = w.std(0) / (w.mean(0) * math.sqrt(n))  # delta method: s.e. of log mean
        exact = lg.log_marginal(x)
    assert (se < 0.2).all()  # the estimate is informative
    assert ((est - exact).abs() < 5 * se + 1e-3).all()


def test_exact_elbo_bounds_log_marginal_with_gap_identity(lg):
    """ELBO < log p(x), and log p(x) - ELBO = KL(q(z|x) || p(z|x)) to 1e-8."""
    x = torch.cat([lg.sample(30), 3 * torch.randn(10, 6, dtype=D64)])
    with torch.no_grad():
        elbo, logp, gap = lg.exact_elbo(x), lg.log_marginal(x), lg.posterior_gap(x)
    assert (elbo < logp).all() and (gap > 1e-3).all()
    torch.testing.assert_close(logp - elbo, gap, rtol=0, atol=1e-8)


def test_monte_carlo_elbo_matches_exact(lg):
    """The mean of model(x).elbo over 20k reparameterized samples is the closed-form ELBO."""
    x = lg.sample(5)
    s = 20_000
    with torch.no_grad():
        samples = lg(x.repeat(s, 1)).elbo.view(s, 5)
        mc, se = mean_and_se(samples)
        exact = lg.exact_elbo(x)
    assert (se > 0).all()
    assert ((mc - exact).abs() < 5 * se).all()


def test_exact_posterior_closes_the_gap(lg_exact):
    """With q = p(z|x): gap 0 and ELBO = log p(x). The single-sample estimate
    log p(x, z) - log q(z|x) (IWAE, k = 1) then has zero variance; model(x).elbo, which uses the
    analytic KL, is still noisy (log p(x|z) varies with z) but averages to log p(x)."""
    model = lg_exact
    x = torch.cat([model.sample(20), 3 * torch.randn(5, 6, dtype=D64)])
    with torch.no_grad():
        logp = model.log_marginal(x)
        assert model.posterior_gap(x).abs().max() < 1e-8
        torch.testing.assert_close(model.exact_elbo(x), logp, rtol=0, atol=1e-8)
        draws = torch.stack([iwae_log_likelihood(model, x, 1) for _ in range(20)])  # (20, B)
        assert (draws - logp).abs().max() < 1e-8  # zero variance
        elbos = model(x.repeat(4000, 1)).elbo.view(4000, -1)
        mc, se = mean_and_se(elbos)
        assert (se > 1e-3).all() and ((mc - logp).abs() < 5 * se).all()
        mean_q, _ = model.encode(x)
        mean_p, cov_p = model.posterior(x)
        torch.testing.assert_close(mean_q, mean_p)
        torch.testing.assert_close(model.q_log_var.exp(), torch.diagonal(cov_p))


def test_posterior_encoder_needs_orthogonal_w(lg):
    """A W with non-orthogonal columns has a correlated posterior: a diagonal q is refused."""
    with pytest.raises(ValueError, match="orthogonalize"):
        lg.set_encoder_to_posterior()


# --- IWAE ----------------------------------------------------------------------------------------

def test_iwae_bound_tightens_monotonically(lg):
    """Over 20 repeats x 50 points: E[IWAE_k] <= log p(x), it grows with k (1, 10, 100, 1000),
    and the gap at k = 1000 is under 20 % of the gap at k = 1."""
    x = lg.sample(50)
    logp = lg.log_marginal(x).detach()
    gaps, ses = [], []
    for k in (1, 10, 100, 1000):
        est = torch.stack([iwae_log_likelihood(lg, x, k) for _ in range(20)])  # (20, 50)
        assert est.dtype == D64
        g, se = mean_and_se((logp - est).flatten())
        gaps.append(float(g))
        ses.append(float(se))
        assert g > -3 * se  # a lower bound on average
    for i in range(3):
        assert gaps[i + 1] < gaps[i] + 3 * math.hypot(ses[i], ses[i + 1])
    assert gaps[0] > 10 * ses[0]  # there is a real gap to close
    assert gaps[3] < 0.2 * gaps[0]


def test_iwae_k1_is_an_unbiased_elbo(lg):
    """IWAE with k = 1 averages to the closed-form ELBO."""
    x = lg.sample(4)
    est = iwae_log_likelihood(lg, x.repeat(5000, 1), 1).view(5000, 4)
    mc, se = mean_and_se(est)
    exact = lg.exact_elbo(x).detach()
    assert ((mc - exact).abs() < 5 * se).all()


@pytest.mark.parametrize("k", [1, 7, 100])
@pytest.mark.parametrize("chunk", [3, 50, 4096])
def test_iwae_exact_with_true_posterior(lg_exact, k, chunk):
    """With q = p(z|x) every importance weight is p(x): IWAE = log p(x) for any k and chunk."""
    x = torch.cat([lg_exact.sample(15), 3 * torch.randn(5, 6, dtype=D64)])
    est = iwae_log_likelihood(lg_exact, x, k, chunk=chunk)
    assert est.shape == (20,)
    torch.testing.assert_close(est, lg_exact.log_marginal(x).detach(), rtol=0, atol=1e-8)


def test_iwae_chunking_does_not_change_the_estimator(lg):
    """Decoding in chunks (1 sample per chunk vs all at once) gives the same distribution,
    and a fixed seed gives the same values for a fixed chunk size."""
    x = lg.sample(20)
    torch.manual_seed(3)
    a = iwae_log_likelihood(lg, x, 10, chunk=20)  # 20 // 20: one sample per chunk
    torch.manual_seed(3)
    assert torch.equal(a, iwae_log_likelihood(lg, x, 10, chunk=20))
    small = torch.stack([iwae_log_likelihood(lg, x, 10, chunk=20) for _ in range(100)])
    large = torch.stack([iwae_log_likelihood(lg, x, 10, chunk=4096) for _ in range(100)])
    diff = (small - large).flatten()
    m, se = mean_and_se(diff)
    assert abs(float(m)) < 4 * float(se)
    assert not torch.equal(small, large)  # the draws themselves differ


@pytest.mark.parametrize("k", [0, -1])
def test_iwae_needs_a_sample(lg, k):
    """num_samples < 1 is a ValueError."""
    with pytest.raises(ValueError, match="num_samples"):
        iwae_log_likelihood(lg, lg.sample(2), k)


def test_iwae_on_conv_vae(subset_test):
    """On a ConvVAE: IWAE k=1 averages to the ELBO; k=50 lies above it on average."""
    model = tiny_conv("logistic").eval()
    with torch.no_grad():
        model.decoder[0].weight.mul_(30)  # make log p(x|z) depend strongly on z
    x = subset_test[0][:4].float() / 255
    reps = 48
    xr = x.repeat(reps, 1, 1, 1)
    with torch.no_grad():
        elbo = model(xr).elbo.view(reps, 4)
        k1 = iwae_log_likelihood(model, xr, 1).view(reps, 4)
        k50 = torch.stack([iwae_log_likelihood(model, x, 50) for _ in range(4)])
    e_mean, e_se = mean_and_se(elbo)
    k1_mean, k1_se = mean_and_se(k1)
    assert ((k1_mean - e_mean).abs() < 4 * (e_se ** 2 + k1_se ** 2).sqrt()).all()
    assert float(k50.mean()) > float(e_mean.mean()) + 3 * float(e_se.pow(2).mean().sqrt())


# --- evaluate ------------------------------------------------------------------------------------

@pytest.fixture
def first64(subset_test):
    """The first 64 exact test images in batches of 32."""
    images, labels = subset_test
    return CifarLoader(images, labels, batch_size=32, limit=64, shuffle=False)


def test_evaluate_consistency(first64):
    """evaluate(): 64 images, bits/dim of the ELBO, ELBO = reconstruction - KL."""
    model = tiny_conv()
    ev = evaluate(model, first64)
    assert ev.images == 64
    assert ev.iwae is None and ev.iwae_bits_per_dim is None and ev.num_samples is None
    assert math.isclose(ev.bits_per_dim, losses.bits_per_dim(ev.elbo), rel_tol=1e-12)
    assert math.isclose(ev.bits_per_dim, -ev.elbo / (3072 * math.log(2)), rel_tol=1e-12)
    assert math.isclose(ev.elbo, ev.reconstruction - ev.kl, rel_tol=1e-6)
    assert ev.kl > 0 and ev.elbo < 0 and ev.bits_per_dim > 0


def test_evaluate_averages_per_image(subset_test):
    """The dataset ELBO is the mean over images (not batches) of model(x).elbo in eval mode."""
    images, labels = subset_test
    loader = CifarLoader(images, labels, batch_size=48, limit=64, shuffle=False)  # 48 + 16
    model = tiny_conv()
    model.eval()
    torch.manual_seed(7)
    with torch.no_grad():
        outs = [model(x) for x, _ in loader]
    manual = torch.cat([o.elbo for o in outs]).double().mean()
    manual_kl = torch.cat([o.kl for o in outs]).double().mean()
    model.train()
    torch.manual_seed(7)
    ev = evaluate(model, loader)
    assert math.isclose(ev.elbo, float(manual), rel_tol=1e-6)
    assert math.isclose(ev.kl, float(manual_kl), rel_tol=1e-6)


def test_evaluate_iwae(first64):
    """With num_samples=5 it also reports IWAE (>= the ELBO), its bits/dim and k."""
    model = tiny_conv()
    ev = evaluate(model, first64, num_samples=5)
    assert ev.num_samples == 5 and ev.images == 64
    assert ev.iwae > ev.elbo - 1.0
    assert math.isclose(ev.iwae_bits_per_dim, losses.bits_per_dim(ev.iwae), rel_tol=1e-12)
    assert ev.iwae_bits_per_dim < ev.bits_per_dim + 1.0 / (3072 * math.log(2))


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_uses_eval_mode_and_restores_it(first64, training):
    """The model runs in eval mode during evaluate and gets its training flag back."""
    model = tiny_conv()
    model.train(training)
    seen = []
    model.decoder.register_forward_hook(lambda mod, inp, out: seen.append(mod.training))
    evaluate(model, first64, num_samples=2)
    assert seen and not any(seen)
    assert model.training is training
    assert all(m.training is training for m in model.modules())


# --- latent statistics ---------------------------------------------------------------------------

def test_latent_statistics_active_units(first64):
    """Latent dims whose mean ignores x are inactive; the others are counted as active."""
    model = tiny_conv()
    head = model.encoder[-1]  # Linear -> (mean, log_var)
    dead = [0, 3, 5]
    with torch.no_grad():
        head.weight[:8].mul_(200)  # make the live means move clearly with x
        head.weight[dead] = 0.0  # these means are their bias, whatever the image
    model.train()
    stats = latent_statistics(model, first64)
    assert model.training  # restored
    activity = stats["activity"]
    assert activity.shape == (8,)
    assert torch.equal(activity[dead], torch.zeros(3))
    live = [i for i in range(8) if i not in dead]
    assert (activity[live] > 0.01).all()
    assert stats["active_units"] == 5 and stats["threshold"] == 0.01
    high = float(activity.max()) + 1
    assert latent_statistics(model, first64, threshold=high)["active_units"] == 0


def test_latent_statistics_kl_per_dim(first64):
    """kl_per_dim is (D,) and sums to the mean KL over the data."""
    model = tiny_conv()
    stats = latent_statistics(model, first64)
    model.eval()
    with torch.no_grad():
        kls = torch.cat([losses.gaussian_kl(*model.encode(x)) for x, _ in first64])
    assert stats["kl_per_dim"].shape == (8,) and (stats["kl_per_dim"] >= 0).all()
    torch.testing.assert_close(stats["kl_per_dim"].sum(), kls.mean(), rtol=1e-5, atol=1e-5)


def test_latent_statistics_linear_gaussian(lg):
    """For a linear encoder mean A x + c, activity is diag(A Cov(x) A^T) exactly."""
    x = lg.sample(300)
    stats = latent_statistics(lg, [(x[:128], None), (x[128:], None)])
    a = lg.A.detach()
    expected = torch.diagonal(a @ torch.cov(x.T) @ a.T)
    torch.testing.assert_close(stats["activity"], expected, rtol=1e-10, atol=1e-12)
    kl = losses.gaussian_kl(*lg.encode(x), per_dim=True).detach().mean(0)
    torch.testing.assert_close(stats["kl_per_dim"], kl)
