"""Notebook 8's measurements of a trained hierarchical VAE: the KL of every latent variable, the
terms it is made of, and prior draws decoded to their mean image (without the pixel noise)."""

from __future__ import annotations

import torch

from . import losses
from .hvae import RESOLUTIONS, HierarchicalVAE, soft_clamp


@torch.no_grad()
def group_terms(model: HierarchicalVAE, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per latent group, coarse to fine, for one posterior draw of every group (the same draws as
    `model(x)` makes after the same torch.manual_seed): elementwise maps (B, zdim, r, r) of

        kl            KL(q(z_i | x, z_<i) || p(z_i | z_<i)) of each latent variable
        mean_term     (mu_q - mu_p)^2 / (2 sigma_p^2), the part of it that grows as 1/sigma_p^2
        prior_logvar  log sigma_p^2 (soft-clamped), posterior_logvar  log sigma_q^2
    """
    feats = model.bottom_up(x)
    h, res = model.h_top.expand(len(x), -1, -1, -1), RESOLUTIONS[0]
    out = []
    for group, r in zip(model.groups, model.group_res):
        while res < r:
            h, res = model.up[str(res)](h), 2 * res
        d = group.zdim
        p = group.prior(h)  # (B, 2 zdim + width, r, r): mu_p, log var_p, a change of h
        pm, plv, h = p[:, :d].float(), soft_clamp(p[:, d:2 * d].float()), h + p[:, 2 * d:]
        q = group.posterior(torch.cat([h, feats[r]], 1)).float()
        qm, qlv = q[:, :d], soft_clamp(q[:, d:])
        z = qm + torch.exp(0.5 * qlv) * torch.randn_like(qm)
        out.append({"kl": losses.normal_kl(qm, qlv, pm, plv),
                    "mean_term": 0.5 * (qm - pm).pow(2) * torch.exp(-plv),
                    "prior_logvar": plv, "posterior_logvar": qlv})
        h = group.cell(h + group.z_proj(z.to(h.dtype)))
    return out


@torch.no_grad()
def kl_statistics(model: HierarchicalVAE, batches) -> dict[str, list[torch.Tensor]]:
    """Over (x, label) batches, per group (lists, coarse to fine): "kl_channel" (zdim,) the KL
    of each channel summed over its positions and averaged over images (nats per image),
    "mean_term_channel" the same for (mu_q - mu_p)^2 / (2 sigma_p^2), and "prior_logvar_min" /
    "posterior_logvar_min" (scalars), the smallest log-variances met."""
    sums: dict[str, list[torch.Tensor]] = {}
    n = 0
    for x, _ in batches:
        terms = group_terms(model, x)
        if not sums:
            sums = {k: [torch.zeros(t["kl"].shape[1], dtype=torch.float64) for t in terms]
                    for k in ("kl_channel", "mean_term_channel")}
            sums["prior_logvar_min"] = [torch.tensor(float("inf"))] * len(terms)
            sums["posterior_logvar_min"] = [torch.tensor(float("inf"))] * len(terms)
        for i, t in enumerate(terms):
            sums["kl_channel"][i] += t["kl"].double().sum((0, 2, 3))
            sums["mean_term_channel"][i] += t["mean_term"].double().sum((0, 2, 3))
            for k in ("prior_logvar", "posterior_logvar"):
                sums[k + "_min"][i] = torch.minimum(sums[k + "_min"][i], t[k].min())
        n += len(x)
    for k in ("kl_channel", "mean_term_channel"):
        sums[k] = [s / n for s in sums[k]]
    return sums


def collapsed(kl_channel: torch.Tensor, latent_positions: int, threshold: float = 0.01) -> int:
    """How many channels carry less than `threshold` nats per latent variable (per position,
    per image): channels whose posterior is, to that precision, the prior."""
    return int((kl_channel / latent_positions < threshold).sum())


@torch.no_grad()
def prior_draws(model: HierarchicalVAE, n: int, temperature: float = 1.0):
    """(x ~ p(x | z), the mean image of p(x | z)) for n draws z of every group from its prior at
    `temperature`: the samples, and the same samples without the decoder's pixel noise."""
    params, _, _ = model.top_down(None, n, temperature)
    return model.likelihood.sample(params), model.likelihood.mean(params)
