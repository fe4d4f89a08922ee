"""What the first cell of every notebook needs: the fast-mode switch and a provenance line."""

from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path

import torch

from .config import fast_mode
from .data import PartialDatasetWarning, default_root, env_flag

FAST = fast_mode()  # VAE_TUTORIAL_FAST=1: a few hundred images, seconds per notebook


def setup(seed: int = 0) -> dict:
    """Seed torch, quiet the expected partial-copy warning, return the run's provenance."""
    torch.manual_seed(seed)
    warnings.filterwarnings("ignore", category=PartialDatasetWarning)
    return provenance()


def hardware() -> str:
    """A short description of the machine: CPU cores or the GPU name."""
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


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
