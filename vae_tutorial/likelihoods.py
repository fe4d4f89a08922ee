"""The decoder's distribution p(x|z) of 8-bit pixels, one small class per kind.

Each turns the decoder's (B, channels, H, W) output into log p(x|z) per image (nats, summed
over pixels), draws 8-bit images, and gives a mean image for reconstructions. Always in fp32.
The trainer fuses the default likelihood's elementwise passes with torch.compile (`fused`).
"""

from __future__ import annotations

import functools
import logging
import math
import warnings

import torch
import torch.nn as nn

from . import losses


class Fused:
    """`fn` compiled by torch.compile on its first call: its elementwise passes become a few
    loops, forward and backward (the same values to float rounding: tests/test_fused.py).
    Where compiling fails (no C++ compiler, say), one warning, and `fn` itself from then on."""

    def __init__(self, fn):
        self.fn, self.compiled, self.failed = fn, None, False
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        if self.failed:
            return self.fn(*args)
        if self.compiled is None:  # a CUDA build on a CPU machine: one line of noise, hidden
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            # static shapes: each batch size gets its own kernels whatever the order they come
            # in, so that a resumed run computes exactly as the uninterrupted one
            self.compiled = torch.compile(self.fn, dynamic=False)
        try:
            return self.compiled(*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure: the reference instead
            self.failed = True
            warnings.warn(f"the likelihood runs unfused: torch.compile failed here "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:200]})",
                          stacklevel=2)
            return self.fn(*args)


fused_mix_logistic_log_likelihood = Fused(losses.discretized_mix_logistic_log_likelihood)


class Likelihood(nn.Module):
    """p(x|z) from the decoder's (B, channels, H, W) output; evaluated in fp32 always."""

    kind: str  # the name in ModelConfig.likelihood
    discrete = False  # whether log_prob is a probability of 8-bit images (bits/dim compare)

    def __init__(self, mixtures: int):
        super().__init__()
        self.mixtures = mixtures
        self.fused = False  # log_prob through torch.compile where a kind has it (the trainer's)

    @property
    def channels(self) -> int:
        """How many channels the decoder must output for 3-channel images."""
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log p(x|params), (B,) in nats, summed over pixels."""
        raise NotImplementedError

    def runs_fused(self) -> bool:
        """Whether log_prob runs compiled (asked for, possible for this kind, compiled)."""
        return False

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        """Draw 8-bit images in [0, 1] from p(x|params)."""
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The mean image of p(x|params) (approximate where stated), for reconstructions."""
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Each sub-pixel a coin with bias sigmoid(logit), scored at k/255: not a distribution of
    8-bit values (notebook 4); its sample is its mean, since binary images mean nothing here."""

    kind, channels = "bernoulli", 3

    def log_prob(self, x, params):
        return losses.bernoulli_log_likelihood(x, params.float())

    @torch.no_grad()
    def sample(self, params):
        return torch.sigmoid(params.float())

    @torch.no_grad()
    def mean(self, params):
        return torch.sigmoid(params.float())


class Gaussian(Likelihood):
    """N(sigmoid(output), s^2) with one learned log-scale per channel: a density, not a mass."""

    kind, channels = "gaussian", 3

    def __init__(self, mixtures: int):
        super().__init__(mixtures)
        self.log_scale = nn.Parameter(torch.full((1, 3, 1, 1), math.log(0.1)))

    def log_prob(self, x, params):
        return losses.gaussian_log_likelihood(x, torch.sigmoid(params.float()), self.log_scale)

    @torch.no_grad()
    def sample(self, params):
        mean = torch.sigmoid(params.float())
        return losses.to_8bit(mean + self.log_scale.exp() * torch.randn_like(mean))

    @torch.no_grad()
    def mean(self, params):
        return torch.sigmoid(params.float())


class Logistic(Likelihood):
    """One discretized logistic per sub-pixel: (mean - 0.5, log-scale) per channel."""

    kind, channels, discrete = "logistic", 6, True

    def _split(self, params):
        mean, log_scale = params.float().chunk(2, dim=1)
        return mean + 0.5, log_scale.clamp(min=losses.MIN_LOG_SCALE)

    def log_prob(self, x, params):
        return losses.discretized_logistic_log_likelihood(x, *self._split(params))

    @torch.no_grad()
    def sample(self, params):
        mean, log_scale = self._split(params)
        return losses.to_8bit(mean + log_scale.exp() * losses.logistic_noise(mean))

    @torch.no_grad()
    def mean(self, params):
        """The logistic's mean, clamped to [0, 1] (the edge bins' extra mass is ignored)."""
        return self._split(params)[0].clamp(0, 1)


class LogisticMixture(Likelihood):
    """A mixture of K discretized logistics per pixel with linear R -> G -> B coupling
    (PixelCNN++'s output layer without its autoregression); the tutorial's default."""

    kind, discrete = "logistic_mixture", True

    @property
    def channels(self):
        return 10 * self.mixtures

    def log_prob(self, x, params):
        if self.fused:
            return fused_mix_logistic_log_likelihood(x, params.float())
        return losses.discretized_mix_logistic_log_likelihood(x, params.float())

    def runs_fused(self):
        return self.fused and not fused_mix_logistic_log_likelihood.failed

    @torch.no_grad()
    def sample(self, params):
        """One draw per pixel: a component, then R, G given the 8-bit R, B given R and G."""
        logits, means, log_scales, coeffs = losses.split_mix_params(params.float())
        pick = torch.distributions.Categorical(logits=logits.movedim(1, -1)).sample()
        pick = nn.functional.one_hot(pick, logits.shape[1]).movedim(-1, 1)  # (B, K, H, W)
        pick = pick.unsqueeze(1).to(means.dtype)  # (B, 1, K, H, W)
        m, s, c = ((t * pick).sum(2) for t in (means, log_scales, coeffs))  # (B, 3, H, W)
        x = m + s.exp() * losses.logistic_noise(m)
        r = losses.to_8bit(x[:, 0])
        g = losses.to_8bit(x[:, 1] + c[:, 0] * r)
        b = losses.to_8bit(x[:, 2] + c[:, 1] * r + c[:, 2] * g)
        return torch.stack([r, g, b], dim=1)

    @torch.no_grad()
    def mean(self, params):
        """An approximate mean, cheap: each channel's mixture-average logistic mean, with G and
        B coupled on the mixture-average R (and G) rather than on each component's own, and
        the edge bins' extra mass (and component means beyond [0, 1]) ignored. Close to the
        exact mean where the components agree; tests/test_model.py measures both cases."""
        logits, means, _, coeffs = losses.split_mix_params(params.float())
        w = logits.softmax(1).unsqueeze(1)  # (B, 1, K, H, W)
        r = (means[:, 0:1] * w).sum(2).clamp(0, 1)  # (B, 1, H, W)
        g = ((means[:, 1:2] + coeffs[:, 0:1] * r.unsqueeze(2)) * w).sum(2).clamp(0, 1)
        b = ((means[:, 2:3] + coeffs[:, 1:2] * r.unsqueeze(2) + coeffs[:, 2:3] * g.unsqueeze(2))
             * w).sum(2).clamp(0, 1)
        return torch.cat([r, g, b], dim=1)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.kind: cls for cls in (Bernoulli, Gaussian, Logistic, LogisticMixture)}


def make_likelihood(kind: str, mixtures: int) -> Likelihood:
    """The likelihood named `kind` (a key of LIKELIHOODS)."""
    if kind not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {kind!r}")
    return LIKELIHOODS[kind](mixtures)
