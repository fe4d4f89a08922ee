"""Loss functions against torch.distributions, closed forms and Monte Carlo estimates."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import (
    Bernoulli,
    Normal,
    TransformedDistribution,
    Uniform,
    kl_divergence,
)
from torch.distributions.transforms import AffineTransform, SigmoidTransform

from vae_tutorial import losses
from vae_tutorial.losses import (
    MIN_LOG_SCALE,
    LogLikelihoodError,
    bernoulli_log_likelihood,
    bits_per_dim,
    check_pixels,
    discretized_logistic_log_likelihood,
    discretized_mix_logistic_log_likelihood,
    gaussian_kl,
    gaussian_log_likelihood,
)

D64 = torch.float64
GRID = torch.arange(256, dtype=D64) / 255  # the 256 pixel values on the [0, 1] scale
MEANS = [-0.3, 0.0, 0.2, 0.5, 0.77, 1.0, 1.4]
LOG_SCALES = [-7.0, -5.0, -3.0, -1.0, 0.0, 2.0]


# --- independent references ------------------------------------------------------------------

def logistic(mean, scale) -> TransformedDistribution:
    """Logistic(mean, scale) as torch.distributions builds it: affine(logit(U)), U ~ U(0, 1)."""
    mean, scale = torch.as_tensor(mean, dtype=D64), torch.as_tensor(scale, dtype=D64)
    base = Uniform(torch.zeros((), dtype=D64), torch.ones((), dtype=D64))
    return TransformedDistribution(base, [SigmoidTransform().inv, AffineTransform(mean, scale)])


def ref_bin_prob_cdf(k: torch.Tensor, mean, scale) -> torch.Tensor:
    """P(pixel = k) from torch.distributions' logistic CDF: F(upper) - F(lower), edge bins
    taking the tails. Accurate to ~1e-16 absolute (not relative in the far tails)."""
    dist = logistic(mean, scale)
    x = k.to(D64) / 255
    upper = torch.where(k == 255, torch.ones_like(x), dist.cdf(x + 0.5 / 255))
    lower = torch.where(k == 0, torch.zeros_like(x), dist.cdf(x - 0.5 / 255))
    return upper - lower


def ref_bin_prob(k: torch.Tensor, mean, scale) -> torch.Tensor:
    """The same mass with relative accuracy in both tails, from sigmoid in float64: below the
    mean F(u) - F(l), above it (1 - F(l)) - (1 - F(u)) = sigmoid(-l) - sigmoid(-u)."""
    mean, scale = torch.as_tensor(mean, dtype=D64), torch.as_tensor(scale, dtype=D64)
    x = k.to(D64) / 255
    u = torch.where(k == 255, torch.full_like(x, math.inf), (x + 0.5 / 255 - mean) / scale)
    lo = torch.where(k == 0, torch.full_like(x, -math.inf), (x - 0.5 / 255 - mean) / scale)
    below = torch.sigmoid(u) - torch.sigmoid(lo)
    above = torch.sigmoid(-lo) - torch.sigmoid(-u)
    return torch.where(x < mean, below, above)


def mix_params(logits, means, log_scales, coeffs):
    """Pack (K,), (3, K), (3, K), (3, K) per-pixel values into (1, 10K, 1, 1) decoder output.

    Follows split_mix_params: K logits, then per channel K means (minus the 0.5 it adds),
    K log-scales and K pre-tanh coupling coefficients.
    """
    rest = torch.cat([means - 0.5, log_scales, torch.atanh(coeffs)], dim=1)  # (3, 3K)
    return torch.cat([logits, rest.flatten()]).view(1, -1, 1, 1)


def ref_mix_prob(r, g, b, logits, means, log_scales, coeffs) -> torch.Tensor:
    """P(R=r, G=g, B=b) of one pixel, component by component, float64 (r, g, b ints)."""
    pis = torch.softmax(logits.to(D64), 0)
    total = torch.zeros((), dtype=D64)
    for k in range(len(pis)):
        m_r = means[0, k]
        m_g = means[1, k] + coeffs[0, k] * r / 255
        m_b = means[2, k] + coeffs[1, k] * r / 255 + coeffs[2, k] * g / 255
        p = pis[k]
        for v, m, c in ((r, m_r, 0), (g, m_g, 1), (b, m_b, 2)):
            p = p * ref_bin_prob(torch.tensor(v), m, log_scales[c, k].exp())
        total = total + p
    return total


def random_mix(k: int, seed: int = 0):
    """Random mixture parameters with non-zero coupling, float64."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(k, generator=gen, dtype=D64)
    means = 0.2 + 0.6 * torch.rand(3, k, generator=gen, dtype=D64)
    log_scales = -4.5 + 2.0 * torch.rand(3, k, generator=gen, dtype=D64)
    coeffs = 0.9 * (2 * torch.rand(3, k, generator=gen, dtype=D64) - 1)
    return logits, means, log_scales, coeffs


def pixels(rgb: list[tuple[int, int, int]]) -> torch.Tensor:
    """(N, 3, 1, 1) float64 images of single pixels from integer values."""
    return torch.tensor(rgb, dtype=D64).view(-1, 3, 1, 1) / 255


# --- gaussian_kl -------------------------------------------------------------------------------

def test_gaussian_kl_matches_torch_distributions():
    """Closed-form KL equals kl_divergence(Normal(mean, std), Normal(0, 1)).sum(-1)."""
    mean = 3 * torch.randn(64, 10, dtype=D64)
    log_var = torch.empty(64, 10, dtype=D64).uniform_(-20, 20)
    ref = kl_divergence(Normal(mean, torch.exp(0.5 * log_var)),
                        Normal(torch.zeros_like(mean), torch.ones_like(mean))).sum(-1)
    torch.testing.assert_close(gaussian_kl(mean, log_var), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("value", [-30.0, -20.0, 20.0, 30.0])
def test_gaussian_kl_extreme_log_var_is_finite_and_right(value):
    """log_var = +-20, +-30 in float32: finite, non-negative, equal to the float64 closed form."""
    mean = torch.randn(4, 8)
    log_var = torch.full((4, 8), value)
    kl = gaussian_kl(mean, log_var)
    assert torch.isfinite(kl).all() and (kl > 0).all()
    m, lv = mean.double(), log_var.double()
    ref = kl_divergence(Normal(m, torch.exp(0.5 * lv)), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl.double(), ref, rtol=1e-5, atol=1e-4)


def test_gaussian_kl_monte_carlo():
    """KL equals E_q[log q(z) - log p(z)] estimated from 200k samples, within 4 standard errors."""
    mean = torch.tensor([[0.7, -1.2, 0.1]], dtype=D64)
    log_var = torch.tensor([[-1.0, 0.5, -2.5]], dtype=D64)
    q = Normal(mean, torch.exp(0.5 * log_var))
    z = q.sample((200_000,))  # (S, 1, 3)
    terms = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1)[:, 0]  # (S,)
    se = terms.std() / math.sqrt(len(terms))
    assert abs(float(terms.mean() - gaussian_kl(mean, log_var)[0])) < 4 * float(se)


def test_gaussian_kl_per_dim():
    """per_dim gives (B, D) non-negative terms summing to the total; zero exactly at N(0, 1)."""
    mean, log_var = torch.randn(5, 7), torch.randn(5, 7)
    per_dim = gaussian_kl(mean, log_var, per_dim=True)
    assert per_dim.shape == (5, 7) and (per_dim >= 0).all()
    torch.testing.assert_close(per_dim.sum(1), gaussian_kl(mean, log_var))
    zero = gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3), per_dim=True)
    assert torch.equal(zero, torch.zeros(2, 3))


# --- discretized logistic ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_discretized_logistic_sums_to_one(dtype):
    """The 256 bin probabilities sum to 1 for means inside and outside [0, 1], any scale."""
    x = GRID.to(dtype).view(256, 1)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for mean in MEANS:
        for log_scale in LOG_SCALES:
            ll = discretized_logistic_log_likelihood(
                x, torch.full_like(x, mean), torch.full_like(x, log_scale))
            assert ll.shape == (256,)
            assert abs(float(torch.logsumexp(ll.double(), 0))) < tol, (mean, log_scale)


def test_discretized_logistic_bins_match_logistic_cdf():
    """Bin k has mass F(k/255 + 1/510) - F(k/255 - 1/510); bin 0 and 255 take the tails."""
    x = GRID.view(256, 1)
    k = torch.arange(256)
    for mean in MEANS:
        for log_scale in LOG_SCALES:
            ll = discretized_logistic_log_likelihood(
                x, torch.full_like(x, mean), torch.full_like(x, log_scale))
            ref = ref_bin_prob_cdf(k, mean, math.exp(log_scale))
            torch.testing.assert_close(ll.exp(), ref, rtol=0, atol=1e-12)
            big = ref > 1e-10  # where the CDF difference itself is accurate
            torch.testing.assert_close(ll[big], ref[big].log(), rtol=0, atol=1e-5)
            tails = ref_bin_prob(k, mean, math.exp(log_scale))  # relative accuracy everywhere
            ok = tails > 1e-300
            assert ok.sum() > 50
            torch.testing.assert_close(ll[ok], tails[ok].log(), rtol=1e-9, atol=1e-9)
            dist = logistic(mean, math.exp(log_scale))
            lowest = float(dist.cdf(torch.tensor(0.5 / 255, dtype=D64)))
            highest = float(1 - dist.cdf(torch.tensor(1 - 0.5 / 255, dtype=D64)))
            assert math.isclose(float(ll[0].exp()), lowest, rel_tol=1e-9, abs_tol=1e-14)
            assert math.isclose(float(ll[255].exp()), highest, rel_tol=1e-6, abs_tol=1e-14)


def test_discretized_logistic_float32_matches_reference():
    """In float32 the probabilities agree with the float64 reference to 1e-6."""
    x = GRID.float().view(256, 1)
    k = torch.arange(256)
    for mean in (-0.3, 0.4, 1.4):
        for log_scale in (-7.0, -4.0, 1.0):
            ll = discretized_logistic_log_likelihood(
                x, torch.full_like(x, mean), torch.full_like(x, log_scale))
            ref = ref_bin_prob(k, mean, math.exp(log_scale))
            torch.testing.assert_close(ll.double().exp(), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("log_scale", [-20.0, -7.0, 0.0, 10.0, 50.0, 200.0])
def test_discretized_logistic_extreme_scales_finite(log_scale):
    """Values and gradients stay finite for tiny and huge scales; still normalised."""
    x = GRID.float().view(256, 1)
    for mean in (-0.3, 0.5, 1.4):
        m = torch.full_like(x, mean, requires_grad=True)
        s = torch.full_like(x, log_scale, requires_grad=True)
        ll = discretized_logistic_log_likelihood(x, m, s)
        assert torch.isfinite(ll).all(), (mean, log_scale)
        ll.sum().backward()
        assert torch.isfinite(m.grad).all() and torch.isfinite(s.grad).all(), (mean, log_scale)
        if log_scale >= MIN_LOG_SCALE:  # below, float32 cannot place the bin edges finely enough
            assert abs(float(torch.logsumexp(ll.detach().double(), 0))) < 1e-5


def test_discretized_logistic_huge_scale_asymptote():
    """For a huge scale s a middle bin has mass (1/255) * density(mean) = (1/255) / (4 s)."""
    for log_scale in (30.0, 200.0):
        ll = discretized_logistic_log_likelihood(
            torch.tensor([[0.5]]), torch.tensor([[0.5]]), torch.tensor([[log_scale]]))
        expected = -math.log(255) - math.log(4) - log_scale
        assert math.isclose(float(ll), expected, rel_tol=1e-6)


def test_discretized_logistic_sums_over_pixels():
    """The per-image value is the sum of the per-pixel log-masses (independent pixels)."""
    x = torch.randint(0, 256, (2, 3, 4, 4)).double() / 255
    mean, log_scale = torch.rand(2, 3, 4, 4, dtype=D64), -3 + torch.rand(2, 3, 4, 4, dtype=D64)
    total = discretized_logistic_log_likelihood(x, mean, log_scale)
    k = (x * 255).round().long()
    ref = ref_bin_prob(k, mean, log_scale.exp()).log().flatten(1).sum(1)
    torch.testing.assert_close(total, ref, rtol=1e-9, atol=1e-9)


# --- discretized mixture of logistics ----------------------------------------------------------

def _split_params(means, log_scales, logits=None):
    """(B, 10, H, W) mixture params with K=1 and zero coupling from (B, 3, H, W) targets."""
    b, _, h, w = means.shape
    logits = torch.zeros(b, 1, h, w) if logits is None else logits
    chans = [torch.stack([means[:, c] - 0.5, log_scales[:, c], torch.zeros(b, h, w)], 1)
             for c in range(3)]
    return torch.cat([logits] + chans, dim=1)


def test_mix_k1_zero_coupling_equals_discretized_logistic():
    """K=1 with tanh(0) = 0 coupling is the independent discretized logistic (+0.5 on means)."""
    x = torch.randint(0, 256, (3, 3, 4, 4)).float() / 255
    x[0, :, 0, 0] = 0.0
    x[0, :, 0, 1] = 1.0  # both edge bins
    means = torch.rand(3, 3, 4, 4) * 1.6 - 0.3
    log_scales = torch.empty(3, 3, 4, 4).uniform_(MIN_LOG_SCALE, 1.0)
    params = _split_params(means, log_scales, logits=torch.randn(3, 1, 4, 4))
    torch.testing.assert_close(discretized_mix_logistic_log_likelihood(x, params),
                               discretized_logistic_log_likelihood(x, means, log_scales),
                               rtol=1e-5, atol=1e-3)


def test_mix_log_scales_clamped():
    """Log-scales below MIN_LOG_SCALE score like MIN_LOG_SCALE."""
    x = torch.randint(0, 256, (2, 3, 4, 4)).float() / 255
    means = torch.rand(2, 3, 4, 4)
    low = _split_params(means, torch.full((2, 3, 4, 4), -30.0))
    floor = _split_params(means, torch.full((2, 3, 4, 4), MIN_LOG_SCALE))
    out = discretized_mix_logistic_log_likelihood(x, low)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, discretized_mix_logistic_log_likelihood(x, floor))
    torch.testing.assert_close(out, discretized_logistic_log_likelihood(
        x, means, torch.full_like(means, MIN_LOG_SCALE)))


def test_mix_matches_reference_with_coupling():
    """K=3 with RGB coupling equals sum_k pi_k p_k(R) p_k(G|R) p_k(B|R,G) computed by hand."""
    mix = random_mix(3, seed=1)
    params = mix_params(*mix)
    rgb = [(0, 0, 0), (255, 255, 255), (0, 128, 255), (100, 120, 140), (130, 140, 150),
           (200, 50, 7), (128, 128, 128), (255, 0, 30)]
    ll = discretized_mix_logistic_log_likelihood(pixels(rgb), params.expand(len(rgb), -1, -1, -1))
    ref = torch.stack([ref_mix_prob(*v, *mix) for v in rgb])
    torch.testing.assert_close(ll, ref.log(), rtol=0, atol=1e-8)


def test_mix_normalised_with_coupling():
    """Exact marginal identities of a normalised joint with coupling (K=3, one pixel).

    sum over B of p(R, G, B) = sum_k pi_k p_k(R) p_k(G|R) for fixed (R, G); and summing over
    all 65,536 (G, B) for a fixed R leaves p(R) = sum_k pi_k p_k(R). Since the R marginal sums to
    one, the whole 256^3 joint does.
    """
    logits, means, log_scales, coeffs = mix = random_mix(3, seed=2)
    params = mix_params(*mix)
    pis = torch.softmax(logits, 0)
    v = torch.arange(256)
    for r, g in [(0, 0), (0, 255), (255, 17), (90, 160), (128, 128), (250, 3)]:
        rgb = [(r, g, int(b)) for b in v]
        ll = discretized_mix_logistic_log_likelihood(pixels(rgb), params.expand(256, -1, -1, -1))
        p_rg = sum(pis[k] * ref_bin_prob(torch.tensor(r), means[0, k], log_scales[0, k].exp())
                   * ref_bin_prob(torch.tensor(g), means[1, k] + coeffs[0, k] * r / 255,
                                  log_scales[1, k].exp()) for k in range(3))
        assert math.isclose(float(ll.exp().sum()), float(p_rg), rel_tol=1e-9), (r, g)
    for r in (140,):
        gg, bb = torch.meshgrid(v, v, indexing="ij")
        x = torch.stack([torch.full_like(gg, r), gg, bb], -1).view(-1, 3, 1, 1).double() / 255
        ll = discretized_mix_logistic_log_likelihood(x, params.expand(len(x), -1, -1, -1))
        p_r = sum(pis[k] * ref_bin_prob(torch.tensor(r), means[0, k], log_scales[0, k].exp())
                  for k in range(3))
        assert math.isclose(float(ll.exp().sum()), float(p_r), rel_tol=1e-9), r
    p_r_all = sum(pis[k] * ref_bin_prob(v, means[0, k], log_scales[0, k].exp()) for k in range(3))
    assert math.isclose(float(p_r_all.sum()), 1.0, rel_tol=1e-12)


def test_mix_of_identical_components_is_one_component():
    """Two identical components (any weights) score exactly like one; order does not matter."""
    logits, means, log_scales, coeffs = random_mix(1, seed=3)
    one = mix_params(logits, means, log_scales, coeffs)
    two = mix_params(torch.tensor([2.0, -1.0], dtype=D64), means.repeat(1, 2),
                     log_scales.repeat(1, 2), coeffs.repeat(1, 2))
    x = torch.randint(0, 256, (20, 3, 1, 1)).double() / 255
    torch.testing.assert_close(
        discretized_mix_logistic_log_likelihood(x, two.expand(20, -1, -1, -1)),
        discretized_mix_logistic_log_likelihood(x, one.expand(20, -1, -1, -1)))
    logits3, means3, log_scales3, coeffs3 = random_mix(3, seed=4)
    perm = torch.tensor([2, 0, 1])
    a = mix_params(logits3, means3, log_scales3, coeffs3).expand(20, -1, -1, -1)
    b = mix_params(logits3[perm], means3[:, perm], log_scales3[:, perm],
                   coeffs3[:, perm]).expand(20, -1, -1, -1)
    torch.testing.assert_close(discretized_mix_logistic_log_likelihood(x, a),
                               discretized_mix_logistic_log_likelihood(x, b))


def test_mix_extreme_params_finite_gradients():
    """Huge logits, scales and coefficients give finite values and gradients."""
    x = torch.randint(0, 256, (2, 3, 4, 4)).float() / 255
    x[:, :, 0, 0] = 0.0
    x[:, :, 0, 1] = 1.0
    params = (300 * torch.randn(2, 30, 4, 4)).requires_grad_()
    ll = discretized_mix_logistic_log_likelihood(x, params)
    assert torch.isfinite(ll).all()
    ll.sum().backward()
    assert torch.isfinite(params.grad).all()


# --- Bernoulli ---------------------------------------------------------------------------------

def test_bernoulli_matches_cross_entropy_formula():
    """log p = sum x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)), i.e. -BCE, and <= 0."""
    x = torch.rand(4, 3, 8, 8, dtype=D64)
    logits = 4 * torch.randn(4, 3, 8, 8, dtype=D64)
    p = torch.sigmoid(logits)
    ref = (x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    ll = bernoulli_log_likelihood(x, logits)
    torch.testing.assert_close(ll, ref, rtol=1e-10, atol=1e-8)
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    torch.testing.assert_close(ll, -bce)
    assert (ll <= 0).all()


def test_bernoulli_binary_targets_match_distribution():
    """For binary targets it is the Bernoulli(logits).log_prob summed over pixels."""
    x = torch.randint(0, 2, (3, 3, 4, 4)).float()
    logits = 3 * torch.randn(3, 3, 4, 4)
    ref = Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(bernoulli_log_likelihood(x, logits), ref)


def test_pixels_check_accepts_closed_unit_interval():
    """Images exactly 0 and 1 pass the data-boundary check (it is inclusive)."""
    x = torch.tensor([[0.0, 1.0, 0.5]])
    check_pixels(x)
    assert torch.isfinite(bernoulli_log_likelihood(x, torch.zeros(1, 3))).all()


def test_bernoulli_log_likelihood_never_syncs_with_the_host(monkeypatch):
    """The loss itself has no range check: no host sync per call (the check is check_pixels,
    at the data boundary)."""
    def no_sync(*args, **kwargs):
        raise AssertionError("a host sync in the loss")

    monkeypatch.setattr(torch, "aminmax", no_sync)
    bernoulli_log_likelihood(torch.full((1, 3), 0.5), torch.zeros(1, 3))


@pytest.mark.parametrize("low,high", [(-1.0, 1.0), (0.0, 1.5)])
def test_check_pixels_refuses_values_outside_unit_interval(low, high):
    """Seed-style [-1, 1] inputs raise LogLikelihoodError naming [0, 1] and the normalisation."""
    x = torch.empty(2, 3, 4, 4).uniform_(low, high)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = low, high
    with pytest.raises(LogLikelihoodError) as info:
        check_pixels(x)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert "[0, 1]" in msg and "x / 255" in msg
    if low < 0:
        assert "Normalize" in msg and "[-1, 1]" in msg


def test_pytorch_refuses_bce_on_minus_one_one_targets():
    """F.binary_cross_entropy rejects [-1, 1] targets; the logits form goes negative, unbounded."""
    target = torch.rand(16) * 2 - 1
    target[0] = -1.0
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        F.binary_cross_entropy(torch.rand(16), target)
    t = torch.tensor(-1.0)
    at_20 = F.binary_cross_entropy_with_logits(torch.tensor(-20.0), t)
    at_40 = F.binary_cross_entropy_with_logits(torch.tensor(-40.0), t)
    assert at_20 < 0 and at_40 < at_20 - 19  # a "loss" with no lower bound


# --- Gaussian ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["float", "per_channel", "full"])
def test_gaussian_log_likelihood_matches_normal(kind):
    """Equals Normal(mean, exp(log_scale)).log_prob(x) summed over non-batch dims."""
    x, mean = torch.rand(3, 3, 5, 5, dtype=D64), torch.rand(3, 3, 5, 5, dtype=D64)
    log_scale = {"float": math.log(0.1),
                 "per_channel": torch.tensor([-2.0, -1.0, 0.5], dtype=D64).view(1, 3, 1, 1),
                 "full": torch.randn(3, 3, 5, 5, dtype=D64)}[kind]
    scale = torch.as_tensor(log_scale, dtype=D64).exp().expand_as(x)
    ref = Normal(mean, scale).log_prob(x).flatten(1).sum(1)
    out = gaussian_log_likelihood(x, mean, log_scale)
    assert out.shape == (3,)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-9)


def test_gaussian_log_likelihood_gradient_reaches_scale():
    """A learned scale gets the gradient d/ds sum log N = sum ((x - m)^2 / s^2 - 1)."""
    x, mean = torch.rand(2, 3, 4, 4, dtype=D64), torch.rand(2, 3, 4, 4, dtype=D64)
    log_scale = torch.tensor(-1.0, dtype=D64, requires_grad=True)
    gaussian_log_likelihood(x, mean, log_scale).sum().backward()
    expected = ((x - mean).pow(2) * math.exp(2.0) - 1).sum()
    torch.testing.assert_close(log_scale.grad, expected)


# --- ELBO and bits/dim -------------------------------------------------------------------------

def test_elbo_terms():
    """elbo = reconstruction - kl; kl is the closed-form KL; kl_per_dim sums to kl."""
    rec = -1000 * torch.rand(6)
    mean, log_var = torch.randn(6, 9), torch.randn(6, 9)
    out = losses.elbo(rec, mean, log_var)
    assert out.elbo.shape == out.kl.shape == out.reconstruction.shape == (6,)
    assert out.kl_per_dim.shape == (6, 9)
    assert torch.equal(out.reconstruction, rec)
    torch.testing.assert_close(out.kl, gaussian_kl(mean, log_var))
    torch.testing.assert_close(out.kl_per_dim.sum(1), out.kl)
    torch.testing.assert_close(out.elbo, rec - out.kl)
    assert (out.elbo < out.reconstruction).all()


def test_bits_per_dim():
    """bits/dim = -nats / (dims ln 2): 8 bits/dim is -3072 * 8 ln 2 nats per image."""
    assert math.isclose(bits_per_dim(-3072 * math.log(2) * 8), 8.0, rel_tol=1e-12)
    assert math.isclose(bits_per_dim(-10 * math.log(2), dims=5), 2.0, rel_tol=1e-12)
    t = bits_per_dim(torch.tensor([-3072 * math.log(2), 0.0], dtype=D64))
    torch.testing.assert_close(t, torch.tensor([1.0, 0.0], dtype=D64))
    # a uniform distribution over 256 values per dimension is exactly 8 bits/dim
    uniform = 3072 * math.log(1 / 256)
    assert math.isclose(bits_per_dim(uniform), 8.0, rel_tol=1e-12)


# --- two Gaussians, the standard normal, 8-bit rounding, the training objective ------------------

def test_normal_kl_and_log_prob_match_torch_distributions():
    """normal_kl and normal_log_prob equal torch.distributions' Normal KL and log_prob."""
    g = torch.Generator().manual_seed(0)
    m1, m2, z = (torch.randn(50, generator=g, dtype=D64) for _ in range(3))
    lv1, lv2 = (3 * torch.randn(50, generator=g, dtype=D64) for _ in range(2))
    p, q = Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp())
    torch.testing.assert_close(losses.normal_kl(m1, lv1, m2, lv2), kl_divergence(p, q))
    torch.testing.assert_close(losses.normal_log_prob(z, m1, lv1), p.log_prob(z))
    torch.testing.assert_close(losses.standard_normal_log_prob(z),
                               Normal(0.0, 1.0).log_prob(z).to(D64))
    zeros = torch.zeros_like(m1)  # against the prior it is gaussian_kl, per dimension
    torch.testing.assert_close(losses.normal_kl(m1, lv1, zeros, zeros),
                               gaussian_kl(m1[None], lv1[None], per_dim=True)[0])
    assert losses.normal_kl(m1, lv1, m1, lv1).abs().max() < 1e-12


def test_to_8bit_rounds_to_the_pixel_grid_and_clamps():
    x = torch.tensor([-0.3, 0.0, 0.4 / 255, 0.6 / 255, 0.5, 254.6 / 255, 1.0, 7.0])
    expected = torch.tensor([0, 0, 0, 1, 128, 255, 255, 255]) / 255  # 0.5 * 255 = 127.5 -> 128
    torch.testing.assert_close(losses.to_8bit(x), expected)


def test_training_loss_kl_weight_and_free_bits():
    """training_loss is -(rec - w KL) averaged over the batch; with free bits each unit's
    batch-mean KL below the threshold costs the threshold instead."""
    rec = torch.tensor([-10.0, -20.0])
    kl_per_dim = torch.tensor([[0.1, 3.0], [0.3, 1.0]])  # unit means: 0.2 and 2.0
    out = losses.ELBO(elbo=rec - kl_per_dim.sum(1), reconstruction=rec,
                      kl=kl_per_dim.sum(1), kl_per_dim=kl_per_dim)
    assert float(losses.training_loss(out)) == pytest.approx(15.0 + 2.2)
    assert float(losses.training_loss(out, kl_weight=0.5)) == pytest.approx(15.0 + 1.1)
    assert float(losses.training_loss(out, free_bits=0.5)) == pytest.approx(15.0 + 0.5 + 2.0)
    assert float(losses.training_loss(out, free_bits=3.0)) == pytest.approx(15.0 + 6.0)
