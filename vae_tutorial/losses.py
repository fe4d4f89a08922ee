"""Pure loss functions of the VAE: KL, log-likelihoods, ELBO and bits/dim.

Conventions, used everywhere in the package:
- images `x` are float tensors in [0, 1] of shape (B, C, H, W), pixel k stored as k / 255;
- every function returns one value per example, shape (B,), in nats, summed over all
  other dimensions. Summing over pixels keeps the ELBO a bound on log p(x) of the whole
  image; averaging over pixels would silently re-weight the KL term by 1 / 3072.
- the batch mean is taken by the caller (the trainer), once, at the very end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "gaussian_kl",
    "bernoulli_log_likelihood",
    "gaussian_log_likelihood",
    "discretized_logistic_log_likelihood",
    "discretized_mix_logistic_log_likelihood",
    "ELBO",
    "elbo",
    "bits_per_dim",
    "check_pixels",
    "normal_kl",
    "normal_log_prob",
    "standard_normal_log_prob",
    "to_8bit",
    "logistic_noise",
    "training_loss",
    "LogLikelihoodError",
]

HALF_BIN = 0.5 / 255.0  # half the width of one of the 256 pixel bins on the [0, 1] scale


class LogLikelihoodError(ValueError):
    """Raised when data cannot be scored by the chosen likelihood."""


def _sum_per_example(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension except the first (the batch)."""
    return t.flatten(1).sum(1)


def gaussian_kl(mean: torch.Tensor, log_var: torch.Tensor, per_dim: bool = False) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) in closed form; (B,) or, with per_dim, (B, D)."""
    kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var)
    return kl if per_dim else _sum_per_example(kl)


def check_pixels(x: torch.Tensor) -> None:
    """Refuse images outside [0, 1] with an explanation (one host sync: call it at the data
    boundary, not per loss call). CifarLoader's x = uint8 / 255 always passes."""
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if lo < 0.0 or hi > 1.0:
        raise LogLikelihoodError(
            f"images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]. Inputs normalised "
            "to [-1, 1] (as in the seed notebook's Normalize([0.5], [0.5])) make binary "
            "cross-entropy negative and meaningless: scale images with x / 255 instead.")


def bernoulli_log_likelihood(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x | sigmoid(logits)) from logits, stable; x in [0, 1] (see check_pixels)."""
    return -_sum_per_example(F.binary_cross_entropy_with_logits(logits, x, reduction="none"))


def gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor | float
) -> torch.Tensor:
    """log N(x | mean, exp(log_scale)^2), a density: fixed (float) or learned (tensor) scale."""
    log_scale = torch.as_tensor(log_scale, dtype=x.dtype, device=x.device)
    z = (x - mean) * torch.exp(-log_scale)
    return _sum_per_example(-0.5 * z.pow(2) - log_scale - 0.5 * math.log(2 * math.pi))


def _log_bin_mass(x, mean, log_scale):
    """log P(bin of x) under a logistic(mean, exp(log_scale)) discretized to 256 bins.

    All tensors broadcast together; x in [0, 1]. The lowest bin takes the mass below it and
    the highest the mass above it, so the 256 probabilities sum to one exactly.
    """
    # Each elementwise pass over these full-size tensors costs memory traffic, forward and
    # backward: x - mean once, and the lower edge negated as (HALF_BIN - centred), the same bits.
    inv_s = torch.exp(-log_scale)
    centred = x - mean
    plus = inv_s * (centred + HALF_BIN)  # upper edge of the bin, standardised
    neg_minus = inv_s * (HALF_BIN - centred)  # minus the lower edge
    log_cdf_plus = F.logsigmoid(plus)  # log F(upper): the whole mass of the lowest bin
    log_sf_minus = F.logsigmoid(neg_minus)  # log (1 - F(lower)): the whole mass of the highest
    # log(F(a) - F(b)) = log F(a) + log(1 - F(b)) + log(1 - exp(b - a)), stable for any a > b.
    # a - b = d = 2 HALF_BIN / scale; log(1 - exp(-d)) from log d, so that a huge scale (d
    # underflowing to 0) gives log d - d / 2 instead of log(0) = -inf.
    log_d = math.log(2 * HALF_BIN) - log_scale
    d = log_d.exp()
    log_width = torch.where(d < 1e-4, log_d - 0.5 * d, torch.log(-torch.expm1(-d.clamp(min=1e-4))))
    log_mid = log_cdf_plus + log_sf_minus + log_width
    return torch.where(x < HALF_BIN, log_cdf_plus, torch.where(x > 1 - HALF_BIN, log_sf_minus,
                                                                 log_mid))


def discretized_logistic_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log P(x) of 8-bit pixels under independent logistics discretized to 256 bins."""
    return _sum_per_example(_log_bin_mass(x, mean, log_scale))


def discretized_mix_logistic_log_likelihood(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """log P(x) under a per-pixel mixture of discretized logistics with RGB coupling.

    The PixelCNN++ output layer (Salimans et al., 2017) without spatial autoregression:
    params (B, 10K, H, W) hold, per pixel, K mixture logits, then for each of the 3 channels
    K means, K log-scales and 3K coupling coefficients (G on R, B on R, B on G) in tanh.
    Green's mean moves linearly with the red value, blue's with red and green.
    """
    logits, means, log_scales, coeffs = split_mix_params(params)  # (B,K,H,W), 3 x (B,3,K,H,W)
    xs = x.unsqueeze(2)  # (B, 3, 1, H, W)
    r, g, _ = xs.unbind(1)
    # unbind and split, not indexing: their gradients are one stack or cat, where each index
    # would fill a full-size tensor of zeros (the same values, a fraction of the memory traffic)
    m_r, m_g, m_b = means.unbind(1)  # (B, K, H, W) each
    c_gr, c_br, c_bg = coeffs.unbind(1)
    means = torch.stack([m_r, m_g + c_gr * r, m_b + c_br * r + c_bg * g], dim=1)  # (B,3,K,H,W)
    log_probs = _log_bin_mass(xs, means, log_scales).sum(1)  # (B, K, H, W), channels multiply
    log_mix = torch.logsumexp(log_probs + F.log_softmax(logits, dim=1), dim=1)  # (B, H, W)
    return _sum_per_example(log_mix)


MIN_LOG_SCALE = -7.0  # floor of every logistic's log-scale: far below one bin (log(1/255) = -5.5)


def split_mix_params(params: torch.Tensor):
    """Split (B, 10K, H, W) decoder output into mixture logits, means, log-scales, coupling."""
    b, c, h, w = params.shape
    k = c // 10
    logits, rest = params.split([k, 9 * k], dim=1)
    means, log_scales, coeffs = rest.reshape(b, 3, 3 * k, h, w).split(k, dim=2)
    means = means + 0.5  # centre the unit-scale output on mid-grey
    return logits, means, log_scales.clamp(min=MIN_LOG_SCALE), torch.tanh(coeffs)


@dataclass
class ELBO:
    """Per-example terms of the evidence lower bound, each (B,) in nats."""

    elbo: torch.Tensor  # log p(x|z) - KL(q(z|x) || p(z))
    reconstruction: torch.Tensor  # log p(x|z) at one z ~ q(z|x)
    kl: torch.Tensor  # KL(q(z|x) || p(z)), closed form
    kl_per_dim: torch.Tensor | None = None  # (B, D) the KL of each latent dimension


def elbo(log_likelihood: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> ELBO:
    """The ELBO of each example from log p(x|z) at a sampled z and the encoder's Gaussian."""
    kl_per_dim = gaussian_kl(mean, log_var, per_dim=True)
    kl = kl_per_dim.sum(1)
    return ELBO(elbo=log_likelihood - kl, reconstruction=log_likelihood, kl=kl,
                kl_per_dim=kl_per_dim)


def bits_per_dim(nats: torch.Tensor | float, dims: int = 3 * 32 * 32) -> torch.Tensor | float:
    """Convert a log-likelihood in nats per image to bits per dimension, -nats / (dims ln 2)."""
    return -nats / (dims * math.log(2.0))


def normal_kl(mean1, log_var1, mean2, log_var2):
    """KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))), elementwise (two Gaussians)."""
    return 0.5 * (log_var2 - log_var1 + (log_var1.exp() + (mean1 - mean2).pow(2))
                  * torch.exp(-log_var2) - 1.0)


def normal_log_prob(x, mean, log_var):
    """log N(x | mean, exp(log_var)), elementwise."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean).pow(2) * torch.exp(-log_var))


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z | 0, 1), elementwise."""
    return -0.5 * (z.pow(2) + math.log(2 * math.pi))


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    """Round values to the nearest of the 256 pixel values k / 255, clamped to [0, 1]."""
    return (x.clamp(0, 1) * 255).round() / 255


def logistic_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard logistic draws, log(u) - log(1 - u), shaped like `like`."""
    u = torch.rand_like(like).clamp(1e-5, 1 - 1e-5)
    return torch.log(u) - torch.log1p(-u)


def training_loss(out: ELBO, kl_weight: float = 1.0, free_bits: float = 0.0) -> torch.Tensor:
    """The minimised objective: -(reconstruction - kl_weight * KL), averaged over the batch.

    With free_bits > 0 the KL of each latent unit (each dimension, or each group of a
    hierarchical model), averaged over the batch, is not penalised below free_bits nats."""
    kl = out.kl
    if free_bits > 0:
        kl = out.kl_per_dim.mean(0).clamp(min=free_bits).sum().expand_as(out.kl)
    return -(out.reconstruction - kl_weight * kl).mean()
