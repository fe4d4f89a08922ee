"""Notebook 8's measurements of a trained hierarchical VAE: the KL of every latent variable, the
terms it is made of, prior draws decoded to their mean image (without the pixel noise), decodes
that take some groups from an image's posterior and the others from the prior (the 4x4 swap),
the latents of every group as one row (for notebook 7's classifier test, analysis.prior_vs_codes),
and a diagram of the top-down pass."""

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


# Controls of notebook 8: which groups make a decoded image look like a test image, and whether
# the hierarchy's learned prior draws latents that a classifier cannot tell from posterior codes.

@torch.no_grad()
def mixed_top_down(model: HierarchicalVAE, x: torch.Tensor | None = None, n: int | None = None,
                   from_posterior=(), temperature: float = 1.0, use_mean: bool = True):
    """One top-down pass in which the groups whose indices are in `from_posterior` (coarse to
    fine, 0 = the 4x4 group) take their latents from q(z_i | x, z_<i) of the images x (its mean
    when use_mean, else a draw) and every other group draws from its prior p(z_i | z_<i) at
    `temperature`. Each group sees the state h that the groups above it left, whichever way they
    were drawn. Returns (decoder output (B, P, 32, 32), [z_i (B, zdim, r, r) coarse to fine])."""
    chosen = set(from_posterior)
    if chosen and x is None:
        raise ValueError("groups from the posterior need images x")
    b = len(x) if x is not None else n
    feats = model.bottom_up(x) if chosen else None
    h, res = model.h_top.expand(b, -1, -1, -1), RESOLUTIONS[0]
    zs = []
    for i, (group, r) in enumerate(zip(model.groups, model.group_res)):
        while res < r:
            h, res = model.up[str(res)](h), 2 * res
        d = group.zdim
        p = group.prior(h)
        pm, plv, h = p[:, :d].float(), soft_clamp(p[:, d:2 * d].float()), h + p[:, 2 * d:]
        if i in chosen:
            q = group.posterior(torch.cat([h, feats[r]], 1)).float()
            qm, qlv = q[:, :d], soft_clamp(q[:, d:])
            z = qm if use_mean else qm + torch.exp(0.5 * qlv) * torch.randn_like(qm)
        else:
            z = pm + temperature * torch.exp(0.5 * plv) * torch.randn_like(pm)
        zs.append(z)
        h = group.cell(h + group.z_proj(z.to(h.dtype)))
    while res < RESOLUTIONS[-1]:
        h, res = model.up[str(res)](h), 2 * res
    return model.out(torch.nn.functional.silu(h)), zs


@torch.no_grad()
def swap_decodes(model: HierarchicalVAE, x: torch.Tensor, draws: int = 1) -> dict:
    """The 4x4 swap: decoder mean images of x with (a) every group at its posterior mean (the
    reconstruction), (b) the 4x4 group at its posterior mean and the finer groups drawn from the
    prior, (c) the 4x4 group drawn from the prior and the finer groups at their posterior means
    given it, (d) every group from the prior. Returns {name: (draws, B, 3, 32, 32)}."""
    fine = range(1, len(model.groups))
    plans = {"posterior (all groups)": range(len(model.groups)),
             "4x4 posterior, finer prior": [0],
             "4x4 prior, finer posterior": fine,
             "prior (all groups)": []}
    out = {}
    for name, groups in plans.items():
        out[name] = torch.stack([model.likelihood.mean(
            mixed_top_down(model, x, from_posterior=groups)[0]) for _ in range(draws)])
    return out


def layout_error(images: torch.Tensor, target: torch.Tensor, block: int = 8) -> torch.Tensor:
    """Mean squared error per image between (..., B, 3, 32, 32) images and their targets
    (B, 3, 32, 32), after averaging each over block x block pixels: at block 8, a 4x4 grid of
    mean colours, the layout of a scene without its detail; at block 1, the pixels. (..., B)."""
    pool = torch.nn.functional.avg_pool2d
    shape = images.shape
    a = pool(images.reshape(-1, *shape[-3:]).float(), block).reshape(*shape[:-2], -1)
    t = pool(target.float(), block).flatten(-2)
    return (a - t).pow(2).flatten(-2).mean(-1)


@torch.no_grad()
def all_group_codes(model: HierarchicalVAE, batches, draws: int = 4):
    """Posterior codes over all groups together: for every image of the (x, label) batches,
    `draws` joint draws z ~ q(z | x) (every group given the draws above it), each flattened and
    concatenated over the groups, coarse to fine. Returns (codes (N * draws, latent_dim), the
    index of each code's image (N * draws,)), image-major."""
    codes, index, seen = [], [], 0
    for x, _ in batches:
        for _ in range(draws):
            _, zs = mixed_top_down(model, x, from_posterior=range(len(model.groups)),
                                   use_mean=False)
            codes.append(torch.cat([z.flatten(1) for z in zs], 1).cpu())
            index.append(torch.arange(seen, seen + len(x)))
        seen += len(x)
    codes, index = torch.cat(codes), torch.cat(index)
    order = index.argsort(stable=True)
    return codes[order], index[order]


@torch.no_grad()
def all_group_prior(model: HierarchicalVAE, n: int, batch: int = 500,
                    temperature: float = 1.0) -> torch.Tensor:
    """n ancestral draws of every group from the learned prior, flattened and concatenated over
    the groups as in `all_group_codes`: (n, latent_dim)."""
    out = []
    for start in range(0, n, batch):
        _, zs = mixed_top_down(model, n=min(batch, n - start), temperature=temperature)
        out.append(torch.cat([z.flatten(1) for z in zs], 1).cpu())
    return torch.cat(out)


def top_down_diagram(group_res=(4, 8, 8, 16, 16), zdims=(32, 16, 16, 8, 8), widths=None):
    """A figure of the top-down pass: the residual state h from a learned 4x4 start through every
    latent group, coarse to fine (one column each: the prior cell, the posterior, which also
    reads the bottom-up features f_r, the latents z_i, and h <- cell(h + proj(z_i))), up-sampling
    between resolutions, and the output distribution. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    widths = widths or {4: 128, 8: 128, 16: 64}
    groups = list(group_res)
    seen: dict[int, int] = {}
    names = []
    for r in groups:
        seen[r] = seen.get(r, 0) + 1
        names.append(f"{r}x{r} #{seen[r]}")
    step = 2.7
    fig, ax = plt.subplots(figsize=(2.45 * len(groups) + 4.4, 5.6))
    ax.set_axis_off()
    colours = {4: "#dbe8f6", 8: "#fde5cf", 16: "#dcefd9"}

    def box(xc, yc, text, colour="white", w=2.0, h=0.62, bold=False):
        ax.add_patch(FancyBboxPatch((xc - w / 2, yc - h / 2), w, h,
                                    boxstyle="round,pad=0.03", fc=colour, ec="0.3", lw=1))
        ax.text(xc, yc, text, ha="center", va="center", fontsize=8,
                fontweight="bold" if bold else "normal")

    def arrow(a, b, colour="0.2", ls="-", rad=0.0):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=10, color=colour,
                                     lw=1.1, ls=ls, connectionstyle=f"arc3,rad={rad}"))

    y_h, y_prior, y_z, y_post, y_feat = 0.0, 1.3, 2.55, 3.8, 4.95
    for y, label in ((y_h, "state h"), (y_prior, "prior cell"), (y_z, "latents"),
                     (y_post, "posterior"), (y_feat, "bottom-up\nfeatures")):
        ax.text(-1.45, y, label, ha="right", va="center", fontsize=8, color="0.3")
    box(0.0, y_h, "learned start\nh (4x4)", w=1.5, bold=True)
    prev_x, prev_r = 0.0, groups[0]
    for i, (r, name, zd) in enumerate(zip(groups, names, zdims)):
        xc = step * (i + 1)
        c = colours.get(r, "0.9")
        if r != prev_r:  # up-sampling between resolutions, below the state's line
            mid = (prev_x + xc) / 2
            box(mid, y_h - 1.0, f"up x2: {prev_r}x{prev_r}\n-> {r}x{r}", w=1.3, h=0.55)
            arrow((prev_x + 0.4, y_h - 0.33), (mid - 0.4, y_h - 0.72))
            arrow((mid + 0.4, y_h - 0.72), (xc - 0.4, y_h - 0.33))
        else:
            arrow((prev_x + (0.77 if i else 0.77), y_h), (xc - 1.02, y_h))
        box(xc, y_h, "$h \\leftarrow \\mathrm{cell}(h + \\mathrm{proj}(z_i))$", colour=c)
        box(xc, y_prior, "prior(h): $\\mu_p, \\sigma_p$,\n$h \\leftarrow h + \\Delta h$", colour=c)
        box(xc, y_z, f"$z_i$: {zd} x {r}x{r}\n{name}", w=1.2, bold=True)
        box(xc, y_post, "$q(z_i \\mid h, f_{%d})$: $\\mu_q, \\sigma_q$" % r, colour=c)
        box(xc, y_feat, f"$f_{{{r}}}$: {widths.get(r, '')} x {r}x{r}", colour="0.93", w=1.5,
            h=0.5)
        arrow((xc, y_h + 0.31), (xc, y_prior - 0.31))  # h into the prior cell
        arrow((xc - 0.8, y_prior + 0.31), (xc - 0.8, y_post - 0.31))  # updated h: posterior
        arrow((xc, y_feat - 0.25), (xc, y_post + 0.31))  # the image's features: posterior
        arrow((xc + 0.3, y_post - 0.31), (xc + 0.3, y_z + 0.31), colour="C3")  # z ~ q
        arrow((xc + 0.3, y_prior + 0.31), (xc + 0.3, y_z - 0.31), colour="C0", ls="--")  # z ~ p
        arrow((xc + 0.6, y_z - 0.31), (xc + 0.8, y_h + 0.31), colour="0.35")  # proj(z) into h
        prev_x, prev_r = xc, r
    xe = step * (len(groups) + 1)
    arrow((prev_x + 1.02, y_h), (xe - 0.75, y_h))
    box(xe, y_h, "$p(x \\mid z)$:\nup to 32x32,\nlogistic mixture", colour="#f3e0f0", w=1.5,
        h=0.9, bold=True)
    ax.plot([], [], color="C3", label="training and reconstruction: $z_i$ from the posterior")
    ax.plot([], [], color="C0", ls="--", label="sampling: $z_i$ from the prior")
    ax.plot([], [], color="0.2", label="the residual state $h$, coarse to fine")
    ax.legend(loc="upper left", fontsize=8, frameon=False, bbox_to_anchor=(0.0, 0.06), ncol=3)
    ax.set(xlim=(-2.6, xe + 0.9), ylim=(-1.9, 5.4))
    ax.set_title("The top-down pass: one column per latent group, coarse (4x4) to fine (16x16); "
                 "the bottom-up pass computes $f_{16}, f_8, f_4$ from the image", fontsize=9)
    return fig
