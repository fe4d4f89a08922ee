"""One trainer for the notebooks, the command line and torchrun.

    history = train(preset("cpu", data="data/cifar10-jpeg"))

Each epoch ends with a test evaluation and an atomic checkpoint (weights, optimizer, RNG
states, history), so an interrupted run resumes where its last epoch ended.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import losses
from .checkpoint import FORMAT, CheckpointError, load_checkpoint, restore_weights, save_atomic
from .config import TrainConfig
from .data import CifarLoader, load_cifar10
from .evaluate import evaluate
from .model import VAE, build_model, model_config


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite."""


class StopTraining(Exception):
    """Raise from an epoch callback to end training cleanly after that epoch."""


def pick_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu for "auto"; otherwise the named device, checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available here; "
                           "use --device cpu or auto")
    return device


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bf16 natively: AMX or AVX512-BF16 on x86 (oneDNN's own check
    also says yes on plain AVX512, where bf16 is emulated and slower than fp32), oneDNN's
    check elsewhere (Arm)."""
    try:
        if platform.machine().lower() in ("x86_64", "amd64"):
            return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_bf16_supported() -> bool:
    """Whether this GPU computes bf16 natively (Ampere and later), not by emulation."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the argument
        return torch.cuda.is_bf16_supported()


def autocast_enabled(cfg: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast with cfg.amp, where bf16 is native: GPUs from Ampere on, CPUs with AMX or
    AVX512-BF16 (elsewhere bf16 is emulated and slower than fp32, so training stays in fp32)."""
    if device.type == "cuda":
        return cfg.amp and cuda_bf16_supported()
    return device.type == "cpu" and cfg.amp and cpu_bf16_supported()


def model_kwargs(cfg: TrainConfig) -> dict:
    return dict(width=cfg.width, latent_dim=cfg.latent_dim, res_blocks=cfg.res_blocks,
                likelihood=cfg.likelihood, mixtures=cfg.mixtures)


def lr_at(cfg: TrainConfig, step: int, total_steps: int, progress: float | None = None) -> float:
    """Linear warm-up for lr_warmup_steps, then cosine decay to lr * lr_final.

    progress in [0, 1] replaces step / total_steps for the decay (used with a time limit)."""
    if step < cfg.lr_warmup_steps:
        return cfg.lr * (step + 1) / cfg.lr_warmup_steps
    t = progress if progress is not None else (
        (step - cfg.lr_warmup_steps) / max(1, total_steps - cfg.lr_warmup_steps))
    t = min(1.0, t)
    return cfg.lr * (cfg.lr_final + (1 - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * t)))


def kl_weight_at(cfg: TrainConfig, epoch_progress: float) -> float:
    """beta, reached linearly over the first kl_warmup_epochs."""
    if cfg.kl_warmup_epochs <= 0:
        return cfg.beta
    return cfg.beta * min(1.0, epoch_progress / cfg.kl_warmup_epochs)


def load_training_data(cfg: TrainConfig):
    """(train images, train labels, test images, test labels) as uint8/int64 CPU tensors."""
    x, y = load_cifar10(cfg.data, "train", allow_partial=cfg.allow_partial)
    if cfg.train_limit:
        x, y = x[:cfg.train_limit], y[:cfg.train_limit]
    if cfg.extra_data:
        ex, ey = load_cifar10(cfg.extra_data, "train", allow_partial=cfg.allow_partial)
        x = torch.cat([x] + [ex] * cfg.extra_repeats)
        y = torch.cat([y] + [ey] * cfg.extra_repeats)
    tx, ty = load_cifar10(cfg.test_data or cfg.data, "test", allow_partial=cfg.allow_partial)
    if cfg.test_limit:
        tx, ty = tx[:cfg.test_limit], ty[:cfg.test_limit]
    return x, y, tx, ty


def _distributed() -> tuple[int, int]:
    """(rank, world_size), initialising the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)


def _write_history(out_dir: Path, history: list[dict]) -> None:
    tmp = out_dir / ".history.json.tmp"
    tmp.write_text(json.dumps(history, indent=1))
    os.replace(tmp, out_dir / "history.json")
    if history:
        with open(out_dir / "history.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(history[-1]))
            w.writeheader()
            w.writerows(history)


def train(config: TrainConfig, resume: bool = False,
          callback: Callable[[dict, VAE], None] | None = None) -> list[dict]:
    """Train a VAE as `config` says; returns the per-epoch history (also in history.json).

    resume: continue from out_dir/checkpoint.pt (its weights, optimizer, RNG and history).
    callback(record, model) runs after every epoch's checkpoint; it may raise StopTraining.
    """
    cfg = config
    rank, world = _distributed()
    if world > 1 and cfg.time_limit:
        raise ValueError("time_limit is for single-process runs: under torchrun each rank's "
                         "clock would stop it at a different step")
    device = pick_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    amp = autocast_enabled(cfg, device)
    out_dir = Path(cfg.out_dir)
    ckpt_path = out_dir / "checkpoint.pt"

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, **model_kwargs(cfg)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")  # one kernel for all parameters
    history: list[dict] = []
    start_epoch, step = 0, 0
    if resume:
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        if ckpt["model_config"] != model_config(model):
            raise CheckpointError(f"{ckpt_path}: was trained with {ckpt['model_config']}, "
                                  f"which differs from this run's {model_config(model)}")
        restore_weights(model, ckpt, ckpt_path)
        opt.load_state_dict(ckpt["optimizer"])
        start_epoch, step, history = ckpt["epoch"], ckpt["step"], list(ckpt["history"])
        torch.set_rng_state(ckpt["rng_cpu"])
        if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"])
    else:
        torch.manual_seed(cfg.seed + 1000 * rank)  # distinct sampling noise per process

    x, y, tx, ty = load_training_data(cfg)
    loader = CifarLoader(x, y, batch_size=cfg.batch_size, device=device, shuffle=True,
                         drop_last=True, seed=cfg.seed, channels_last=channels_last,
                         rank=rank, world_size=world)
    if len(loader) == 0:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the {len(x)} training images")
    test_loader = CifarLoader(tx, ty, batch_size=500, device=device, shuffle=False,
                              channels_last=channels_last)
    steps_per_epoch, total_steps = len(loader), len(loader) * cfg.epochs

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    show = cfg.progress and rank == 0
    started = time.perf_counter()

    budget = 60 * cfg.time_limit if cfg.time_limit else None  # seconds of training
    out_of_time = False
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        loader.set_epoch(epoch)
        model.train()
        sums = torch.zeros(3, device=device)  # elbo, reconstruction, kl summed over images
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        seen = 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show,
                   leave=False, mininterval=1.0)
        for i, (xb, _) in enumerate(bar):
            progress = None
            if budget:  # the schedule follows the clock; stop when the time is up
                progress = (time.perf_counter() - started) / budget
                if progress >= 1.0:
                    out_of_time = True
                    break
            lr = lr_at(cfg, step, total_steps, progress)
            for g in opt.param_groups:
                g["lr"] = lr
            kl_w = kl_weight_at(cfg, epoch + i / steps_per_epoch)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = net(xb)
            kl_pen = out.kl
            if cfg.free_bits > 0:
                kl_pen = out.kl_per_dim.mean(0).clamp(min=cfg.free_bits).sum().expand_as(out.kl)
            loss = -(out.reconstruction - kl_w * kl_pen).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            nonfinite |= ~torch.isfinite(loss) | ~torch.isfinite(gnorm)
            opt.step()
            sums += torch.stack([out.elbo.sum(), out.reconstruction.sum(), out.kl.sum()]).detach()
            seen += len(xb)
            step += 1
            if (i + 1) % cfg.log_every == 0 or i + 1 == steps_per_epoch:
                if bool(nonfinite):  # one host sync every log_every steps, not every step
                    last = f"epoch {start_epoch if not history else history[-1]['epoch']}"
                    raise TrainingDiverged(
                        f"loss or gradient became NaN/inf at epoch {epoch + 1}, step {step}. "
                        f"{ckpt_path} (last good: {last}) was left untouched. Try a lower "
                        f"--lr (now {cfg.lr:g}) or --grad-clip (now {cfg.grad_clip:g}).")
                if show:
                    bar.set_postfix(bpd=f"{losses.bits_per_dim(sums[0].item() / seen):.3f}",
                                    kl=f"{sums[2].item() / seen:.1f}")
        train_time = time.perf_counter() - t0
        if seen == 0:  # the time ran out before this epoch's first step
            break
        if world > 1:
            dist.all_reduce(sums)
            seen *= world
        tr = (sums / seen).tolist()
        record = {"epoch": epoch + 1, "step": step, "partial": out_of_time,
                  "train_elbo": tr[0], "train_reconstruction": tr[1], "train_kl": tr[2],
                  "train_bpd": losses.bits_per_dim(tr[0])}
        if rank == 0:
            ev = evaluate(model, test_loader)
            record.update(test_elbo=ev.elbo, test_reconstruction=ev.reconstruction,
                          test_kl=ev.kl, test_bpd=ev.bits_per_dim)
        record.update(lr=lr, kl_weight=kl_w, precision="bf16" if amp else "fp32",
                      seconds=train_time,
                      images_per_second=seen / train_time)
        history.append(record)
        if rank == 0:
            save_atomic({
                "format": FORMAT, "config": cfg.to_dict(), "model_config": model_config(model),
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "epoch": epoch + 1, "step": step, "history": history,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
            }, ckpt_path)
            _write_history(out_dir, history)
            if show:
                tqdm.write(f"epoch {epoch + 1}: train {record['train_bpd']:.3f} bits/dim, "
                           f"test {record['test_bpd']:.3f} bits/dim, KL {tr[2]:.1f} nats, "
                           f"{record['images_per_second']:.0f} img/s")
        if world > 1:
            dist.barrier()
        if callback is not None:
            try:
                callback(record, model)
            except StopTraining:
                break
        if out_of_time:
            break
    return history
