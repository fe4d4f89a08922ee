"""A run's history (history.json: one record per epoch, as train writes it): which held-out
images its per-epoch curve is on, its minutes of training; and the recorded runs' descriptions
(results/<run>/about.json). Low-level, so that figures and reports can read histories without
importing the trainer."""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import ABOUT
from .config import TrainConfig


def load_json(path: Path) -> dict | list:
    """A JSON file's content."""
    return json.loads(Path(path).read_text())


def minutes(history: list[dict]) -> float:
    """The minutes of training a history records (its epochs' seconds)."""
    return sum(h["seconds"] for h in history) / 60


def held_out_split(cfg: TrainConfig) -> str:
    """The images a run evaluates after every epoch: "valid" with a validation split, else
    "test" (history keys valid_bpd or test_bpd, and so on)."""
    return "valid" if cfg.valid_size else "test"


def curve_split(history: list[dict]) -> str:
    """"valid" or "test": which held-out curve a history holds (see held_out_split)."""
    return "valid" if history and "valid_bpd" in history[0] else "test"


def records(results: Path) -> dict[str, dict]:
    """Every run's own record under `results` (its ABOUT file), by folder: "about", what the run
    changes, in words; "against", the run it changes (or null); and where a table shows it:
    "tried", its row in results/hvae-tried.md; "replicate", true where it repeats its base's
    recipe with another seed; "ablation", its step in notebook 8's ladder ("step", "model",
    "fields", "label", and "changes" where the ladder's row says other than "about").
    `train --note TEXT` stores "about" with a run, and `results` copies it there."""
    return {p.parent.name: load_json(p) for p in sorted(Path(results).glob(f"*/{ABOUT}"))}
