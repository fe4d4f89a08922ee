"""The exercise checks of notebook 0, a whole VAE in one place (notebooks/00_a_whole_vae.ipynb)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..likelihoods import make_likelihood
from .verdict import Result, _as_tensor, _call, _close, _Failed, _run


def _vae_loss(x, encoder, decoder, likelihood, mistake=None):
    """(loss, per-image ELBO) as notebook 0 computes them; `mistake` makes a known wrong one."""
    mean, log_var = encoder(x).chunk(2, dim=1)
    if mistake == "swapped":
        mean, log_var = log_var, mean
    eps = torch.zeros_like(mean) if mistake == "no noise" else torch.randn_like(mean)
    std = log_var.exp() if mistake == "std" else torch.exp(0.5 * log_var)
    z = mean + std * eps
    if mistake == "detached":
        z = z.detach()
    reconstruction = likelihood.log_prob(x, decoder(z))
    terms = mean.pow(2) + log_var.exp() - 1 - log_var
    kl = terms if mistake == "kl half" else 0.5 * terms
    kl = kl.mean(1) if mistake == "kl mean" else kl.sum(1)
    elbo = reconstruction + kl if mistake == "kl sign" else reconstruction - kl
    if mistake == "batch sum":
        return -elbo.sum(), elbo
    return (elbo.mean() if mistake == "loss sign" else -elbo.mean()), elbo


_MISTAKES = [
    ("swapped", "the encoder's first d outputs are the means, the last d the log-variances: "
     "mean, log_var = encoder(x).chunk(2, dim=1)"),
    ("std", "sigma = exp(log_var / 2): exp(log_var) is the variance, not the standard deviation"),
    ("no noise", "draw z = mean + sigma * eps with eps = torch.randn_like(mean): at z = mean the "
     "reconstruction term scores the mean code, not a draw from q(z|x)"),
    ("kl half", "the closed-form KL has a factor 1/2: 0.5 * (mean^2 + var - 1 - log_var)"),
    ("kl mean", "sum the KL over the d dimensions of the code (.sum(1)): a mean divides it by d"),
    ("kl sign", "the ELBO subtracts the KL: reconstruction - KL"),
    ("batch sum", "average the loss over the batch (.mean()): a sum makes the gradient grow "
     "with the batch size"),
    ("loss sign", "the loss is the NEGATIVE ELBO: we maximise the ELBO by minimising -ELBO"),
]


def _nets(d: int, channels: int, size: int = 8):
    """A tiny encoder (image -> 2d numbers) and decoder (d -> channels x size x size)."""
    encoder = nn.Sequential(nn.Conv2d(3, 4, 4, stride=2, padding=1), nn.SiLU(), nn.Flatten(),
                            nn.Linear(4 * (size // 2) ** 2, 2 * d))
    decoder = nn.Sequential(nn.Linear(d, 4 * (size // 2) ** 2),
                            nn.Unflatten(1, (4, size // 2, size // 2)), nn.SiLU(),
                            nn.ConvTranspose2d(4, channels, 4, stride=2, padding=1))
    with torch.no_grad():  # log-variances far from 0, and a decoder that listens to z
        encoder[-1].bias[d:] = torch.linspace(-2.0, 1.0, d)
        decoder[0].weight *= 5.0
    return encoder, decoder


def _grads(loss, module):
    """The gradient of `loss` at every parameter of `module`, flattened (zeros where unused)."""
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                      for g, p in zip(grads, params)])


def check_vae_loss(fn) -> Result:
    """fn(x, encoder, decoder, likelihood) -> (loss, elbo): the negative ELBO averaged over the
    batch, and each image's ELBO (B,), from one reparameterized draw of z."""
    def body():
        cases = [("4 images, a code of 3 numbers, the discretized logistic", 4, 3, "logistic"),
                 ("3 images, a code of 5 numbers, a Gaussian likelihood", 3, 5, "gaussian")]
        for case, b, d, kind in cases:
            torch.manual_seed(b * 10 + d)
            likelihood = make_likelihood(kind, 1)
            encoder, decoder = _nets(d, likelihood.channels)
            x = torch.randint(0, 256, (b, 3, 8, 8)).float() / 255
            torch.manual_seed(123)
            got = _call(fn, case, x, encoder, decoder, likelihood)
            if not (isinstance(got, (tuple, list)) and len(got) == 2):
                raise _Failed(case, "return two things: (loss, elbo)")
            loss, elbo = got
            torch.manual_seed(123)
            ref_loss, ref_elbo = _vae_loss(x, encoder, decoder, likelihood)
            g_elbo, g_loss = _as_tensor(elbo), _as_tensor(loss)
            if g_elbo is None or g_elbo.shape != ref_elbo.shape:
                raise _Failed(case, "elbo is the ELBO of each image, shape (B,): sum over "
                              "pixels and over the code, not over the batch",
                              f"shape {tuple(ref_elbo.shape)}",
                              f"shape {tuple(g_elbo.shape)}" if g_elbo is not None else elbo)
            if g_loss is None or g_loss.numel() != 1:
                raise _Failed(case, "loss is one number: the negative ELBO averaged over the "
                              "batch", "a single number", loss)
            got_all = torch.cat([g_loss.reshape(1), g_elbo])
            ref_all = torch.cat([ref_loss.detach().reshape(1), ref_elbo.detach()]).double()
            if not _close(got_all, ref_all, rtol=1e-5, atol=1e-4):
                for mistake, hint in _MISTAKES:
                    torch.manual_seed(123)
                    m_loss, m_elbo = _vae_loss(x, encoder, decoder, likelihood, mistake)
                    wrong = torch.cat([m_loss.detach().reshape(1), m_elbo.detach()]).double()
                    if _close(got_all, wrong, rtol=1e-5, atol=1e-4):
                        raise _Failed(case, hint, ref_all, got_all)
                if torch.isnan(g_elbo).any():
                    hint = "NaN in the ELBO: sigma is exp(log_var / 2), never sqrt(log_var)"
                else:
                    hint = ("encode, split into mean and log_var, z = mean + exp(log_var / 2) "
                            "* eps, reconstruction = likelihood.log_prob(x, decoder(z)), KL in "
                            "closed form, ELBO = reconstruction - KL, loss = -ELBO.mean()")
                raise _Failed(f"{case} (first value: the loss, then each image's ELBO)", hint,
                              ref_all, got_all)
            if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
                raise _Failed(case, "return the loss as a tensor that keeps its graph (no "
                              ".item(), .detach() or torch.no_grad()): backward() needs it")
            ref_grad = _grads(ref_loss, encoder)
            got_grad = _grads(loss.reshape(()), encoder)
            if not _close(got_grad, ref_grad.double(), rtol=1e-3, atol=1e-5):
                torch.manual_seed(123)
                detached = _grads(_vae_loss(x, encoder, decoder, likelihood, "detached")[0],
                                  encoder)
                hint = ("the encoder's gradient differs: build z from the encoder's outputs "
                        "with plain arithmetic, without .detach() or torch.no_grad()")
                if _close(got_grad, detached.double(), rtol=1e-3, atol=1e-5):
                    hint = ("z was detached: the reconstruction's gradient must reach the "
                            "encoder through z = mean + sigma * eps (that is the "
                            "reparameterization trick)")
                raise _Failed(case, hint, f"gradient norm {float(ref_grad.norm()):.6g}",
                              f"gradient norm {float(got_grad.norm()):.6g}")
        return ("loss, each image's ELBO and the encoder's gradient, on the same noise as the "
                "reference, with two likelihoods")
    return _run("vae_loss", body)
