"""Figures of the tutorial: image grids, training curves; each can be saved to figures/."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from .histories import curve_split
from .runtime import figures_dir


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> Path:
    """Write (N, 3, H, W) images in [0, 1] as one PNG grid (torchvision's save_image)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.detach().float().cpu().clamp(0, 1), path, nrow=nrow, padding=2)
    return path


def show_grid(ax, images: torch.Tensor, nrow: int = 8, title: str | None = None) -> None:
    """Draw (N, 3, H, W) images in [0, 1] as a grid on a matplotlib axis."""
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=2,
                     pad_value=1.0)
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)


def savefig(fig, name: str, dpi: int = 110) -> Path:
    """Save a matplotlib figure as figures/<name>.png (the README shows these)."""
    path = figures_dir() / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return path


def plot_history(history: list[dict], axes=None, kl_title: str = "KL(q(z|x) || p(z))"):
    """ELBO (bits/dim), reconstruction and KL per epoch, training and held-out (validation where
    the run held images out, else test), on three axes; kl_title names the KL term (a
    hierarchy's is a sum over its groups)."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    held = curve_split(history)
    names = {"train": "training (epoch average)", "valid": "validation", "test": "test"}
    panels = [("bpd", "negative ELBO", "bits/dim", 1.0),
              ("reconstruction", "-E log p(x|z), one draw of z", "nats per image", -1.0),
              ("kl", kl_title, "nats per image", 1.0)]
    for ax, (key, title, unit, sign) in zip(axes, panels):
        for split, style in (("train", "-"), (held, "--")):
            points = [(h["epoch"], sign * h[f"{split}_{key}"]) for h in history
                      if f"{split}_{key}" in h]
            if points:
                ax.plot(*zip(*points), style, marker="o", ms=3, label=names[split])
        ax.set(xlabel="epoch", ylabel=unit, title=title)
        ax.legend()
        ax.grid(alpha=0.3)
    return axes
