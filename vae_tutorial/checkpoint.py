"""Checkpoints that survive a kill at any moment and can never run code when loaded."""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path

import torch

from .model import VAE, build_model

FORMAT = 1  # bumped when the layout of the checkpoint dict changes


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt, unsafe or does not fit the model."""


def save_atomic(obj: dict, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint dict with weights_only=True: tensors and plain data, never code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there. Train first "
                              "(python -m vae_tutorial train) or check the path.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: refused to load: it holds objects other than tensors "
                              f"and plain data, which could run code ({first}).") from None
    except Exception as err:  # noqa: BLE001 - any failure to parse means a damaged file
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
                              "Delete it and train again, or resume from another.") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(f"{path}: not a vae_tutorial checkpoint (no model weights or "
                              "model_config in it).")
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {ckpt.get('format')!r}, this version "
                              f"reads format {FORMAT}.")
    return ckpt


def load_model(path: str | os.PathLike, map_location="cpu") -> tuple[VAE, dict]:
    """Rebuild the model stored in a checkpoint, in eval mode; returns (model, checkpoint)."""
    ckpt = load_checkpoint(path, map_location)
    cfg = dict(ckpt["model_config"])
    model = build_model(cfg.pop("name"), **cfg)
    restore_weights(model, ckpt, path)
    return model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu"
                    ).eval(), ckpt


def restore_weights(model: VAE, ckpt: dict, path) -> None:
    """load_state_dict (fp32 or half-precision weights) with a clear error on mismatch."""
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise CheckpointError(f"{path}: weights do not fit the model "
                              f"({type(model).__name__}): {' '.join(lines[1:3])[:300]}") from None


def export_half(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Write the weights of a checkpoint in half precision (no optimizer): a small file that
    load_model reads. Returns its sha256."""
    ckpt = load_checkpoint(src)
    small = {key: ckpt[key] for key in ("format", "config", "model_config", "epoch", "step",
                                         "history")}
    small["model"] = {k: v.half() if v.is_floating_point() else v
                      for k, v in ckpt["model"].items()}
    save_atomic(small, dst)
    return hashlib.sha256(Path(dst).read_bytes()).hexdigest()
