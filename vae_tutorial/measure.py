"""Measurements that say how much they vary (notebook 5): variants timed in turns, min/median/max
over repeats, a difference counted only where it exceeds that spread; what a 16-bit format
would lose of a backward pass's activation gradients; and tensors compared bit for bit.

    rates = interleaved({"a": step_a, "b": step_b}, calls=8, repeats=7, device=device)
    compare(rates["a"], rates["b"])   # Comparison(ratio=1.02, exceeds=False, ...): noise
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn

from . import losses, runtime
from .adamw import decide as decide_adamw


@dataclass(frozen=True)
class Spread:
    """The least, median and largest of repeated measurements."""

    low: float
    median: float
    high: float

    @classmethod
    def of(cls, values) -> Spread:
        """The spread of a non-empty sequence of numbers."""
        values = [float(v) for v in values]
        if not values:
            raise ValueError("a spread needs at least one measurement")
        return cls(min(values), statistics.median(values), max(values))

    def __str__(self) -> str:
        return f"{self.low:,.0f} / {self.median:,.0f} / {self.high:,.0f}"


@dataclass(frozen=True)
class Comparison:
    """other against base: the ratio of their medians, whether their ranges are disjoint, and
    how often two identical set-ups would give disjoint ranges with as many repeats."""

    ratio: float  # median(other) / median(base): the speed of other, base = 1
    exceeds: bool  # True when every repeat of one lies beyond every repeat of the other
    false_alarm: float  # P(disjoint ranges) for identical set-ups: 2 / C(n + m, n)

    def verdict(self) -> str:
        """One line that interprets the ratio only where it exceeds the spread of repeats."""
        if self.exceeds:
            return (f"{self.ratio:.2f}x the speed, beyond the spread of repeats (identical "
                    f"set-ups: 1 in {1 / self.false_alarm:,.0f})")
        return (f"{self.ratio:.2f}x the speed, within the spread of repeats: "
                "this measurement cannot tell them apart")


def compare(base, other) -> Comparison:
    """Compare two sets of repeated rates (images/s, steps/s, GFLOP/s): the ratio of medians, and
    whether the ranges [min, max] do not overlap. For exchangeable repeats (two identical
    set-ups, timed in turns) that happens with probability 2 / C(n + m, n): 1 in 1,716 with 7
    repeats each, 1 in 3 with 2."""
    base, other = list(base), list(other)
    a, b = Spread.of(base), Spread.of(other)
    return Comparison(ratio=b.median / a.median, exceeds=b.low > a.high or b.high < a.low,
                      false_alarm=2 / math.comb(len(base) + len(other), len(base)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], int]], calls: int, repeats: int,
                device: torch.device, warmup: int = 3) -> dict[str, list[float]]:
    """Units per second of each function, `repeats` values each: every function is called
    `warmup` times, then timed blocks of `calls` calls take turns (a, b, c, a, b, c, ...), so
    that a change of load hits every variant alike. Each call returns the units it processed
    (images, or 1 for a step); the device is synchronised before each clock reading."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            n = sum(fn() for _ in range(calls))
            _sync(device)
            rates[name].append(n / (time.perf_counter() - t0))
    return rates


def batch_draw(batches: Iterator, device: torch.device) -> Callable[[], int]:
    """Draw the next batch and move it to the device, per call; returns its size (no model)."""

    def draw() -> int:
        x, _ = next(batches)
        return len(x.to(device, non_blocking=True))

    return draw


def training_step(model: nn.Module, batches: Iterator, device: torch.device,
                  dtype: torch.dtype | None = None, compile_model: bool = False,
                  sync_each_step: bool = False, fuse_likelihood: bool | None = None,
                  **adamw) -> Callable[[], int]:
    """One training step of the model per call, as the trainer takes it with its defaults
    (train.train_step: AdamW without weight decay, the gradient norm clipped at 200; `adamw`
    passes foreach= or fused=, default: the trainer's choice, adamw.decide), on the
    next batch, at a fixed learning rate; returns the batch size. dtype: autocast to
    bf16/fp16 (None: fp32, fp16 with a GradScaler); sync_each_step: read the loss on the host
    after every step (`.item()`); fuse_likelihood: the likelihood through torch.compile
    (None: the trainer's default)."""
    from .config import TrainConfig
    from .train import fuse_likelihood as trainer_fuses

    defaults = TrainConfig()
    model.to(device).train()
    model.likelihood.fused = trainer_fuses(  # the trainer's rule, for this step's settings
        TrainConfig(compile=compile_model, fuse_likelihood=fuse_likelihood))
    if compile_model and device.type != "cuda":
        runtime.quiet_cpp_extension()
    net = torch.compile(model) if compile_model else model
    if "fused" not in adamw and not adamw.get("foreach"):  # the trainer's choice, unless asked
        adamw["fused"] = decide_adamw(model.parameters(), device).fused or None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=defaults.weight_decay,
                            **adamw)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step() -> int:
        x, _ = next(batches)
        x = x.to(device, non_blocking=True)  # a DataLoader's batches come from the host
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = net(x)
        loss = losses.training_loss(out)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), defaults.grad_clip)
        scaler.step(opt)
        scaler.update()
        if sync_each_step:
            loss.item()
        return len(x)

    return step


# What each operator of a training step does, by its name in the profiler (first match wins):
# the convolutions (forward and backward), matrix products, normalisation, the optimizer and
# gradient clipping, copies and casts (bf16 autocast's included); the rest is elementwise work
# and reductions (activations, the likelihood, the KL, the loss).
OP_KINDS = (("convolutions", ("conv",)),
            ("matrix products", ("addmm", "aten::mm", "bmm", "matmul", "linear")),
            ("normalisation", ("batch_norm", "group_norm", "layer_norm")),
            ("optimizer and clipping", ("optimizer", "adam", "_foreach", "clip_grad")),
            ("copies and casts", ("copy", "_to_copy", "aten::to", "clone", "contiguous", "cat",
                                  "stack", "empty", "zero", "fill", "pad")))
OTHER_KIND = "elementwise and reductions"


def op_kind(name: str) -> str:
    """The kind (OP_KINDS) of an operator or profiler range, by its name."""
    low = name.lower()
    return next((kind for kind, marks in OP_KINDS if any(m in low for m in marks)), OTHER_KIND)


def profile_step(step: Callable[[], int], calls: int, device: torch.device) -> dict:
    """Where the time of `calls` calls of a training step goes (after one warm-up call), by
    torch.profiler: {"seconds_per_call": wall clock per call under the profiler,
    "kinds": {kind: fraction of the operators' self time}} (the device's time on CUDA)."""
    import os

    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # no "gpuGetDeviceCount failed" on a CPU
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    _sync(device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(calls):
            step()
        _sync(device)
    seconds = (time.perf_counter() - t0) / calls
    kinds = dict.fromkeys([k for k, _ in OP_KINDS] + [OTHER_KIND], 0.0)
    for e in prof.key_averages():
        kinds[op_kind(e.key)] += (e.self_device_time_total if device.type == "cuda"
                                  else e.self_cpu_time_total)
    total = sum(kinds.values()) or 1.0
    return {"seconds_per_call": seconds, "kinds": {k: v / total for k, v in kinds.items()}}


def optimizer_step(model: nn.Module, **adamw) -> Callable[[], int]:
    """AdamW's update alone, one per call (returns 1), on fixed random gradients of the model's
    parameters (on their device); `adamw` passes foreach= or fused=. The model is changed."""
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).mul_(1e-3).to(p.device)
    opt = torch.optim.AdamW(params, lr=1e-4, **adamw)

    def step() -> int:
        opt.step()
        return 1

    return step


def activation_gradients(model: nn.Module, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The gradients the backward pass of the training loss (nats per image, mean over the
    batch) times `scale` computes for the outputs of every leaf module, flattened into one fp32
    tensor: the values a 16-bit backward pass would have to hold. The parameters' .grad are
    left set."""
    grads: list[torch.Tensor] = []

    def keep(module, inputs, out):
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(lambda g: grads.append(g.detach().float().flatten()))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(keep) for m in leaves]
    try:
        model.zero_grad(set_to_none=True)
        (scale * losses.training_loss(model(x))).backward()
    finally:
        for h in handles:
            h.remove()
    return torch.cat(grads)


def saved_activation_mib(model: nn.Module, x: torch.Tensor) -> float:
    """MiB of the tensors autograd keeps for the backward pass of the training loss on x
    (each stored tensor counted once; the parameters themselves left out), in fp32."""
    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        losses.training_loss(model.train()(x))
    return sum(seen.values()) / 2**20


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def identical(a, b) -> bool:
    """Whether two nested structures (dicts, lists, tuples, tensors, plain values) are equal,
    tensors bit for bit: same dtype, shape and bytes."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(_bytes(a), _bytes(b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(identical, a, b))
    return type(a) is type(b) and a == b
