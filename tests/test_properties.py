"""Property-based tests of the maths (hypothesis): identities that must hold for every input,
not only the hand-picked ones of the other test files. Example counts are kept small so that
the whole file runs in well under a minute; each test says how many examples it draws."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vae_tutorial import losses
from vae_tutorial.evaluate import iwae_log_likelihood
from vae_tutorial.linear_gaussian import LinearGaussianVAE
from vae_tutorial.model import build_model, reparameterize

D64 = torch.float64
finite = st.floats(min_value=-30, max_value=30, allow_nan=False, allow_infinity=False)
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
LEVELS = torch.arange(256, dtype=D64) / 255  # the 256 values of a sub-pixel


@settings(max_examples=60, **SETTINGS)
@given(mean=st.lists(finite, min_size=1, max_size=6),
       log_var=st.lists(st.floats(-20, 20, allow_nan=False), min_size=1, max_size=6))
def test_gaussian_kl_is_nonnegative_and_zero_only_at_the_prior(mean, log_var):
    """KL(N(m, v) || N(0, 1)) >= |m|^2 / 2 >= 0 for any m, v (since v - 1 - log v >= 0) up to
    float64 rounding, it is 0 at the prior, and positive away from it (60 examples)."""
    n = min(len(mean), len(log_var))
    m = torch.tensor(mean[:n], dtype=D64)[None]
    lv = torch.tensor(log_var[:n], dtype=D64)[None]
    kl = losses.gaussian_kl(m, lv).item()
    assert kl >= 0.5 * m.pow(2).sum().item() * (1 - 1e-12) - 1e-12
    if m.abs().max() > 1e-3 or lv.abs().max() > 1e-3:
        assert kl > 0
    assert losses.gaussian_kl(torch.zeros_like(m), torch.zeros_like(lv)).item() == 0.0


@settings(max_examples=60, **SETTINGS)
@given(mean=st.floats(-2, 3, allow_nan=False), log_scale=st.floats(-7, 5, allow_nan=False))
def test_discretized_logistic_sums_to_one_over_the_256_values(mean, log_scale):
    """Any mean (inside or far outside [0, 1]) and any log-scale in the clamped range: the
    256 bin masses sum to 1 (60 examples)."""
    lp = losses.discretized_logistic_log_likelihood(
        LEVELS[:, None], torch.tensor(mean, dtype=D64), torch.tensor(log_scale, dtype=D64))
    assert abs(lp.exp().sum().item() - 1) < 1e-9
    assert (lp <= 1e-12).all()


@settings(max_examples=25, **SETTINGS)
@given(k=st.integers(1, 4), seed=st.integers(0, 2**31 - 1),
       spread=st.floats(0.1, 4.0), red=st.integers(0, 255))
def test_mixture_with_coupling_sums_to_one(k, seed, spread, red):
    """A mixture of k discretized logistics with arbitrary means, scales and coupling in
    (-1, 1): for a fixed red value, the masses over all 65,536 (g, b) give P(r), and the
    P(r) over the 256 red values sum to 1 (25 examples)."""
    params = spread * torch.randn(1, 10 * k, 1, 1, generator=torch.Generator().manual_seed(seed),
                                  dtype=D64)
    g, b = torch.meshgrid(LEVELS, LEVELS, indexing="ij")
    r = LEVELS[red].expand(65536)
    pixels = torch.stack([r, g.reshape(-1), b.reshape(-1)], 1).view(-1, 3, 1, 1)
    joint = losses.discretized_mix_logistic_log_likelihood(
        pixels, params.expand(65536, -1, -1, -1)).exp().sum()
    logits, means, log_scales, _ = losses.split_mix_params(params)
    log_pi = torch.log_softmax(logits[0, :, 0, 0], 0)
    comps = torch.stack([losses.discretized_logistic_log_likelihood(
        LEVELS[:, None], means[0, 0, j, 0, 0], log_scales[0, 0, j, 0, 0]) for j in range(k)], 1)
    p_red = torch.logsumexp(comps + log_pi, 1).exp()  # P(r) for the 256 red values
    assert abs(p_red.sum().item() - 1) < 1e-9
    assert abs(joint.item() - p_red[red].item()) < 1e-9


@settings(max_examples=100, **SETTINGS)
@given(nats=st.floats(-1e7, 1e7, allow_nan=False), dims=st.integers(1, 10**6))
@example(nats=5e-324, dims=3)  # found by CI: the smallest subnormal, bits/dim underflows to -0.0
def test_bits_per_dim_inverts(nats, dims):
    """nats -> bits/dim -> nats is the identity (to the last bits of a float64)."""
    bpd = losses.bits_per_dim(nats, dims)
    assert math.isclose(-bpd * dims * math.log(2.0), nats, rel_tol=1e-14, abs_tol=1e-9)
    # the sign flips (as a sign bit: a subnormal nats gives a bits/dim of -0.0, not 0.0)
    assert math.copysign(1.0, bpd) == -math.copysign(1.0, nats)


@settings(max_examples=20, **SETTINGS)
@given(mean=st.floats(-5, 5), log_var=st.floats(-6, 4), seed=st.integers(0, 2**31 - 1))
def test_reparameterize_keeps_mean_and_variance(mean, log_var, seed):
    """20,000 draws of mean + exp(log_var / 2) eps have that mean and variance, within 5
    standard errors (20 examples)."""
    torch.manual_seed(seed)
    n = 20_000
    z = reparameterize(torch.full((n,), mean, dtype=D64), torch.full((n,), log_var, dtype=D64))
    var = math.exp(log_var)
    assert abs(z.mean().item() - mean) < 5 * math.sqrt(var / n)
    assert abs(z.var().item() - var) < 5 * var * math.sqrt(2 / (n - 1))


@settings(max_examples=8, **SETTINGS)
@given(seed=st.integers(0, 1000), sigma=st.floats(0.3, 1.5))
def test_iwae_is_nondecreasing_in_k_on_the_linear_gaussian_model(seed, sigma):
    """E[L_k] rises with k towards log p(x) (Burda et al.): averaged over 400 repeats per k,
    L_1 <= L_4 <= L_32 <= log p(x) up to 4 standard errors (8 random models)."""
    model = LinearGaussianVAE(data_dim=5, latent_dim=2, sigma=sigma, seed=seed)
    torch.manual_seed(seed)
    x = model.sample(3)
    reps = x.repeat(400, 1)
    means, ses = [], []
    for k in (1, 4, 32):
        lk = iwae_log_likelihood(model, reps, k).view(400, 3).mean(1)  # average over points
        means.append(lk.mean().item())
        ses.append(lk.std().item() / math.sqrt(400))
    log_px = model.log_marginal(x).mean().item()
    for (a, sa), (b, sb) in zip(zip(means, ses), zip(means[1:], ses[1:])):
        assert b > a - 4 * math.hypot(sa, sb)
    assert means[-1] < log_px + 4 * ses[-1]


@settings(max_examples=12, **SETTINGS)
@given(kind=st.sampled_from(["conv", "seed", "hvae"]),
       likelihood=st.sampled_from(["bernoulli", "gaussian", "logistic", "logistic_mixture"]),
       batch=st.integers(1, 5), seed=st.integers(0, 1000))
def test_elbo_is_reconstruction_minus_kl_for_every_model(kind, likelihood, batch, seed):
    """For every model and likelihood, in train and eval mode, on any batch size: the ELBO
    terms are finite, KL >= 0 and ELBO = reconstruction - KL (12 examples)."""
    torch.manual_seed(seed)
    model = build_model(kind=kind, width=8, latent_dim=4, likelihood=likelihood, mixtures=2,
                        groups=(1, 1, 1), zdims=(2, 2, 2))
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8).float() / 255
    for train in (True, False):
        model.train(train)
        out = model(x)
        assert torch.isfinite(out.elbo).all() and (out.kl >= 0).all()
        torch.testing.assert_close(out.elbo, out.reconstruction - out.kl)
        torch.testing.assert_close(out.kl, out.kl_per_dim.sum(1), rtol=1e-5, atol=1e-4)
