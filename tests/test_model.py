"""Models: reparameterization, the protocol on every likelihood, the seed's fixes, sampling."""

import copy
import json
import math
import typing

import pytest
import torch
import torch.nn as nn
from torch.distributions import Bernoulli, Normal

from vae_tutorial import losses
from vae_tutorial.config import ConfigError, ModelConfig
from vae_tutorial.model import (
    LIKELIHOODS,
    ConvVAE,
    SeedVAE,
    build_model,
    count_parameters,
    make_likelihood,
    reparameterize,
)

LATENT = 8
DISCRETE = ("logistic", "logistic_mixture")  # likelihoods that are probabilities of 8-bit pixels


def make(name: str, likelihood: str) -> nn.Module:
    """A small model: ConvVAE(width 16, one residual block), the seed network (z of size 8),
    or a small hierarchical VAE (groups at 4, 8 and 16 px)."""
    return build_model(kind=name, width=16, res_blocks=1, latent_dim=LATENT,
                       likelihood=likelihood, mixtures=2, groups=(1, 1, 1), zdims=(4, 4, 2))


def Likelihood(kind: str, mixtures: int = 1):  # noqa: N802 - reads like the class it builds
    return make_likelihood(kind, mixtures)


MODELS = [(name, lk) for name in ("conv", "seed") for lk in LIKELIHOODS]
IDS = [f"{name}-{lk}" for name, lk in MODELS]
ALL = MODELS + [("hvae", lk) for lk in LIKELIHOODS]  # tests of the protocol alone
ALL_IDS = [f"{name}-{lk}" for name, lk in ALL]


@pytest.fixture
def images(subset_test):
    """Seven real test images in [0, 1]."""
    return subset_test[0][:7].float() / 255


def on_grid(x: torch.Tensor) -> bool:
    """Whether every value is k / 255 for an integer k (up to float32 rounding)."""
    return bool(((x * 255 - (x * 255).round()).abs() < 1e-4).all())


# --- reparameterize ----------------------------------------------------------------------------

def test_reparameterize_moments():
    """200k samples have mean `mean` and variance exp(log_var), within 5 standard errors."""
    n = 200_000
    mean = torch.tensor([0.5, -2.0, 3.0, 0.0], dtype=torch.float64)
    log_var = torch.tensor([0.0, -3.0, 1.5, -8.0], dtype=torch.float64)
    z = reparameterize(mean.expand(n, 4), log_var.expand(n, 4))
    var = log_var.exp()
    assert (z.mean(0) - mean).abs().lt(5 * (var / n).sqrt()).all()
    assert (z.var(0) - var).abs().lt(5 * var * math.sqrt(2 / (n - 1))).all()
    # and the samples are Gaussian: the fraction within one std is 68.27 %
    inside = ((z - mean).abs() < var.sqrt()).double().mean(0)
    assert (inside - 0.682689).abs().lt(5 * math.sqrt(0.2166 / n)).all()


def test_reparameterize_gradients():
    """dz/dmean = 1 and dz/dlog_var = 0.5 * std * eps, with eps = (z - mean) / std."""
    mean = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    log_var = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    z = reparameterize(mean, log_var)
    z.sum().backward()
    std = torch.exp(0.5 * log_var.detach())
    eps = (z.detach() - mean.detach()) / std
    assert torch.equal(mean.grad, torch.ones_like(mean))
    torch.testing.assert_close(log_var.grad, 0.5 * std * eps, rtol=1e-12, atol=1e-12)
    assert eps.abs().max() < 6 and eps.std() > 0.3  # eps is a standard normal draw


def test_reparameterize_is_fresh_noise():
    """Two calls draw different z, and the same seed gives the same z."""
    mean, log_var = torch.zeros(3, 4), torch.zeros(3, 4)
    torch.manual_seed(5)
    a = reparameterize(mean, log_var)
    b = reparameterize(mean, log_var)
    torch.manual_seed(5)
    assert not torch.equal(a, b) and torch.equal(a, reparameterize(mean, log_var))


# --- the model protocol ------------------------------------------------------------------------

@pytest.mark.parametrize("name,likelihood", MODELS, ids=IDS)
def test_protocol_shapes_and_values(name, likelihood, images):
    """encode (B, D) x2; decode (B, P, 32, 32); log p(x|z) (B,) finite; ELBO terms (B,)."""
    model = make(name, likelihood)
    b = len(images)
    mean, log_var = model.encode(images)
    assert mean.shape == log_var.shape == (b, LATENT)
    params = model.decode(mean)
    assert params.shape == (b, model.likelihood.channels, 32, 32)
    ll = model.log_likelihood(images, mean)
    assert ll.shape == (b,) and torch.isfinite(ll).all()
    if likelihood in DISCRETE:
        assert (ll < 0).all()  # log-probabilities of discrete images
    out = model(images)
    for t in (out.elbo, out.reconstruction, out.kl):
        assert t.shape == (b,) and torch.isfinite(t).all()
    assert out.kl_per_dim.shape == (b, LATENT)
    torch.testing.assert_close(out.elbo, out.reconstruction - out.kl)
    assert (out.kl >= 0).all()
    rec = model.reconstruct(images)
    assert rec.shape == images.shape and rec.min() >= 0 and rec.max() <= 1


@pytest.mark.parametrize("name,likelihood", ALL, ids=ALL_IDS)
@pytest.mark.parametrize("temperature", [1.0, 0.6, 0.0])
def test_sample(name, likelihood, temperature):
    """sample(n, temperature) gives (n, 3, 32, 32) in [0, 1], on the 1/255 grid for the 8-bit
    likelihoods, at every temperature."""
    model = make(name, likelihood).eval()
    x = model.sample(5, temperature=temperature)
    assert x.shape == (5, 3, 32, 32)
    assert x.min() >= 0 and x.max() <= 1
    if likelihood != "bernoulli":  # the Bernoulli "sample" is its mean
        assert on_grid(x)
        assert not torch.equal(x[0], x[1])  # pixel noise differs even at temperature 0


@pytest.mark.parametrize("name", ["conv", "seed", "hvae"])
def test_temperature_zero_is_the_prior_mean(name):
    """At temperature 0 every latent is its prior's mean: the decoder's output is the same for
    every draw; at temperature 1 it is not."""
    model = make(name, "bernoulli").eval()  # Bernoulli's sample is its mean: no pixel noise
    a, b = model.sample(3, temperature=0.0), model.sample(3, temperature=0.0)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0], a[2])
    assert not torch.allclose(model.sample(2, temperature=1.0)[0],
                              model.sample(2, temperature=1.0)[1])


def test_temperature_scales_the_prior_draw():
    """For a single-latent model, sample(n, t) decodes z = t * eps: the same seed at
    temperature t and 1 gives codes in the ratio t (checked through a linear decoder)."""
    model = make("seed", "bernoulli").eval()
    codes = []
    model.decode = lambda z: codes.append(z) or torch.zeros(len(z), 3, 32, 32)
    for t in (1.0, 0.4):
        torch.manual_seed(3)
        model.sample(4, temperature=t)
    torch.testing.assert_close(codes[1], 0.4 * codes[0])


@pytest.mark.parametrize("name,likelihood", ALL, ids=ALL_IDS)
def test_any_batch_size_train_and_eval(name, likelihood, images):
    """Batches of 1, 3 and 7 work in train and in eval mode (nothing assumes the batch size),
    and the ELBO is reconstruction minus KL for every model."""
    model = make(name, likelihood)
    for train in (True, False):
        model.train(train)
        for b in (1, 3, 7):
            out = model(images[:b])
            assert out.elbo.shape == (b,) and torch.isfinite(out.elbo).all()
            torch.testing.assert_close(out.elbo, out.reconstruction - out.kl)
            assert (out.kl >= 0).all()


@pytest.mark.parametrize("name", ["conv", "seed"])
def test_eval_mode_is_per_example(name, images):
    """In eval mode an example's encoding and log-likelihood do not depend on its batch."""
    model = make(name, "logistic_mixture").eval()
    mean, log_var = model.encode(images)
    z = torch.randn(len(images), LATENT)
    ll = model.log_likelihood(images, z)
    for i in (0, 4):
        m1, lv1 = model.encode(images[i:i + 1])
        torch.testing.assert_close(m1[0], mean[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(lv1[0], log_var[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.log_likelihood(images[i:i + 1], z[i:i + 1])[0], ll[i],
                                   rtol=1e-5, atol=1e-2)


def test_conv_batch_of_one_trains(images):
    """ConvVAE in train mode (BatchNorm) with B = 1: finite ELBO and finite gradients."""
    model = make("conv", "logistic_mixture").train()
    out = model(images[:1])
    assert torch.isfinite(out.elbo).all()
    (-out.elbo.mean()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name,likelihood", MODELS, ids=IDS)
def test_extreme_log_var_no_nan(name, likelihood, images):
    """log_var = +-30 through reparameterize, the decoder, the likelihood and the KL: finite."""
    model = make(name, likelihood).eval()
    mean, _ = model.encode(images)
    for value in (-30.0, 30.0):
        log_var = torch.full_like(mean, value)
        z = reparameterize(mean, log_var)
        out = losses.elbo(model.log_likelihood(images, z), mean, log_var)
        assert torch.isfinite(out.elbo).all() and torch.isfinite(out.kl).all(), value


@pytest.mark.parametrize("name,likelihood", MODELS, ids=IDS)
def test_huge_decoder_output_finite(name, likelihood, images):
    """A final decoder layer scaled x100 gives finite log-likelihoods and gradients."""
    model = make(name, likelihood)
    last = model.decoder[-1]
    with torch.no_grad():
        last.weight.mul_(100)
        last.bias.mul_(100)
    z = 3 * torch.randn(len(images), LATENT)
    params = model.decode(z)
    assert params.abs().max() > 50  # the outputs really are extreme
    ll = model.likelihood.log_prob(images, params)
    assert torch.isfinite(ll).all()
    ll.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- the seed network's fixes --------------------------------------------------------------------

def test_leaky_relu_true_is_identity():
    """The seed's nn.LeakyReLU(True) has negative_slope == 1.0: it is the identity."""
    act = nn.LeakyReLU(True)
    assert act.negative_slope == 1.0
    x = torch.randn(1000)
    assert torch.equal(act(x), x)
    assert not torch.equal(nn.LeakyReLU(0.01)(x), x)


def test_seed_vae_activations_are_leaky_relu_001():
    """Every activation of SeedVAE is LeakyReLU(0.01), in the encoder and the decoder."""
    model = build_model(kind="seed", latent_dim=LATENT)
    for part in (model.encoder, model.decoder):
        acts = [m for m in part if isinstance(m, nn.LeakyReLU)]
        assert len(acts) >= 2
        assert all(a.negative_slope == 0.01 for a in acts)


def _affinity_residual(f, x: torch.Tensor, y: torch.Tensor) -> float:
    """max |f(x) + f(y) - f(0) - f(x + y)|: zero exactly when f is affine."""
    with torch.no_grad():
        r = f(x) + f(y) - f(torch.zeros_like(x)) - f(x + y)
        return float(r.abs().max() / f(x).abs().max())


def test_seed_encoder_is_nonlinear_but_seed_bug_was_affine():
    """The fixed encoder is not affine; with the seed's LeakyReLU(True) it is exactly affine."""
    model = build_model(kind="seed", latent_dim=LATENT)
    x, y = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    assert _affinity_residual(model.encoder, x, y) > 1e-2
    with torch.no_grad():  # f(-x) != -f(x) + 2 f(0) either
        f0 = model.encoder(torch.zeros_like(x))
        assert not torch.allclose(model.encoder(-x), 2 * f0 - model.encoder(x), atol=1e-3)
    buggy = copy.deepcopy(model)
    for i, m in enumerate(buggy.encoder):
        if isinstance(m, nn.LeakyReLU):
            buggy.encoder[i] = nn.LeakyReLU(True)
    assert _affinity_residual(buggy.encoder, x, y) < 1e-4


# --- configuration -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["conv", "seed", "hvae"])
def test_model_config_round_trip(name, images):
    """ModelConfig.to_dict -> JSON -> from_dict rebuilds the same architecture, which loads
    the weights and computes the same function."""
    model = build_model(kind=name, width=16, res_blocks=1, latent_dim=LATENT,
                        likelihood="logistic" if name == "conv" else "gaussian", mixtures=4,
                        groups=(1, 0, 2), zdims=(3, 5, 2))
    d = model.config.to_dict()
    stored = json.loads(json.dumps(d))  # storable in a checkpoint as JSON
    rebuilt = build_model(ModelConfig.from_dict(stored))
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    assert count_parameters(rebuilt) == count_parameters(model)
    a, b = model.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    rebuilt.load_state_dict(a)
    model.eval()
    rebuilt.eval()
    torch.manual_seed(0)
    expected = model.reconstruct(images)
    torch.manual_seed(0)
    torch.testing.assert_close(rebuilt.reconstruct(images), expected)


def test_build_model_overrides_and_errors():
    """build_model applies keyword overrides; a bad kind or likelihood is one clear error."""
    m = build_model(kind="conv", width=8, res_blocks=0, latent_dim=5, likelihood="bernoulli")
    assert isinstance(m, ConvVAE) and m.config.width == 8 and m.latent_dim == 5
    assert m.likelihood.kind == "bernoulli"
    assert isinstance(build_model(kind="seed", latent_dim=6), SeedVAE)
    with pytest.raises(ConfigError, match="kind = 'resnet'.*conv, seed, hvae"):
        build_model(kind="resnet")
    with pytest.raises(ConfigError, match="likelihood"):
        build_model(likelihood="poisson")
    with pytest.raises(ValueError, match="likelihood must be one of"):
        make_likelihood("poisson", 1)


# --- Likelihood ----------------------------------------------------------------------------------

def test_likelihood_channels():
    """Decoder channels: 3 (bernoulli, gaussian), 6 (logistic), 10 K (mixture of K)."""
    assert [Likelihood(k, 4).channels for k in LIKELIHOODS] == [3, 3, 6, 40]
    assert list(LIKELIHOODS) == list(typing.get_args(
        typing.get_type_hints(ModelConfig)["likelihood"]))  # the config offers each kind


def test_likelihood_log_prob_dispatch():
    """Each kind scores x with the documented parameterisation of the decoder output."""
    x = torch.randint(0, 256, (2, 3, 4, 4)).float() / 255
    p6 = torch.randn(2, 6, 4, 4)
    ref = Normal(torch.sigmoid(p6[:, :3]), 0.1).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(Likelihood("gaussian").log_prob(x, p6[:, :3]), ref)
    binary = (x > 0.5).float()
    ref = Bernoulli(logits=p6[:, :3]).log_prob(binary).flatten(1).sum(1)
    torch.testing.assert_close(Likelihood("bernoulli").log_prob(binary, p6[:, :3]), ref)
    p6[:, 3:, 0, 0] = -20.0  # clamped to MIN_LOG_SCALE
    ref = losses.discretized_logistic_log_likelihood(
        x, p6[:, :3] + 0.5, p6[:, 3:].clamp(min=losses.MIN_LOG_SCALE))
    torch.testing.assert_close(Likelihood("logistic").log_prob(x, p6), ref)
    p20 = torch.randn(2, 20, 4, 4)
    torch.testing.assert_close(Likelihood("logistic_mixture", 2).log_prob(x, p20),
                               losses.discretized_mix_logistic_log_likelihood(x, p20))


def test_mixture_mean_k1_zero_coupling():
    """With K=1 and zero coupling, the mixture's mean image is its means + 0.5, clamped."""
    params = 2 * torch.randn(3, 10, 8, 8)
    params[:, [3, 6, 9]] = 0.0  # atanh(0): no coupling
    means = params[:, [1, 4, 7]] + 0.5
    out = Likelihood("logistic_mixture", 1).mean(params)
    torch.testing.assert_close(out, means.clamp(0, 1))
    assert (out == 0).any() and (out == 1).any()  # the clamp was exercised
    torch.testing.assert_close(Likelihood("logistic").mean(params[:, :6]),
                               (params[:, :3] + 0.5).clamp(0, 1))


def _bins(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().long()


def test_logistic_sampler_matches_likelihood():
    """Samples of the discretized logistic have the bin frequencies of its log-likelihood."""
    mean, log_scale = 0.1, -3.0  # some mass piles into the edge bin 0
    params = torch.cat([torch.full((1, 3, 100, 100), mean - 0.5),
                        torch.full((1, 3, 100, 100), log_scale)], 1)
    counts = torch.bincount(_bins(Likelihood("logistic").sample(params)).flatten(), minlength=256)
    freq = counts.double() / counts.sum()
    grid = torch.arange(256, dtype=torch.float64).view(256, 1) / 255
    probs = losses.discretized_logistic_log_likelihood(
        grid, torch.full_like(grid, mean), torch.full_like(grid, log_scale)).exp()
    assert probs[0] > 0.05  # the edge bin matters here
    n = counts.sum()
    assert ((freq - probs).abs() <= 5 * (probs * (1 - probs) / n).sqrt() + 1e-4).all()


def test_mixture_sampler_matches_likelihood_with_coupling():
    """Samples of (R, G) follow p(R) p(G | 8-bit R): G is conditioned on the rounded R.

    G has a tiny scale and a strong coupling (0.95) on R; a sampler that conditions on R before
    rounding blurs G | R by up to half a bin and is off by about 0.04 in total variation.
    """
    p = torch.tensor([0.0, 0.4 - 0.5, -5.0, math.atanh(0.95), 0.1 - 0.5, -7.0, 0.0,
                      0.5 - 0.5, -7.0, 0.0])
    params = p.view(1, 10, 1, 1).expand(1, 10, 250, 250)
    k = _bins(Likelihood("logistic_mixture", 1).sample(params)).reshape(3, -1)
    n = k.shape[1]
    emp = torch.bincount(k[0] * 256 + k[1], minlength=65536).double() / n
    v = torch.arange(256, dtype=torch.float64) / 255
    r, g = torch.meshgrid(v, v, indexing="ij")
    x = torch.stack([r, g, torch.full_like(r, 0.5)], -1).view(-1, 3, 1, 1)
    joint = losses.discretized_mix_logistic_log_likelihood(
        x, p.double().view(1, 10, 1, 1).expand(len(x), -1, -1, -1)).exp()
    p_b = losses.discretized_logistic_log_likelihood(  # B = 0.5 is independent of R and G
        torch.tensor([[0.5]]), torch.tensor([[0.5]]), torch.tensor([[-7.0]])).double().exp()
    model = joint / p_b
    assert abs(float(model.sum()) - 1) < 1e-6
    assert 0.5 * float((emp - model).abs().sum()) < 0.02


def test_mixture_sampler_component_weights():
    """Components are picked with probability softmax(logits)."""
    # two components far apart in R: 0.2 and 0.8, weights softmax([0, log 3]) = (1/4, 3/4)
    p = torch.zeros(20)
    p[:2] = torch.tensor([0.0, math.log(3.0)])
    rest = p[2:].view(3, 6)  # per channel: 2 means, 2 log-scales, 2 coupling
    rest[:, 0], rest[:, 1] = 0.2 - 0.5, 0.8 - 0.5
    rest[:, 2:4] = -5.0
    params = p.view(1, 20, 1, 1).expand(1, 20, 200, 200)
    red = Likelihood("logistic_mixture", 2).sample(params)[:, 0].flatten()
    frac = float((red > 0.5).double().mean())
    n = red.numel()
    assert abs(frac - 0.75) < 5 * math.sqrt(0.75 * 0.25 / n)


def test_mixture_mean_is_close_to_the_mean_of_samples():
    """The mixture's cheap mean is within 0.01 of the Monte Carlo mean of 4,000 samples per
    pixel for means inside [0, 1] without coupling (the edge bins' extra mass, and component
    means beyond [0, 1], are what it ignores there), but it couples G on the
    mixture-average R instead of each component's own R: where components with different R
    means couple differently it is off (here by 0.4), which is why it is called approximate."""
    g = torch.Generator().manual_seed(0)
    params = 0.3 * torch.randn(1, 30, 4, 4, generator=g)  # K = 3, means near mid-grey
    rest = params[:, 3:].view(1, 3, 9, 4, 4)  # per channel: 3 means, 3 log-scales, 3 coupling
    rest[:, :, 0:3] = 0.6 * torch.rand(1, 3, 3, 4, 4, generator=g) - 0.3  # means 0.2 to 0.8
    rest[:, :, 3:6] = -3.0  # log-scales: a logistic about 12 pixel values wide
    rest[:, :, 6:9] = 0.0  # no coupling
    lik = make_likelihood("logistic_mixture", 3)
    mc = lik.sample(params.expand(4000, -1, -1, -1)).mean(0, keepdim=True)
    assert (lik.mean(params) - mc).abs().max() < 0.01
    # two equally likely components: R = 0.1 with G = 0.99 R, and R = 0.9 with G = 1 - 0.99 R
    p = torch.zeros(1, 20, 1, 1)
    rest = p[:, 2:].view(1, 3, 6, 1, 1)  # per channel: 2 means, 2 log-scales, 2 coupling
    rest[:, 0, 0], rest[:, 0, 1] = 0.1 - 0.5, 0.9 - 0.5  # R means
    rest[:, 1, 0], rest[:, 1, 1] = 0.0 - 0.5, 1.0 - 0.5  # G means before coupling
    rest[:, :, 2:4] = -6.0
    rest[:, 0, 4], rest[:, 0, 5] = math.atanh(0.99), math.atanh(-0.99)  # G on R
    lik2 = make_likelihood("logistic_mixture", 2)
    mc_g = lik2.sample(p.expand(4000, -1, 8, 8))[:, 1].mean()
    assert abs(mc_g - 0.5 * (0.99 * 0.1 + 1 - 0.99 * 0.9)) < 0.01  # 0.104
    assert abs(lik2.mean(p)[0, 1, 0, 0] - 0.5) < 0.01  # coupled on the average R = 0.5
