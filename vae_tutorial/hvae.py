"""A top-down hierarchical VAE (ladder / VDVAE style), small enough for a laptop CPU.

Bottom-up, a deterministic encoder computes features at 16x16, 8x8 and 4x4. Top-down, the
decoder starts from a learned 4x4 state h and visits groups of spatial latents from coarse to
fine. At each group i

    prior      p(z_i | z_<i)     = N(mu_p, sigma_p^2)  from h alone
    posterior  q(z_i | x, z_<i)  = N(mu_q, sigma_q^2)  from h and the bottom-up features there
    h <- h + proj(z_i), then a residual cell

so the prior of a group depends on every group above it, and so does the posterior (through h).
The ELBO is log p(x | z) - sum_i KL(q(z_i | x, z_<i) || p(z_i | z_<i)), each KL in closed form
given the groups above, so the per-group KL terms are exact for the drawn z_<i.

The cells are single 3x3 convolutions: on a CPU, thin bottleneck blocks (VDVAE's 1x1-3x3-3x3-1x1)
measured 2x slower per image for the same arithmetic.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import losses
from .config import ModelConfig
from .likelihoods import make_likelihood

RESOLUTIONS = (4, 8, 16)  # the latent grids, coarse to fine (32x32 images)
LOG_VAR_BOUND = 10.0  # log-variances are soft-clamped to (-10, 10): sigma in (0.007, 148)


def soft_clamp(x: torch.Tensor, bound: float = LOG_VAR_BOUND) -> torch.Tensor:
    """bound * tanh(x / bound): the identity near 0, smoothly limited to (-bound, bound)."""
    return bound * torch.tanh(x / bound)


class Cell(nn.Module):
    """act(x) -> 3x3 convolution, added to x when the widths agree (a residual cell)."""

    def __init__(self, cin: int, cout: int, scale: float = 1.0):
        super().__init__()
        self.residual = cin == cout
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        with torch.no_grad():  # a deep stack of residual cells starts near the identity
            self.conv.weight.mul_(scale)

    def forward(self, x):
        out = self.conv(nn.functional.silu(x))
        return x + out if self.residual else out


class LatentGroup(nn.Module):
    """One group of latents zdim x res x res: prior from h, posterior from (h, features)."""

    def __init__(self, width: int, zdim: int, scale: float):
        super().__init__()
        self.zdim = zdim
        self.prior = Cell(width, 2 * zdim + width)  # (mu_p, log_var_p, a change of h)
        self.posterior = Cell(2 * width, 2 * zdim)  # (mu_q, log_var_q) from [h, features]
        self.z_proj = nn.Conv2d(zdim, width, 1)
        self.cell = Cell(width, width, scale)
        with torch.no_grad():
            self.prior.conv.weight.zero_()  # the prior starts as N(0, I) and leaves h alone
            self.prior.conv.bias.zero_()
            self.z_proj.weight.mul_(scale)

    def forward(self, h, feat=None, temperature: float = 1.0, use_mean: bool = False):
        """(new h, KL (B,), log q(z) - log p(z) (B,)); with feat None, z from the prior
        at `temperature` and both terms None. use_mean: z = the posterior's mean."""
        p = self.prior(h)
        d = self.zdim
        pm, plv, dh = p.split([d, d, p.shape[1] - 2 * d], 1)  # split: one cat backward
        pm, plv, h = pm.float(), soft_clamp(plv.float()), h + dh
        if feat is None:
            z = pm + temperature * torch.exp(0.5 * plv) * torch.randn_like(pm)
            kl = log_ratio = None
        else:
            q = self.posterior(torch.cat([h, feat], 1)).float()
            qm, qlv = q.split(d, 1)
            qlv = soft_clamp(qlv)
            z = qm if use_mean else qm + torch.exp(0.5 * qlv) * torch.randn_like(qm)
            kl = losses.normal_kl(qm, qlv, pm, plv).flatten(1).sum(1)  # (B,)
            log_ratio = (losses.normal_log_prob(z, qm, qlv)
                         - losses.normal_log_prob(z, pm, plv)).flatten(1).sum(1)
        h = h + self.z_proj(z.to(h.dtype))
        return self.cell(h), kl, log_ratio


class HierarchicalVAE(nn.Module):
    """Bottom-up features at 16x16, 8x8, 4x4; top-down latent groups from 4x4 to 16x16.

    config.width channels at 16x16 and twice that at 8x8 and 4x4; config.groups and
    config.zdims give, per resolution (4, 8, 16), the number of latent groups and their
    channels; config.res_blocks bottom-up cells per resolution.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.likelihood = make_likelihood(config.likelihood, config.mixtures)
        widths = {4: 2 * config.width, 8: 2 * config.width, 16: config.width}
        n_groups = sum(config.groups)
        scale = 1 / math.sqrt(max(1, n_groups))
        self.stem = nn.Conv2d(3, widths[16], 4, stride=2, padding=1)  # (B, w, 16, 16)
        self.enc = nn.ModuleDict()  # per resolution: cells, then down to the next one
        for res in reversed(RESOLUTIONS):
            cells = [Cell(widths[res], widths[res], scale) for _ in range(config.res_blocks)]
            down = (nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(widths[res], widths[res // 2], 1))
                    if res > RESOLUTIONS[0] else nn.Identity())
            self.enc[str(res)] = nn.Sequential(*cells, down)
        self.h_top = nn.Parameter(torch.zeros(1, widths[4], 4, 4))  # the decoder's start
        self.groups = nn.ModuleList()
        self.group_res: list[int] = []  # the resolution of each group, coarse to fine
        self.up = nn.ModuleDict()
        for res, count, zdim in zip(RESOLUTIONS, config.groups, config.zdims):
            for _ in range(count):
                self.groups.append(LatentGroup(widths[res], zdim, scale))
                self.group_res.append(res)
            if res < RESOLUTIONS[-1]:
                self.up[str(res)] = nn.Sequential(nn.Upsample(scale_factor=2),
                                                  nn.Conv2d(widths[res], widths[2 * res], 1))
        self.out = nn.ConvTranspose2d(widths[16], self.likelihood.channels, 4, stride=2,
                                      padding=1)  # (B, P, 32, 32)

    @property
    def latent_dim(self) -> int:
        """Latent variables per image, all groups together."""
        return sum(g.zdim * r * r for g, r in zip(self.groups, self.group_res))

    def group_names(self) -> list[str]:
        """'4x4 #1', '8x8 #1', ...: one name per latent group, coarse to fine."""
        seen: dict[int, int] = {}
        names = []
        for r in self.group_res:
            seen[r] = seen.get(r, 0) + 1
            names.append(f"{r}x{r} #{seen[r]}")
        return names

    def bottom_up(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Features at every resolution, {res: (B, width, res, res)}, before downsampling."""
        h = self.stem(x - 0.5)
        feats = {}
        for res in reversed(RESOLUTIONS):
            layer = self.enc[str(res)]
            h = layer[:-1](h)
            feats[res] = h
            h = layer[-1](h)
        return feats

    def top_down(self, feats: dict | None, n: int, temperature: float = 1.0,
                 use_mean: bool = False):
        """(decoder output (n, P, 32, 32), per-group KL (n, G), summed log q - log p (n,));
        with feats None the latents come from the prior and the last two are None."""
        h, res = self.h_top.expand(n, -1, -1, -1), RESOLUTIONS[0]
        kls, ratios = [], []
        for group, r in zip(self.groups, self.group_res):
            while res < r:  # up to the group's resolution (past any without groups)
                h, res = self.up[str(res)](h), 2 * res
            h, kl, ratio = group(h, None if feats is None else feats[r], temperature, use_mean)
            kls.append(kl)
            ratios.append(ratio)
        while res < RESOLUTIONS[-1]:
            h, res = self.up[str(res)](h), 2 * res
        params = self.out(nn.functional.silu(h))
        if feats is None:
            return params, None, None
        return params, torch.stack(kls, 1), torch.stack(ratios, 1).sum(1)

    def forward(self, x: torch.Tensor) -> losses.ELBO:
        """ELBO terms per image; kl_per_dim holds the KL of each latent group, (B, G)."""
        params, kl_groups, _ = self.top_down(self.bottom_up(x), len(x))
        rec = self.likelihood.log_prob(x, params)
        kl = kl_groups.sum(1)
        return losses.ELBO(elbo=rec - kl, reconstruction=rec, kl=kl, kl_per_dim=kl_groups)

    @torch.no_grad()
    def log_weights(self, x: torch.Tensor, num_samples: int, chunk: int) -> torch.Tensor:
        """log p(x|z) + log p(z) - log q(z|x) for joint draws z ~ q(z|x), (num_samples, B).

        The bottom-up features are computed once; the top-down pass runs on at most `chunk`
        copies of the images at a time."""
        feats = self.bottom_up(x)
        b = len(x)
        per_chunk = max(1, chunk // b)
        out = []
        for start in range(0, num_samples, per_chunk):
            s = min(per_chunk, num_samples - start)
            rep = {r: f.repeat(s, 1, 1, 1) for r, f in feats.items()}
            xs = x.repeat(s, 1, 1, 1)
            params, _, log_ratio = self.top_down(rep, s * b)
            log_px = self.likelihood.log_prob(xs, params)
            out.append((log_px - log_ratio).view(s, b))
        return torch.cat(out)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """n images in [0, 1]: every group drawn from its prior with its std scaled by
        `temperature`, then x ~ p(x | z)."""
        params, _, _ = self.top_down(None, n, temperature)
        return self.likelihood.sample(params)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image with every group at its posterior mean."""
        params, _, _ = self.top_down(self.bottom_up(x), len(x), use_mean=True)
        return self.likelihood.mean(params)
