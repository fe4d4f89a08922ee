"""VAE models: the seed notebook's network (fixed), the tutorial's ConvVAE, and their parts.

Every model follows one protocol, which the trainer, the evaluator and the notebooks rely on:
    forward(x) -> losses.ELBO       ELBO, reconstruction and KL per example (B,), one z ~ q(z|x)
    log_weights(x, k) -> (k, B)     log p(x, z_i) - log q(z_i|x) for k draws z_i ~ q(z|x)
    sample(n, temperature) -> (n, 3, 32, 32) images in [0, 1], z drawn from the prior at τ
    reconstruct(x) -> (B, 3, 32, 32) the decoder's mean image at the posterior's mean
    likelihood                      the decoder's distribution p(x|z), a `Likelihood`
Single-latent models (`VAE`) also expose encode(x) -> (mean, log_var) and decode(z) -> params.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import losses
from .config import ModelConfig


def reparameterize(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """z = mean + sigma * eps with eps ~ N(0, I): a sample of q(z|x) that gradients pass."""
    return mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)


# --- likelihoods: the decoder's distribution of 8-bit pixels -----------------------------------

class Likelihood(nn.Module):
    """p(x|z) from the decoder's (B, channels, H, W) output; evaluated in fp32 always."""

    kind: str  # the name in ModelConfig.likelihood
    discrete = False  # whether log_prob is a probability of 8-bit images (bits/dim compare)

    def __init__(self, mixtures: int):
        super().__init__()
        self.mixtures = mixtures

    @property
    def channels(self) -> int:
        """How many channels the decoder must output for 3-channel images."""
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log p(x|params), (B,) in nats, summed over pixels."""
        raise NotImplementedError

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
        return losses.discretized_mix_logistic_log_likelihood(x, params.float())

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


# --- single-latent VAEs -------------------------------------------------------------------------

class VAE(nn.Module):
    """A VAE with one Gaussian latent z ~ N(0, I): the protocol, given encoder and decoder."""

    latent_dim: int
    likelihood: Likelihood

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_var) of q(z|x), each (B, latent_dim); x in [0, 1]."""
        h = self.encoder(x - 0.5)  # (B, 2 * latent_dim)
        mean, log_var = h.flatten(1).float().chunk(2, dim=1)
        return mean, log_var

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Parameters of p(x|z), (B, likelihood.channels, 32, 32)."""
        return self.decoder(z)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z), (B,) nats summed over pixels."""
        return self.likelihood.log_prob(x, self.decode(z))

    def forward(self, x: torch.Tensor) -> losses.ELBO:
        """ELBO, reconstruction log-likelihood and KL per example, from one z ~ q(z|x)."""
        mean, log_var = self.encode(x)
        z = reparameterize(mean, log_var)
        return losses.elbo(self.log_likelihood(x, z), mean, log_var)

    @torch.no_grad()
    def log_weights(self, x: torch.Tensor, num_samples: int, chunk: int) -> torch.Tensor:
        """log p(x|z_i) + log p(z_i) - log q(z_i|x) for z_i ~ q(z|x), (num_samples, B).

        Encodes once and decodes the samples in chunks of at most `chunk` images; the
        log-weights are fp32 (fp64 for a fp64 model)."""
        mean, log_var = self.encode(x)  # (B, D) each
        b, d = mean.shape
        dtype = torch.promote_types(mean.dtype, torch.float32)
        std = torch.exp(0.5 * log_var)
        per_chunk = max(1, chunk // b)  # samples of every image decoded together
        out = []
        for start in range(0, num_samples, per_chunk):
            s = min(per_chunk, num_samples - start)
            eps = torch.randn(s, b, d, device=mean.device, dtype=dtype)
            z = mean + std * eps  # (s, B, D)
            log_pz = losses.standard_normal_log_prob(z).sum(-1)  # (s, B)
            log_qz = losses.normal_log_prob(z, mean, log_var).sum(-1)
            xs = x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, *x.shape[1:])
            log_px = self.log_likelihood(xs, z.reshape(s * b, d)).view(s, b).to(dtype)
            out.append(log_px + log_pz - log_qz)
        return torch.cat(out)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """n images in [0, 1]: z ~ N(0, temperature^2 I), then x ~ p(x|z)."""
        device = next(self.parameters()).device
        z = temperature * torch.randn(n, self.latent_dim, device=device)
        return self.likelihood.sample(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image at z = E[z|x], in [0, 1]."""
        return self.likelihood.mean(self.decode(self.encode(x)[0]))


class SeedVAE(VAE):
    """The seed notebook's network with its bugs fixed.

    Encoder: two 3x3 convolutions (3 -> 16 -> 32 channels, 32x32 kept) and two linear heads
    from the 32768 features to a 128-d mean and log-variance; the decoder mirrors it.
    What the seed got wrong, and what is done here instead:
    1. `nn.LeakyReLU(True)` sets negative_slope=True, i.e. 1.0: the "activation" was the
       identity and the encoder a single linear map. Here: `nn.LeakyReLU(0.01)`.
    2. Images normalised to [-1, 1] were scored by binary cross-entropy, which needs targets
       in [0, 1]: the loss went to -6e6 and current PyTorch refuses it. Here images stay in
       [0, 1] and the likelihood is chosen (default: discretized logistic mixture).
    3. `img.view(batch_size, ...)` broke on a short last batch. Here nothing assumes B.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config, self.latent_dim = config, config.latent_dim
        d = config.latent_dim
        self.likelihood = make_likelihood(config.likelihood, config.mixtures)
        act = nn.LeakyReLU(0.01)
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), act,  # (B, 16, 32, 32)
            nn.Conv2d(16, 32, 3, padding=1), act,  # (B, 32, 32, 32)
            nn.Flatten(),  # (B, 32768)
            nn.Linear(32 * 32 * 32, 2 * d),  # FC_mean and FC_var side by side
        )
        self.decoder = nn.Sequential(
            nn.Linear(d, 32 * 32 * 32), act,
            nn.Unflatten(1, (32, 32, 32)),  # (B, 32, 32, 32), any batch size
            nn.ConvTranspose2d(32, 16, 3, padding=1), act,  # (B, 16, 32, 32)
            nn.ConvTranspose2d(16, self.likelihood.channels, 3, padding=1),  # (B, P, 32, 32)
        )


class ResBlock(nn.Module):
    """x + conv(act(bn(conv(act(bn(x)))))), pre-activation (He et al., 2016)."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
        )

    def forward(self, x):
        return x + self.body(x)


def _down(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.SiLU())


def _up(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.SiLU())


class ConvVAE(VAE):
    """The tutorial's VAE: strided convolutions, residual blocks at 8x8, a 4x4 bottleneck.

    32x32 -> 16x16 (width) -> 8x8 (2 width, residual blocks) -> 4x4 (2 width) -> z, and back.
    BatchNorm and SiLU throughout. No layer runs at 32x32 (the costly resolution on a CPU):
    the first convolution has stride 2 and the last is a stride-2 transposed convolution
    that outputs the likelihood's parameters at every pixel.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config, self.latent_dim = config, config.latent_dim
        d = config.latent_dim
        self.likelihood = make_likelihood(config.likelihood, config.mixtures)
        w, blocks = config.width, config.res_blocks
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 4, stride=2, padding=1), nn.SiLU(),  # (B, w, 16, 16)
            _down(w, 2 * w),  # (B, 2w, 8, 8)
            *[ResBlock(2 * w) for _ in range(blocks)],
            _down(2 * w, 2 * w),  # (B, 2w, 4, 4)
            nn.Flatten(), nn.Linear(2 * w * 16, 2 * d),  # (B, 2 latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(d, 2 * w * 16), nn.Unflatten(1, (2 * w, 4, 4)),
            nn.BatchNorm2d(2 * w), nn.SiLU(),  # (B, 2w, 4, 4)
            _up(2 * w, 2 * w),  # (B, 2w, 8, 8)
            *[ResBlock(2 * w) for _ in range(blocks)],
            _up(2 * w, w),  # (B, w, 16, 16)
            nn.ConvTranspose2d(w, self.likelihood.channels, 4, stride=2, padding=1),  # (B,P,32,32)
        )


def build_model(config: ModelConfig | None = None, **overrides) -> nn.Module:
    """The model a ModelConfig describes, with field overrides; `model.config` keeps it."""
    from .hvae import HierarchicalVAE

    config = (config or ModelConfig()).replace(**overrides)
    cls = {"conv": ConvVAE, "seed": SeedVAE, "hvae": HierarchicalVAE}[config.kind]
    return cls(config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
