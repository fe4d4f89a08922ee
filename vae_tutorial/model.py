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

from contextlib import contextmanager

import torch
import torch.nn as nn

from . import losses
from .config import ModelConfig
from .hvae import HierarchicalVAE
from .likelihoods import LIKELIHOODS, Likelihood, make_likelihood

__all__ = ["reparameterize", "eval_mode", "VAE", "SeedVAE", "ConvVAE", "HierarchicalVAE",
           "build_model", "count_parameters", "Likelihood", "LIKELIHOODS", "make_likelihood"]


def reparameterize(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """z = mean + sigma * eps with eps ~ N(0, I): a sample of q(z|x) that gradients pass."""
    return mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)


@contextmanager
def eval_mode(model: nn.Module):
    """Run the block with the model in eval mode, then give it back its training flag."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


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
    def log_weights(self, x: torch.Tensor, num_samples: int, chunk: int,
                    posterior: tuple | None = None) -> torch.Tensor:
        """log p(x|z_i) + log p(z_i) - log q(z_i|x) for z_i ~ q(z|x), (num_samples, B).

        q is the encoder's, or the (mean, log_var) given as `posterior`. Encodes once and
        decodes the samples in chunks of at most `chunk` images; the log-weights are fp32
        (fp64 for a fp64 model)."""
        mean, log_var = posterior if posterior is not None else self.encode(x)  # (B, D) each
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
    config = (config or ModelConfig()).replace(**overrides)
    cls = {"conv": ConvVAE, "seed": SeedVAE, "hvae": HierarchicalVAE}[config.kind]
    return cls(config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_used_parameters(model: nn.Module) -> int:
    """Number of trainable parameters the training loss reaches: those that the backward pass
    of one batch gives a gradient (a layer whose output the loss never uses gets none; a
    gradient that happens to be zero still counts). Gradients are cleared, the random state
    kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model.zero_grad(set_to_none=True)
        x = torch.rand(2, 3, 32, 32)
        (-model(x).elbo.mean()).backward()
    used = sum(p.numel() for p in model.parameters() if p.requires_grad and p.grad is not None)
    model.zero_grad(set_to_none=True)
    return used
