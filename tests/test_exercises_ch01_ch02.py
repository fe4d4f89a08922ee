"""Exercises 1.2 (the Monte Carlo ELBO) and 2.4 (a decoder to a specification): each check passes
correct solutions written in different ways, and rejects each typical mistake with the hint that
names it. The wrong solutions are written here, independently of the checks' own tables."""

import pytest
import torch
import torch.nn as nn
from conftest import assert_check_passes

from vae_tutorial import losses
from vae_tutorial.exercises import EXERCISES, NOT_ATTEMPTED, check_make_decoder, check_mc_elbo

# --- exercise 1.2: the Monte Carlo ELBO ---------------------------------------------------------


def mc_elbo_loop(model, x, num_samples):
    m, log_v = model.encode(x)
    kl = 0.5 * (m.pow(2) + log_v.exp() - 1 - log_v).sum(1)
    total = torch.zeros(x.shape[0], dtype=x.dtype)
    for _ in range(num_samples):
        total = total + model.log_likelihood(x, m + torch.exp(0.5 * log_v) * torch.randn_like(m))
    return total / num_samples - kl


def mc_elbo_batched(model, x, num_samples):
    m, log_v = model.encode(x)
    eps = torch.randn(num_samples, *m.shape, dtype=m.dtype)
    z = (m + torch.exp(0.5 * log_v) * eps).reshape(-1, m.shape[1])
    log_px = model.log_likelihood(x.repeat(num_samples, 1), z).view(num_samples, -1)
    return (log_px - losses.gaussian_kl(m, log_v)).mean(0)


def mc_elbo_joint(model, x, num_samples):
    """The other unbiased estimator: log p(x, z) - log q(z|x), with no closed-form KL."""
    m, log_v = model.encode(x)
    z = m + torch.exp(0.5 * log_v) * torch.randn(num_samples, *m.shape, dtype=m.dtype)
    log_px = model.log_likelihood(x.repeat(num_samples, 1), z.reshape(-1, m.shape[1]))
    log_pz = losses.standard_normal_log_prob(z).sum(-1)
    log_qz = losses.normal_log_prob(z, m, log_v).sum(-1)
    return (log_px.view(num_samples, -1) + log_pz - log_qz).mean(0)


def _mc(std=lambda lv: torch.exp(0.5 * lv), kl_sign=-1.0, kl_factor=0.5, reduce="mean",
        sample=True):
    def fn(model, x, num_samples):
        m, lv = model.encode(x)
        kl = kl_factor * (m.pow(2) + lv.exp() - 1 - lv).sum(1)
        draws = torch.stack([model.log_likelihood(
            x, m + std(lv) * torch.randn_like(m) if sample else m) + kl_sign * kl
            for _ in range(num_samples)])
        return {"mean": draws.mean(0), "sum": draws.sum(0), "none": draws}[reduce]
    return fn


def _fixed_noise(model, x, num_samples):
    m, log_v = model.encode(x)
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(num_samples, *m.shape, generator=g, dtype=m.dtype)
    z = (m + torch.exp(0.5 * log_v) * eps).reshape(-1, m.shape[1])
    log_px = model.log_likelihood(x.repeat(num_samples, 1), z).view(num_samples, -1)
    return (log_px - losses.gaussian_kl(m, log_v)).mean(0)


def _calls_forward(model, x, num_samples):
    return torch.stack([model(x).elbo for _ in range(num_samples)]).mean(0)


def test_registered_in_order_of_the_notebooks():
    names = [n for n, (nb, _) in EXERCISES.items() if nb in (1, 2)]
    assert names == ["exact_elbo", "mc_elbo", "log_mean_exp", "iwae_bounds",
                     "conv_output_size", "conv_parameters", "make_encoder", "make_decoder"]
    assert EXERCISES["mc_elbo"] == (1, check_mc_elbo)
    assert EXERCISES["make_decoder"] == (2, check_make_decoder)


@pytest.mark.parametrize("solution", [mc_elbo_loop, mc_elbo_batched, mc_elbo_joint],
                         ids=["loop", "batched", "log p(x,z) - log q(z|x)"])
def test_mc_elbo_passes_correct_solutions(solution, capsys):
    assert_check_passes(check_mc_elbo, solution, capsys, "check_mc_elbo: passed (")


@pytest.mark.parametrize("wrong,words", [
    (_mc(std=lambda lv: lv.exp()), "exp(log_var) is the variance"),
    (_mc(kl_sign=0.0), "subtract the KL term"),
    (_mc(kl_sign=1.0), "subtracted, not added"),
    (_mc(kl_factor=1.0), "factor 0.5"),
    (_mc(reduce="sum"), "average over the draws"),
    (_mc(sample=False), "at the mean m only"),
    (_mc(reduce="none"), "One ELBO per data point"),
    (_fixed_noise, "fresh eps"),
    (_calls_forward, "model.encode and model.log_likelihood"),
], ids=["std", "no-kl", "plus-kl", "kl-factor", "sum", "no-sampling", "shape", "fixed-noise",
        "forward"])
def test_mc_elbo_rejects_a_mistake_with_its_hint(wrong, words):
    result = check_mc_elbo(wrong)
    assert result.status == "failed" and words in result.hint, result.message


def test_mc_elbo_stub_is_not_attempted():
    def stub(model, x, num_samples):
        raise NotImplementedError

    assert check_mc_elbo(stub).status == NOT_ATTEMPTED


# --- exercise 2.4: a decoder to a specification --------------------------------------------------

class _FixedBatch(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, h):
        return h.view(2, self.c, 4, 4)  # the seed's view(batch_size, ...)


def decoder(latent_dim, width, out_channels, act=nn.SiLU, bias=True, kernel=4, after=None,
            unflatten=True, norm=False):
    w = width
    layers = [nn.Linear(latent_dim, 2 * w * 16),
              nn.Unflatten(1, (2 * w, 4, 4)) if unflatten else _FixedBatch(2 * w)]
    layers += [nn.BatchNorm2d(2 * w)] if norm else []
    layers += [act(),
               nn.ConvTranspose2d(2 * w, 2 * w, kernel, stride=2, padding=1, bias=bias), act(),
               nn.ConvTranspose2d(2 * w, w, kernel, stride=2, padding=1, bias=bias), act(),
               nn.ConvTranspose2d(w, out_channels, 4, stride=2, padding=1, bias=bias)]
    layers += [after()] if after else []
    return nn.Sequential(*layers)


class _FunctionalSigmoid(nn.Module):
    """A decoder whose forward squashes its output with a function, not a module."""

    def __init__(self, *args):
        super().__init__()
        self.net = decoder(*args)

    def forward(self, z):
        return torch.sigmoid(self.net(z))


@pytest.mark.parametrize("act", [nn.SiLU, nn.ReLU, lambda: nn.LeakyReLU(0.01)],
                         ids=["SiLU", "ReLU", "LeakyReLU(0.01)"])
def test_make_decoder_passes_correct_solutions(act, capsys):
    state = torch.random.get_rng_state()
    result = check_make_decoder(lambda d, w, c: decoder(d, w, c, act=act))
    assert result and result.status == "passed", result.message
    assert capsys.readouterr().out.startswith("check_make_decoder: passed (")
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("wrong,words", [
    (lambda d, w, c: decoder(d, w, c, act=lambda: nn.LeakyReLU(True)), "affine"),
    (lambda d, w, c: decoder(d, w, c, bias=False), "bias=False"),
    (lambda d, w, c: decoder(d, w, c, after=nn.Sigmoid), "nothing after the last"),
    (lambda d, w, c: decoder(d, w, c, after=nn.SiLU), "nothing after the last"),
    (_FunctionalSigmoid, "nothing after the last"),
    (lambda d, w, c: decoder(d, w, c, kernel=3), "4 -> 8 -> 16 -> 32"),
    (lambda d, w, c: decoder(d, w, c, unflatten=False), "batch size"),
    (lambda d, w, c: decoder(d, w, c, act=nn.PReLU), "parameter-free"),
    (lambda d, w, c: decoder(d, w, c, norm=True), "no normalisation"),
    (lambda d, w, c: decoder(d, w, 3), "out_channels channels"),
    (lambda d, w, c: nn.Sequential(nn.Linear(d, c * 1024), nn.Unflatten(1, (c, 32, 32))),
     "nn.ConvTranspose2d"),
    (lambda d, w, c: [decoder(d, w, c)], "nn.Module"),
], ids=["LeakyReLU(True)", "no-bias", "sigmoid", "final-activation", "functional-sigmoid",
        "kernel-3", "fixed-batch", "PReLU", "BatchNorm", "channels", "no-ConvTranspose2d",
        "a-list"])
def test_make_decoder_rejects_a_mistake_with_its_hint(wrong, words):
    result = check_make_decoder(wrong)
    assert result.status == "failed" and words in result.hint, result.message


def test_make_decoder_stub_is_not_attempted():
    def stub(latent_dim, width, out_channels):
        raise NotImplementedError

    assert check_make_decoder(stub).status == NOT_ATTEMPTED
