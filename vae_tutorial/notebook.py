"""What the first cell of every notebook needs: the fast-mode switch and a provenance line."""

from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path

import torch

from .config import fast_mode
from .data import PartialDatasetWarning, checkout_dir, default_root, env_flag

FAST = fast_mode()  # VAE_TUTORIAL_FAST=1: a few hundred images, seconds per notebook


def setup(seed: int = 0) -> dict:
    """Seed torch, quiet the expected partial-copy warning, return the run's provenance."""
    torch.manual_seed(seed)
    warnings.filterwarnings("ignore", category=PartialDatasetWarning)
    return provenance()


def hardware() -> str:
    """A short description of the machine: CPU cores (and native bf16) or the GPU name."""
    from .train import cpu_bf16_supported

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    bf16 = ", native bf16" if cpu_bf16_supported() else ""
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores{bf16}"


def provenance() -> dict:
    """Versions, device, data copy and mode of this run, as a dict (printed by notebooks)."""
    import torchvision

    root = default_root()
    return {
        "torch": torch.__version__.split("+")[0],
        "torchvision": torchvision.__version__.split("+")[0],
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "hardware": hardware(),
        "data": Path(root).resolve().name,
        "partial data allowed": env_flag("VAE_TUTORIAL_ALLOW_PARTIAL"),
        "mode": "fast (VAE_TUTORIAL_FAST=1)" if FAST else "full",
    }


def run_dir() -> Path:
    """Where notebooks 5 and 6 keep the model: runs/notebook-fast in fast mode, else
    $VAE_TUTORIAL_RUN or runs/conv-cpu (the full run of `make tutorial`)."""
    if FAST:
        return checkout_dir() / "runs" / "notebook-fast"
    return Path(os.environ.get("VAE_TUTORIAL_RUN") or checkout_dir() / "runs" / "conv-cpu")


def committed_weights() -> Path:
    """The full CPU run's half-precision weights, committed with the repository."""
    return checkout_dir() / "results" / "conv-cpu" / "model-fp16.pt"


def train_or_load(config, directory: Path | None = None):
    """Load the run in `directory` (finishing it first if interrupted), or train it there.

    Without a run of your own, the committed weights of the full run (results/conv-cpu) are
    loaded instead of training for 20 minutes. Returns (model in eval mode, history,
    checkpoint dict). In fast mode it always trains, so that the notebooks exercise the
    trainer in seconds.
    """
    from .checkpoint import load_checkpoint, load_model
    from .config import TrainConfig
    from .train import train

    directory = Path(directory or run_dir())
    path = directory / "checkpoint.pt"
    if not FAST and not path.exists() and committed_weights().exists():
        path = committed_weights()
    elif path.exists() and not FAST:
        ckpt = load_checkpoint(path)
        stored = TrainConfig.from_dict(ckpt["config"])
        if ckpt["epoch"] < stored.epochs:  # interrupted: finish it
            train(stored.replace(out_dir=str(directory)), resume=True)
    else:
        train(config.replace(out_dir=str(directory)))
    model, ckpt = load_model(path)
    return model, ckpt["history"], ckpt
