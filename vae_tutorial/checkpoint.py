"""Checkpoints: written so that a kill at any moment loses nothing, read so that they never run
code, resumed at the exact step, and exported as small half-precision copies.

A checkpoint is a dict saved with torch.save:
    format        FORMAT, bumped when this layout changes (older formats are upgraded on load)
    config        TrainConfig.to_dict() of the run;  model_config: ModelConfig.to_dict()
    model         the weights;  optimizer: its state (absent from exports)
    epoch, step   finished epochs and optimizer steps
    position      train.Position: the batch within the epoch, accumulators, seconds
    history       one record per finished epoch;  rng_cpu, rng_cuda: the generators' states
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from .config import ModelConfig, TrainConfig

FORMAT = 2  # bumped when the layout of the checkpoint dict changes
# fields a run cannot change when it resumes in the middle of an epoch: the epoch's images and
# their order would no longer be the ones the saved position counts
SAME_DATA_ORDER = ("data", "extra_data", "extra_repeats", "train_limit", "batch_size", "seed",
                   "hflip")
ABOUT = "about.json"  # a recorded run's description under results/ (from its config's notes)


def path(run_dir: str | os.PathLike) -> Path:
    """The checkpoint file of a run folder."""
    return Path(run_dir) / "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt, unsafe or does not fit the model."""


def save_atomic(obj: object, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never half of one (a
    kill -9 in the middle leaves a hidden temporary file, removed by the next save).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
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


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Make `dst` a copy of the file `src` (a hard link where the file system allows, else a
    byte copy), replacing any old `dst` in one rename: a kill leaves the old file or the new."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def save_training(path, *, config: TrainConfig, model, optimizer, position: dict,
                  history: list[dict], device: torch.device) -> Path:
    """Everything a run needs to continue bit for bit, atomically."""
    return save_atomic({
        "format": FORMAT, "config": config.to_dict(), "model_config": config.model.to_dict(),
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "epoch": position["epoch"], "step": position["step"], "position": dict(position),
        "history": list(history), "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }, path)


def _upgrade(ckpt: dict, where) -> dict:
    """Format 1 (flat config, model_config with "name") read as format 2."""
    if ckpt.get("format") == 1:
        try:
            old, model = dict(ckpt["config"]), dict(ckpt["model_config"])
            model["kind"] = model.pop("name")
            model = ModelConfig.from_dict(model).to_dict()  # the fields format 1 did not have
            position = {"epoch": ckpt["epoch"], "step": ckpt["step"]}
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: a format-1 checkpoint without its {err}") from None
        for key in model:
            old.pop(key, None)
        old.pop("model", None)
        ckpt = {**ckpt, "format": 2, "model_config": model, "config": {**old, "model": model},
                "position": position}
    return ckpt


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint dict with weights_only=True: tensors and plain data, never code."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file (a run's checkpoint "
                              f"is {path / 'checkpoint.pt'}).")
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there. Train first "
                              "(python -m vae_tutorial train) or check the path.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint; an interrupted "
                              "copy? Delete it and train again, or resume from another.")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: truncated or not a PyTorch checkpoint at all (torch.save "
                              "writes a zip archive, and this file is not a complete one).")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights only" in str(err).lower() or "global" in str(err).lower():
            raise CheckpointError(f"{path}: refused to load: it holds objects other than "
                                  f"tensors and plain data, which could run code "
                                  f"({first[:200]}).") from None
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({first[:200]}). "
                              "Delete it and train again, or resume from another.") from None
    except Exception as err:  # noqa: BLE001 - any failure to parse means a damaged file
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
                              "Delete it and train again, or resume from another.") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(f"{path}: not a vae_tutorial checkpoint (no model weights or "
                              "model_config in it).")
    ckpt = _upgrade(ckpt, path)
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {ckpt.get('format')!r}, this version "
                              f"reads formats 1 and {FORMAT}.")
    return ckpt


def restore_weights(model, ckpt: dict, path) -> None:
    """load_state_dict (fp32 or half-precision weights) with a clear error on mismatch."""
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise CheckpointError(f"{path}: weights do not fit the model "
                              f"({type(model).__name__}): {' '.join(lines[1:3])[:300]}") from None


def resume(path, model, optimizer, device: torch.device, config: TrainConfig) -> dict:
    """Restore a run's weights, optimizer and RNG states from `path`, in place; returns the
    checkpoint's {"history", "position"}. The checkpoint must hold the same architecture and,
    if it stopped in the middle of an epoch, the same data order (SAME_DATA_ORDER)."""
    ckpt = load_checkpoint(path, map_location=device)
    if ckpt["position"].get("batch", 0) > 0:
        stored = ckpt["config"]
        changed = [f"{k}={stored.get(k)!r} (this run: {getattr(config, k)!r})"
                   for k in SAME_DATA_ORDER if stored.get(k) != getattr(config, k)]
        if changed:
            raise CheckpointError(f"{path}: stopped in the middle of an epoch, which can only "
                                  f"continue with the same data order, but {', '.join(changed)}")
    stored, wanted = ckpt["model_config"], model.config.to_dict()
    if stored != wanted:
        diff = ", ".join(f"{k}={stored.get(k)!r} (this run: {wanted.get(k)!r})"
                         for k in sorted(set(stored) | set(wanted))
                         if stored.get(k) != wanted.get(k))
        raise CheckpointError(f"{path}: holds a different model, which differs from this run's "
                              f"in {diff}; use another run folder, or --fresh to overwrite it")
    if "optimizer" not in ckpt:
        raise CheckpointError(f"{path}: an exported copy (weights only), which cannot be "
                              "resumed; resume from the run's own checkpoint.pt.")
    restore_weights(model, ckpt, path)
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng_cpu"].cpu())
    if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng_cuda"].cpu(), device)
    return {"history": list(ckpt["history"]), "position": ckpt["position"]}


def load_model(path: str | os.PathLike, map_location="cpu"):
    """Rebuild the model stored in a checkpoint, in eval mode; returns (model, checkpoint)."""
    from .model import build_model

    ckpt = load_checkpoint(path, map_location)
    try:
        model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its model_config does not describe a model of this "
                              f"version ({err})") from None
    restore_weights(model, ckpt, path)
    device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
    return model.to(device).eval(), ckpt


def publish(run_dir, dest, weights: bool = True) -> None:
    """Record a finished run under results/: its history.json and eval.json, any further
    evaluations (eval-*.json: on its validation images, with more samples), its config's notes
    (`train --note`) merged into dest's ABOUT file, and (weights) its half-precision weights
    with their sha256."""
    run_dir, dest = Path(run_dir), Path(dest)
    for name in ("history.json", "eval.json"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} is missing: train and evaluate that run "
                                    "first")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("history.json", "eval.json"):
        shutil.copyfile(run_dir / name, dest / name)
    for extra in sorted(run_dir.glob("eval-*.json")):
        shutil.copyfile(extra, dest / extra.name)
    ckpt = path(run_dir)
    notes = load_checkpoint(ckpt)["config"].get("notes") if ckpt.is_file() else None
    if notes:  # kept with what dest's ABOUT already says (its place in the report's tables)
        about = dest / ABOUT
        old = json.loads(about.read_text()) if about.is_file() else {}
        about.write_text(json.dumps({**old, **notes}, indent=1, ensure_ascii=False) + "\n")
    if weights:
        digest = export_half(path(run_dir), dest / "model-fp16.pt")
        (dest / "model-fp16.pt.sha256").write_text(f"{digest}  model-fp16.pt\n")


def export_half(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Write the weights of a checkpoint in half precision (no optimizer): a small file that
    load_model reads. Returns its sha256."""
    ckpt = load_checkpoint(src)
    small = {key: ckpt[key] for key in ("format", "config", "model_config", "epoch", "step",
                                         "position", "history")}
    small["model"] = {k: v.half() if v.is_floating_point() else v
                      for k, v in ckpt["model"].items()}
    save_atomic(small, dst)
    return sha256(dst)


def sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, as hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
