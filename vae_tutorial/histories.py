"""A run's history (history.json: one record per epoch, as train writes it): which held-out
images its per-epoch curve is on. Low-level, so that figures and reports can read histories
without importing the trainer."""

from __future__ import annotations

from .config import TrainConfig


def held_out_split(cfg: TrainConfig) -> str:
    """The images a run evaluates after every epoch: "valid" with a validation split, else
    "test" (history keys valid_bpd or test_bpd, and so on)."""
    return "valid" if cfg.valid_size else "test"


def curve_split(history: list[dict]) -> str:
    """"valid" or "test": which held-out curve a history holds (see held_out_split)."""
    return "valid" if history and "valid_bpd" in history[0] else "test"
