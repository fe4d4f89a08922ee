"""VAE models: the seed notebook's network (fixed) and the tutorial's ConvVAE.

Every model follows one protocol, which the trainer, the evaluator and the notebooks rely on:
    encode(x) -> (mean, log_var), each (B, latent_dim)
    decode(z) -> decoder distribution parameters (B, P, 32, 32)
    log_likelihood(x, z) -> (B,) log p(x|z) in nats, summed over pixels
    sample(n) -> (n, 3, 32, 32) images in [0, 1]
    forward(x) -> ELBO terms (B,) each, from one reparameterized sample
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import losses

LIKELIHOODS = ("bernoulli", "gaussian", "logistic", "logistic_mixture")


def reparameterize(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """z = mean + sigma * eps with eps ~ N(0, I): a sample of q(z|x) that gradients pass."""
    return mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)


class Likelihood(nn.Module):
    """The decoder's output distribution p(x|z), from a (B, P, H, W) parameter tensor."""

    def __init__(self, kind: str = "logistic_mixture", mixtures: int = 5):
        super().__init__()
        if kind not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {kind!r}")
        self.kind, self.mixtures = kind, mixtures
        if kind == "gaussian":  # one learned log-std per channel, shared by all pixels
            self.log_scale = nn.Parameter(torch.full((1, 3, 1, 1), math.log(0.1)))

    @property
    def channels(self) -> int:
        """How many channels the decoder must output for 3-channel images."""
        return {"bernoulli": 3, "gaussian": 3, "logistic": 6,
                "logistic_mixture": 10 * self.mixtures}[self.kind]

    @property
    def discrete(self) -> bool:
        """Whether log_prob is the log-probability of 8-bit images, so that bits/dim compare.

        Bernoulli scores k/255 as if it were a coin's bias, and the Gaussian is a density."""
        return self.kind in ("logistic", "logistic_mixture")

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log p(x|params), (B,) in nats: a probability of the 8-bit image only if discrete."""
        params = params.float()  # the likelihood is always evaluated in fp32
        if self.kind == "bernoulli":
            return losses.bernoulli_log_likelihood(x, params)
        if self.kind == "gaussian":
            return losses.gaussian_log_likelihood(x, torch.sigmoid(params), self.log_scale)
        if self.kind == "logistic":
            mean, log_scale = params.chunk(2, dim=1)
            return losses.discretized_logistic_log_likelihood(
                x, mean + 0.5, log_scale.clamp(min=losses.MIN_LOG_SCALE))
        return losses.discretized_mix_logistic_log_likelihood(x, params)

    @torch.no_grad()
    def sample(self, params: torch.Tensor) -> torch.Tensor:
        """Draw 8-bit images in [0, 1] from p(x|params)."""
        params = params.float()
        if self.kind == "bernoulli":
            return torch.sigmoid(params)  # the mean: binary samples of 8-bit images mean nothing
        if self.kind == "gaussian":
            x = torch.sigmoid(params) + self.log_scale.exp() * torch.randn_like(params)
        elif self.kind == "logistic":
            mean, log_scale = params.chunk(2, dim=1)
            x = mean + 0.5 + log_scale.clamp(min=losses.MIN_LOG_SCALE).exp() * _logistic_noise(mean)
        else:
            x = _sample_mix(params)
        return (x.clamp(0, 1) * 255).round() / 255

    @torch.no_grad()
    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The most representative image of p(x|params) (its mean), for reconstructions."""
        params = params.float()
        if self.kind in ("bernoulli", "gaussian"):
            return torch.sigmoid(params)
        if self.kind == "logistic":
            return (params.chunk(2, dim=1)[0] + 0.5).clamp(0, 1)
        logits, means, _, coeffs = losses.split_mix_params(params)
        w = logits.softmax(1).unsqueeze(1)  # (B, 1, K, H, W)
        r = (means[:, 0:1] * w).sum(2).clamp(0, 1)  # (B, 1, H, W); then couple G and B on it
        g = ((means[:, 1:2] + coeffs[:, 0:1] * r.unsqueeze(2)) * w).sum(2).clamp(0, 1)
        b = ((means[:, 2:3] + coeffs[:, 1:2] * r.unsqueeze(2) + coeffs[:, 2:3] * g.unsqueeze(2))
             * w).sum(2).clamp(0, 1)
        return torch.cat([r, g, b], dim=1)


def _logistic_noise(like: torch.Tensor) -> torch.Tensor:
    u = torch.rand_like(like).clamp(1e-5, 1 - 1e-5)
    return torch.log(u) - torch.log1p(-u)


def _sample_mix(params: torch.Tensor) -> torch.Tensor:
    """One draw per pixel: pick a component, then R, G given R, B given R and G."""
    logits, means, log_scales, coeffs = losses.split_mix_params(params)
    gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-5, 1 - 1e-5)))
    pick = F.one_hot((logits + gumbel).argmax(1), logits.shape[1]).permute(0, 3, 1, 2)
    pick = pick.unsqueeze(1).to(means.dtype)  # (B, 1, K, H, W)
    m, s, c = ((t * pick).sum(2) for t in (means, log_scales, coeffs))  # (B, 3, H, W)
    x = m + s.exp() * _logistic_noise(m)
    # G and B are conditioned on the 8-bit R (and G), as in the likelihood: round each first
    r = _to_8bit(x[:, 0])
    g = _to_8bit(x[:, 1] + c[:, 0] * r)
    b = _to_8bit(x[:, 2] + c[:, 1] * r + c[:, 2] * g)
    return torch.stack([r, g, b], dim=1)


def _to_8bit(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


class VAE(nn.Module):
    """The protocol shared by every model; subclasses set encoder, decoder and likelihood."""

    latent_dim: int
    likelihood: Likelihood

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_var) of q(z|x), each (B, latent_dim); x in [0, 1]."""
        h = self.encoder(x - 0.5)  # (B, 2 * latent_dim) or (B, 2c, h, w)
        mean, log_var = h.flatten(1).float().chunk(2, dim=1)
        return mean, log_var

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Parameters of p(x|z), (B, likelihood.channels, 32, 32)."""
        return self.decoder(z)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z), (B,) nats summed over pixels."""
        return self.likelihood.log_prob(x, self.decode(z))

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n images in [0, 1] from z ~ N(0, I) and x ~ p(x|z)."""
        device = next(self.parameters()).device
        return self.likelihood.sample(self.decode(torch.randn(n, self.latent_dim, device=device)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image at z = E[z|x], in [0, 1]."""
        return self.likelihood.mean(self.decode(self.encode(x)[0]))

    def forward(self, x: torch.Tensor) -> losses.ELBO:
        """ELBO, reconstruction log-likelihood and KL per example, from one z ~ q(z|x)."""
        mean, log_var = self.encode(x)
        z = reparameterize(mean, log_var)
        return losses.elbo(self.log_likelihood(x, z), mean, log_var)


class SeedVAE(VAE):
    """The seed notebook's network with its three bugs fixed.

    Encoder: two 3x3 convolutions (3 -> 16 -> 32 channels, 32x32 kept) and two linear heads
    from the 32768 features to a 128-d mean and log-variance; the decoder mirrors it.
    What the seed got wrong, and what is done here instead:
    1. `nn.LeakyReLU(True)` sets negative_slope=True, i.e. 1.0: the "activation" was the
       identity and the encoder a single linear map. Here: `nn.LeakyReLU(0.01)`.
    2. Images normalised to [-1, 1] were scored by binary cross-entropy, which needs targets
       in [0, 1]: the loss went to -6e6 and current PyTorch refuses it. Here images stay in
       [0, 1] and the likelihood is chosen (default: discretized logistic mixture).
    3. `img.view(batch_size, ...)` broke on the short last batch. Here nothing assumes B.
    """

    def __init__(self, latent_dim: int = 128, likelihood: str = "logistic_mixture",
                 mixtures: int = 5):
        super().__init__()
        self.latent_dim = latent_dim
        self.likelihood = Likelihood(likelihood, mixtures)
        act = nn.LeakyReLU(0.01)
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), act,  # (B, 16, 32, 32)
            nn.Conv2d(16, 32, 3, padding=1), act,  # (B, 32, 32, 32)
            nn.Flatten(),  # (B, 32768)
            nn.Linear(32 * 32 * 32, 2 * latent_dim),  # FC_mean and FC_var side by side
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 32 * 32 * 32), act,
            nn.Unflatten(1, (32, 32, 32)),  # (B, 32, 32, 32), any batch size
            nn.ConvTranspose2d(32, 16, 3, padding=1), act,  # (B, 16, 32, 32)
            nn.ConvTranspose2d(16, self.likelihood.channels, 3, padding=1),  # (B, P, 32, 32)
        )


@dataclass
class ConvVAEConfig:
    """Architecture of ConvVAE."""

    width: int = 64  # channels at 16x16; 2x at 8x8 and 4x4
    latent_dim: int = 128  # size of z
    res_blocks: int = 2  # residual blocks at 8x8 in the encoder and in the decoder
    likelihood: str = "logistic_mixture"  # bernoulli | gaussian | logistic | logistic_mixture
    mixtures: int = 5  # components of the logistic mixture


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

    def __init__(self, config: ConvVAEConfig | None = None, **overrides):
        super().__init__()
        cfg = replace(config or ConvVAEConfig(), **overrides)
        self.config, self.latent_dim = cfg, cfg.latent_dim
        self.likelihood = Likelihood(cfg.likelihood, cfg.mixtures)
        w = cfg.width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 4, stride=2, padding=1), nn.SiLU(),  # (B, w, 16, 16)
            _down(w, 2 * w),  # (B, 2w, 8, 8)
            *[ResBlock(2 * w) for _ in range(cfg.res_blocks)],
            _down(2 * w, 2 * w),  # (B, 2w, 4, 4)
            nn.Flatten(), nn.Linear(2 * w * 16, 2 * cfg.latent_dim),  # (B, 2 latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(cfg.latent_dim, 2 * w * 16), nn.Unflatten(1, (2 * w, 4, 4)),
            nn.BatchNorm2d(2 * w), nn.SiLU(),  # (B, 2w, 4, 4)
            _up(2 * w, 2 * w),  # (B, 2w, 8, 8)
            *[ResBlock(2 * w) for _ in range(cfg.res_blocks)],
            _up(2 * w, w),  # (B, w, 16, 16)
            nn.ConvTranspose2d(w, self.likelihood.channels, 4, stride=2, padding=1),  # (B,P,32,32)
        )


def build_model(name: str, **kwargs) -> VAE:
    """A model by name ("conv" or "seed") with keyword overrides of its configuration."""
    if name == "conv":
        return ConvVAE(**kwargs)
    if name == "seed":
        return SeedVAE(**{k: v for k, v in kwargs.items()
                          if k in ("latent_dim", "likelihood", "mixtures")})
    raise ValueError(f"model must be 'conv' or 'seed', got {name!r}")


def model_config(model: VAE) -> dict:
    """The keyword arguments that rebuild `model` with build_model."""
    if isinstance(model, ConvVAE):
        return {"name": "conv", **asdict(model.config)}
    return {"name": "seed", "latent_dim": model.latent_dim,
            "likelihood": model.likelihood.kind, "mixtures": model.likelihood.mixtures}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
