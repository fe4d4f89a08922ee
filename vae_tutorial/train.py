"""One trainer for the notebooks, the command line and torchrun.

    history = train(preset("cpu", data="data/cifar10-jpeg"))

In three parts that notebook 5 shows one by one: `setup` builds the run (model, optimizer,
data on the device, or all of it restored from a checkpoint), `run_epoch` takes the training
steps of one epoch (`train_step` is one of them), and `end_epoch` evaluates, logs and saves.
A checkpoint is written atomically at the end of every epoch and, by the clock, in the middle
of one (with the loader's position), so an interrupted run resumes at the exact step it reached.
A run that diverges returns to its last good epoch end at half the learning rate (`rollback`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from . import adamw, checkpoint, losses, precision, runtime
from .config import TrainConfig
from .data import CifarLoader, load_cifar10, near_duplicates, split_validation
from .evaluate import evaluate
from .histories import curve_split as curve_split  # re-exported: notebooks use it
from .histories import held_out_split
from .model import build_model


class TrainingDiverged(RuntimeError):
    """The run diverged (see `rollback`): a NaN or infinite loss, an epoch of skipped updates, or
    a held-out ELBO far worse than the run's best."""


# A held-out bits/dim above JUMP times the run's best so far (before the first epoch: the
# untrained model's) means the run diverged. Every recorded healthy run stayed within 1.06x of
# its best, every diverged one went past 30x (tests/test_train.py reads them from results/).
JUMP = 1.5
ROLLBACK_LR = 0.5  # each rollback multiplies the learning rate by this


class StopTraining(Exception):
    """Raise from an epoch callback to end training cleanly after that epoch."""


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


def load_training_data(cfg: TrainConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train", "valid" (when cfg.valid_size), "test"}: (uint8 images, int64 labels) on the CPU.

    The validation images are a seeded draw from the exact training images (extra_data when it
    is given, else data), removed from training; when they come from extra_data, their
    re-encoded twins in data (e.g. the JPEG copy) are removed from training too."""
    x, y = load_cifar10(cfg.data, "train", allow_partial=cfg.allow_partial)
    if cfg.train_limit:
        x, y = x[:cfg.train_limit], y[:cfg.train_limit]
    extra = (load_cifar10(cfg.extra_data, "train", allow_partial=cfg.allow_partial)
             if cfg.extra_data else None)
    out = {}
    if cfg.valid_size:
        ex, ey = extra or (x, y)
        keep, held = split_validation(len(ex), cfg.valid_size, cfg.valid_seed)
        out["valid"] = (ex[held], ey[held])
        if extra:
            extra = (ex[keep], ey[keep])
            twins = near_duplicates(x, ex[held])
            x, y = x[~twins], y[~twins]
        else:
            x, y = x[keep], y[keep]
    if extra:
        x = torch.cat([x] + [extra[0]] * cfg.extra_repeats)
        y = torch.cat([y] + [extra[1]] * cfg.extra_repeats)
    out["train"] = (x, y)
    tx, ty = load_cifar10(cfg.test_data, "test", allow_partial=cfg.allow_partial)
    if cfg.test_limit:
        tx, ty = tx[:cfg.test_limit], ty[:cfg.test_limit]
    out["test"] = (tx, ty)
    return out


def _distributed() -> tuple[int, int]:
    """(rank, world_size), initialising the process group when launched by torchrun."""
    world = runtime.world()[0]
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)


@dataclass
class Position:
    """Where a run is: what a checkpoint needs to continue at the exact step."""

    epoch: int = 0  # finished epochs
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # optimizer steps taken (skipped ones included)
    seconds: float = 0.0  # training time so far (evaluation excluded), for time limits
    epoch_seconds: float = 0.0  # training time of the current epoch so far
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # elbo, rec, kl
    seen: int = 0  # images of the current epoch so far (this process)
    skipped: int = 0  # steps of the current epoch skipped for a huge gradient norm
    start_bpd: float | None = None  # the untrained model's held-out bits/dim (rollback's yardstick)
    lr_scale: float = 1.0  # ROLLBACK_LR ** rollbacks: multiplies the schedule's learning rate
    rollbacks: int = 0  # divergences recovered so far
    rolled_back: list = field(default_factory=list)  # rollbacks not yet logged in an epoch record


@dataclass
class Run:
    """A training run in progress: what `setup` builds and each epoch advances."""

    cfg: TrainConfig
    device: torch.device
    model: nn.Module  # the model itself
    net: nn.Module  # what the forward pass runs through: the model, wrapped by DDP / compile
    opt: torch.optim.Optimizer
    loader: CifarLoader
    eval_loader: CifarLoader  # the per-epoch held-out images: validation, else test
    amp_dtype: torch.dtype | None  # bf16 autocast, or None for fp32 (precision.autocast_dtype)
    adamw: adamw.Decision | None = None  # fused or loop, and why (adamw.decide)
    rank: int = 0
    world: int = 1
    history: list[dict] = field(default_factory=list)
    pos: Position = field(default_factory=Position)
    last_save: float = field(default_factory=time.perf_counter)

    @property
    def ckpt_path(self) -> Path:
        return checkpoint.path(self.cfg.out_dir)

    @property
    def good_path(self) -> Path:
        """The last epoch end judged healthy: where `rollback` returns to."""
        return Path(self.cfg.out_dir) / "good.pt"

    @property
    def show(self) -> bool:
        return self.cfg.progress and self.rank == 0


def fuse_likelihood(cfg: TrainConfig) -> bool:
    """Whether the run computes its likelihood through torch.compile alone (TrainConfig's
    field; not with `compile`, which compiles the likelihood with the rest of the model)."""
    if cfg.compile:
        return False
    return cfg.fuse_likelihood if cfg.fuse_likelihood is not None else not runtime.fast_mode()


def setup(cfg: TrainConfig, resume: bool = False) -> Run:
    """Build (or, with resume, restore from out_dir/checkpoint.pt) everything a run needs."""
    rank, world = _distributed()
    if world > 1 and cfg.time_limit:
        raise ValueError("time_limit is for single-process runs: under torchrun each rank's "
                         "clock would stop it at a different step")
    device = runtime.pick_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", runtime.world()[1])
        torch.cuda.set_device(device)
    if cfg.deterministic:
        runtime.use_deterministic_algorithms()
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    channels_last = (cfg.channels_last if cfg.channels_last is not None
                     else runtime.channels_last_default(device))

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    model.likelihood.fused = fuse_likelihood(cfg)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # a resumed run keeps its checkpoint's choice (load_state_dict restores "fused")
    update = None if resume else adamw.decide(model.parameters(), device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=(update.fused if update else None) or None)
    history, pos = [], Position()
    if resume:
        state = checkpoint.resume(checkpoint.path(cfg.out_dir), model, opt, device, cfg)
        history, pos = state["history"], Position(**state["position"])
        update = adamw.from_optimizer(opt)
        if history and isinstance(history[-1].get("adamw"), dict):  # the run's own record
            update = adamw.Decision(**{**history[-1]["adamw"], "fused": update.fused})
        if world > 1:  # rank 0's generator state was saved: give each process its own again
            torch.manual_seed(cfg.seed + 1000 * rank + pos.step)
    else:
        torch.manual_seed(cfg.seed + 1000 * rank)  # distinct sampling noise per process

    splits = load_training_data(cfg)
    x, y = splits["train"]
    # drop_last: BatchNorm's statistics of a very short last batch are noise, and every image
    # is still visited, since each epoch's order differs.
    loader = CifarLoader(x, y, batch_size=cfg.batch_size, device=device, shuffle=True,
                         drop_last=True, seed=cfg.seed, channels_last=channels_last,
                         rank=rank, world_size=world, hflip=cfg.hflip)
    if len(loader) == 0:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the {len(x)} training images")
    eval_loader = CifarLoader(*splits[held_out_split(cfg)], batch_size=500, device=device,
                              shuffle=False, channels_last=channels_last)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    run = Run(cfg, device, model, net, opt, loader, eval_loader,
              precision.autocast_dtype(device, cfg.amp), update, rank, world, history, pos)
    if not resume and world == 1:  # the yardstick of the first epoch, and a state to return to
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            pos.start_bpd = evaluate(model, eval_loader).bits_per_dim
        _save(run, path=run.good_path)
    if run.show:
        where = f"from epoch {pos.epoch + 1}, step {pos.step}" if resume else "from scratch"
        tqdm.write(f"training {cfg.model.kind} ({cfg.preset} preset, {len(x):,} images, "
                   f"{'bf16' if run.amp_dtype else 'fp32'} on {device}) {where} in {cfg.out_dir}")
    return run


def train_step(run: Run, x: torch.Tensor, lr: float, kl_weight: float):
    """One optimizer step on the batch x: (ELBO terms, gradient norm before clipping, or None
    when the step was skipped for a gradient norm above grad_skip, NaN included).

    No host sync unless grad_skip is set (then one, to decide whether to skip)."""
    cfg, opt = run.cfg, run.opt
    for g in opt.param_groups:
        g["lr"] = lr
    with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32,
                        enabled=run.amp_dtype is not None):
        out = run.net(x)
    loss = losses.training_loss(out, kl_weight, cfg.free_bits)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    if cfg.grad_skip is not None and not gnorm <= cfg.grad_skip:  # NaN norms too
        run.pos.skipped += 1
        return out, None
    opt.step()
    return out, torch.where(torch.isfinite(loss), gnorm, loss.detach())


def _save(run: Run, good: bool = False, path: Path | None = None) -> None:
    """Write the checkpoint (or `path`); good: it is also the state a rollback returns to."""
    if run.rank == 0:
        path = path or run.ckpt_path
        checkpoint.save_training(path, config=run.cfg, model=run.model, optimizer=run.opt,
                                 position=vars(run.pos), history=run.history, device=run.device)
        if good:
            checkpoint.copy_atomic(path, run.good_path)
    run.last_save = time.perf_counter()


def run_epoch(run: Run) -> dict | None:
    """The training steps of epoch run.pos.epoch, from run.pos.batch on; returns the epoch's
    training averages, or None when the time limit ran out before its first step."""
    cfg, pos, model = run.cfg, run.pos, run.model
    steps_per_epoch = len(run.loader)
    total_steps = steps_per_epoch * cfg.epochs
    budget = 60 * cfg.time_limit if cfg.time_limit else None  # seconds of training
    run.loader.set_epoch(pos.epoch, skip=pos.batch)
    model.train()
    sums = torch.tensor(pos.sums, device=run.device)  # elbo, reconstruction, kl over images
    nonfinite = torch.zeros((), dtype=torch.bool, device=run.device)
    out_of_time, lr, kl_w = False, cfg.lr, cfg.beta
    bar = tqdm(run.loader, desc=f"epoch {pos.epoch + 1}/{cfg.epochs}", disable=not run.show,
               leave=False, mininterval=1.0, initial=pos.batch, total=steps_per_epoch)
    t0 = time.perf_counter() - pos.epoch_seconds
    for i, (xb, _) in enumerate(bar, start=pos.batch):
        progress = None
        if budget:  # the schedule follows the clock; stop when the time is up
            progress = (pos.seconds + time.perf_counter() - t0) / budget
            if progress >= 1.0:
                out_of_time = True
                break
        lr = lr_at(cfg, pos.step, total_steps, progress) * pos.lr_scale
        kl_w = kl_weight_at(cfg, pos.epoch + i / steps_per_epoch)
        out, gnorm = train_step(run, xb, lr, kl_w)
        if gnorm is not None:  # skipped steps change nothing and are not averaged
            nonfinite |= ~torch.isfinite(gnorm)
            sums += torch.stack([out.elbo.sum(), out.reconstruction.sum(), out.kl.sum()]).detach()
            pos.seen += len(xb)
        pos.step += 1
        pos.batch = i + 1
        if (i + 1) % cfg.log_every == 0 or i + 1 == steps_per_epoch:
            if bool(nonfinite):  # one host sync every log_every steps, not every step
                raise TrainingDiverged(
                    f"loss or gradient became NaN/inf at epoch {pos.epoch + 1}, step {pos.step}."
                    f" {run.ckpt_path} (last good state) was left untouched. Try a lower lr "
                    f"(now {cfg.lr:g}) or grad_clip (now {cfg.grad_clip:g}).")
            pos.sums = sums.tolist()
            pos.epoch_seconds = time.perf_counter() - t0
            if run.show and pos.seen:  # (none yet when every step so far was skipped)
                bar.set_postfix(bpd=f"{losses.bits_per_dim(pos.sums[0] / pos.seen):.3f}",
                                kl=f"{pos.sums[2] / pos.seen:.1f}")
            due = time.perf_counter() - run.last_save >= 60 * cfg.checkpoint_minutes
            if due and i + 1 < steps_per_epoch and run.world == 1:  # (DDP: at epoch ends)
                _save(run)  # mid-epoch: the loader's position, accumulators and RNG too
    bar.close()
    if pos.seen == 0 and pos.skipped > 0:
        raise TrainingDiverged(f"every step of epoch {pos.epoch + 1} was skipped: gradient norms "
                               f"above grad_skip ({cfg.grad_skip:g}). Raise grad_skip or lower lr.")
    if bool(nonfinite):  # the steps after the last sync (a time limit can stop anywhere)
        raise TrainingDiverged(f"loss or gradient became NaN/inf at epoch {pos.epoch + 1}, "
                               f"step {pos.step}. {run.ckpt_path} (last good state) was left "
                               "untouched.")
    seconds = time.perf_counter() - t0
    if pos.seen == 0:
        return None
    totals = sums.clone()
    seen = pos.seen
    if run.world > 1:
        dist.all_reduce(totals)
        seen *= run.world
    tr = (totals / seen).tolist()
    return {"epoch": pos.epoch + 1, "partial": out_of_time,
            "train_elbo": tr[0], "train_reconstruction": tr[1], "train_kl": tr[2],
            "train_bpd": losses.bits_per_dim(tr[0]), "lr": lr, "kl_weight": kl_w,
            "precision": "bf16" if run.amp_dtype == torch.bfloat16 else "fp32",
            "precision_probe": precision.decide(run.device, run.cfg.amp).record(),  # why
            "adamw": run.adamw.record() if run.adamw else None,  # fused or loop, and why
            "likelihood_fused": run.model.likelihood.runs_fused(),  # through torch.compile
            "hardware": runtime.hardware(run.device), "seconds": seconds,
            "images_per_second": seen / seconds, "skipped": pos.skipped}


def end_epoch(run: Run, record: dict) -> dict:
    """Evaluate on the held-out images (validation, else test), append the record to the
    history, save, report."""
    pos = run.pos
    record = {"step": pos.step, **record}
    if run.rank == 0:
        ev = evaluate(run.model, run.eval_loader)
        split = held_out_split(run.cfg)
        record.update({f"{split}_elbo": ev.elbo, f"{split}_reconstruction": ev.reconstruction,
                       f"{split}_kl": ev.kl, f"{split}_bpd": ev.bits_per_dim,
                       f"{split}_bpd_se": ev.bits_per_dim_se})
        limit, yardstick = held_out_limit(run)
        if not ev.bits_per_dim <= limit:  # NaN too
            raise TrainingDiverged(
                f"{split} ELBO {ev.bits_per_dim:.4g} bits/dim after epoch {record['epoch']}, over "
                f"{JUMP:g} times {yardstick} ({limit / JUMP:.3f}). {run.ckpt_path} (last good "
                f"state) was left untouched. Try a lower lr (now {run.cfg.lr:g}).")
    if pos.rolled_back:
        record["rollback"], pos.rolled_back = pos.rolled_back, []
    if pos.rollbacks:
        record["lr_scale"] = pos.lr_scale
    run.history.append(record)
    pos.epoch, pos.batch, pos.seen, pos.skipped = record["epoch"], 0, 0, 0
    pos.seconds += record["seconds"]
    pos.epoch_seconds, pos.sums = 0.0, [0.0, 0.0, 0.0]
    _save(run, good=run.world == 1)
    if run.rank == 0:
        _write_history(Path(run.cfg.out_dir), run.history)
        if run.show:
            split = held_out_split(run.cfg)
            tqdm.write(f"epoch {record['epoch']}: train {record['train_bpd']:.3f} bits/dim, "
                       f"{split} {record[split + '_bpd']:.3f} bits/dim, "
                       f"KL {record['train_kl']:.1f} nats, {record['images_per_second']:.0f} img/s")
    if run.world > 1:
        dist.barrier()
    return record


def held_out_limit(run: Run) -> tuple[float, str]:
    """(bits/dim, what it is JUMP times): the held-out bits/dim above which the run counts as
    diverged, JUMP times its best so far, or the untrained model's before the first epoch."""
    split = held_out_split(run.cfg)
    seen = [h[f"{split}_bpd"] for h in run.history if f"{split}_bpd" in h]
    best = min(seen) if seen else run.pos.start_bpd
    if best is None or not math.isfinite(best):  # a run from before start_bpd was recorded
        return math.inf, "nothing"
    return JUMP * best, "the run's best" if seen else "the untrained model's"


def rollback(run: Run, err: TrainingDiverged) -> None:
    """Recover from a divergence: restore the last good epoch end (weights, optimizer, data
    order, random state, history) and go on with ROLLBACK_LR times the learning rate. The time
    spent since still counts against a time limit. Raises `err` again, with the rollbacks used,
    once the run has used its cfg.max_rollbacks, or where there is no good state (torchrun)."""
    pos, cfg = run.pos, run.cfg
    if pos.rollbacks >= cfg.max_rollbacks or run.world > 1 or not run.good_path.exists():
        raise TrainingDiverged(f"{err} (rollbacks used: {pos.rollbacks} of max_rollbacks "
                               f"{cfg.max_rollbacks})") from None
    reason = str(err).split(". ")[0]
    seconds = pos.seconds + pos.epoch_seconds
    state = checkpoint.resume(run.good_path, run.model, run.opt, run.device, cfg)
    good = Position(**state["position"])
    entry = {"epoch": pos.epoch + 1, "step": pos.step, "reason": reason,
             "to_epoch": good.epoch, "lr_scale": pos.lr_scale * ROLLBACK_LR}
    good.rollbacks, good.lr_scale = pos.rollbacks + 1, entry["lr_scale"]
    good.rolled_back = [*pos.rolled_back, entry]
    good.seconds, good.start_bpd = seconds, pos.start_bpd
    run.pos, run.history = good, state["history"]
    _save(run)
    if run.show:
        tqdm.write(f"rollback {good.rollbacks}/{cfg.max_rollbacks}: {reason}; back to epoch "
                   f"{good.epoch} at {entry['lr_scale']:g}x the learning rate")


def _write_history(out_dir: Path, history: list[dict]) -> None:
    tmp = out_dir / ".history.json.tmp"
    tmp.write_text(json.dumps(history, indent=1))
    os.replace(tmp, out_dir / "history.json")
    if history:
        with open(out_dir / "history.csv", "w", newline="") as f:
            fields = list(dict.fromkeys(k for h in history for k in h))  # every key, in order
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(history)


def train(config: TrainConfig, resume: bool = False,
          callback: Callable[[dict, nn.Module], None] | None = None,
          hook: Callable[[Run], None] | None = None) -> list[dict]:
    """Train a VAE as `config` says; returns the per-epoch history (also in history.json).

    resume: continue from out_dir/checkpoint.pt, at the exact step it holds.
    callback(record, model) runs after every epoch's checkpoint; it may raise StopTraining.
    hook(run) runs after setup and after every epoch, with the whole Run (gpu_check re-aims
    run.cfg.time_limit with it); it may raise StopTraining too.
    """
    run = setup(config, resume)
    try:
        if hook is not None:
            hook(run)
        while run.pos.epoch < config.epochs:
            try:
                record = run_epoch(run)
                if record is None:  # the time ran out before this epoch's first step
                    break
                record = end_epoch(run, record)
            except TrainingDiverged as err:
                rollback(run, err)
                continue
            if callback is not None:
                callback(record, run.model)
            if record["partial"]:
                break
            if hook is not None:
                hook(run)
    except StopTraining:
        pass
    return run.history
