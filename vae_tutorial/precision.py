"""The precision a training step runs in: measured on the machine, not read from its flags.

A precision is eligible where it has been shown to give the same ELBO as fp32: fp32 always,
bf16 autocast where bf16 is native (the committed ConvVAE runs in bf16 and in fp32,
results/conv-cpu and results/conv-cpu-fp32, reach the same 5.212 bits/dim on the exact test
images). Among the eligible ones a CPU takes the faster, measured by `probe`: a 3x3 convolution
like the models' dominant ones (128 -> 128 channels at 16x16), forward and backward, timed in
fp32 and in bf16 autocast for about a second. CPU flags do not predict it: the same AVX512-BF16
flags made bf16 ~1.4x faster than fp32 on an AMD EPYC and ~0.6x on an Intel Xeon. bf16 must win
by BF16_MARGIN in the medians *and* every bf16 repeat must beat every fp32 repeat (the ranges
separate); otherwise the probe could not tell them apart and fp32, the exact one, is kept. The
decision and its figures are cached per CPU model, torch version, thread count and probe in
runtime.precision_cache(), so the probe runs once per machine, unless the repeats of either
precision spread by more than MAX_SPREAD (a loaded machine): then nothing is cached and the
next run measures again. CUDA keeps its rule without a probe: bf16 on GPUs that compute it
natively (Ampere and later).

    d = decide(torch.device("cpu"))   # Decision(precision="bf16", reason="probe: ...", ...)
    d.dtype, d.record()               # torch.bfloat16 (None for fp32); a dict for histories

Order of the rules (first that applies): amp=false -> fp32; bf16 not eligible -> fp32;
runtime.PRECISION_ENV=fp32|bf16 -> that one; CUDA -> bf16; fast mode -> bf16, no probe (tests
and smoke runs stay deterministic and quick, as the reference weights were recorded); the cached
probe; a new probe.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from . import runtime

BF16_MARGIN = 1.05  # bf16 is picked only when the probe measures it at least 5% faster
MAX_SPREAD = 0.25  # (max - min) / median of a precision's repeats above which nothing is cached
# The probe's convolution: channels, resolution, batch; timed `steps` passes per block.
PROBE = dict(channels=128, size=16, batch=32, steps=3, repeats=5)
REFERENCE = dict(channels=128, size=16, batch=128, steps=3, repeats=5)  # bench's roofline


@dataclass
class Decision:
    """Which precision a device trains in, and why."""

    precision: str  # "bf16" (autocast) or "fp32"
    reason: str  # one line: the rule, or the probe's figures, that decided it
    source: str  # "amp=false", "not eligible", "override", "cuda", "fast mode", "cache", "probe",
    #              "probe, not cached" (the repeats spread too widely: measured again next run)
    eligible: tuple[str, ...] = ("fp32",)  # the precisions shown to give fp32's ELBO here
    figures: dict = field(default_factory=dict)  # the probe's: GFLOP/s per precision, ...

    @property
    def dtype(self) -> torch.dtype | None:
        """torch.bfloat16 for bf16 autocast, None for fp32 (autocast off)."""
        return torch.bfloat16 if self.precision == "bf16" else None

    def record(self) -> dict:
        """The decision as plain JSON values, for a run's history and bench's table."""
        d = asdict(self)
        d["eligible"] = list(self.eligible)
        return d


# --- eligibility --------------------------------------------------------------------------------

def eligible(device: torch.device) -> tuple[str, ...]:
    """The precisions shown to give the same ELBO as fp32 on this device: fp32 everywhere, and
    bf16 autocast where bf16 is native (Ampere+ GPUs; CPUs with AMX, AVX512-BF16 or Arm BF16)."""
    if device.type == "cuda" and runtime.cuda_bf16_native():
        return ("fp32", "bf16")
    if device.type == "cpu" and runtime.cpu_bf16_native():
        return ("fp32", "bf16")
    return ("fp32",)


# --- the probe ----------------------------------------------------------------------------------

def conv_flop(channels: int, size: int, batch: int) -> int:
    """FLOP of one forward and backward pass of a 3x3 convolution (same padding, no bias):
    2 * Cin * Cout * 9 * H * W per image forward, as much again for each of the input's and
    the weight's gradients."""
    return 3 * 2 * channels * channels * 9 * size * size * batch


def time_conv(dtype: torch.dtype | None, channels: int, size: int, batch: int, steps: int,
              repeats: int, device: torch.device | None = None) -> list[float]:
    """GFLOP/s of `repeats` blocks of `steps` forward+backward passes of a 3x3 convolution,
    channels -> channels at size x size, in bf16 autocast (dtype) or fp32 (None), after two
    warm-up passes. The global random state is left as it was."""
    device = device or torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device)
        x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            y = conv(x)
        y.sum().backward()  # the input's gradient and the weight's, as in a model's layer

    for _ in range(2):
        step()
    flop = conv_flop(channels, size, batch) * steps
    rates = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        rates.append(flop / (time.perf_counter() - t0) / 1e9)
    return rates


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe(precisions: tuple[str, ...] = ("fp32", "bf16"), spec: dict | None = None,
          device: torch.device | None = None) -> dict:
    """The probe's figures: median GFLOP/s of the probe convolution in each precision (repeats
    interleaved, so that a change in load hits both alike), every repeat, and the seconds taken."""
    spec = dict(spec or PROBE)
    repeats = spec.pop("repeats")
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    runs: dict[str, list[float]] = {p: [] for p in precisions}
    t0 = time.perf_counter()
    for _ in range(repeats):
        for p in precisions:
            runs[p] += time_conv(dtypes[p], **spec, repeats=1, device=device)
    return {**{f"{p}_gflops": statistics.median(r) for p, r in runs.items()},
            **{f"{p}_repeats": [round(v, 1) for v in r] for p, r in runs.items()},
            "seconds": time.perf_counter() - t0,
            "probe": probe_name(spec)}


def probe_name(spec: dict | None = None) -> str:
    """'conv3x3 128->128 @16x16, batch 32, fwd+bwd': what the probe times."""
    s = spec or PROBE
    return (f"conv3x3 {s['channels']}->{s['channels']} @{s['size']}x{s['size']}, "
            f"batch {s['batch']}, fwd+bwd")


def spread(repeats: list[float]) -> float:
    """(max - min) / median of a probe's repeats: 0 on a quiet machine, large under load."""
    med = statistics.median(repeats)
    return (max(repeats) - min(repeats)) / med if med > 0 else math.inf


def verdict(figures: dict, allowed: tuple[str, ...]) -> tuple[str, str]:
    """(precision, why) from the probe's figures: bf16 only if it is eligible, its median is
    BF16_MARGIN above fp32's and its slowest repeat beats fp32's fastest; else fp32."""
    if "bf16" not in allowed:
        return "fp32", "bf16 not eligible"
    fp32, bf16 = figures.get("fp32_gflops", 0.0), figures.get("bf16_gflops", 0.0)
    if not (math.isfinite(bf16) and math.isfinite(fp32)):
        return "fp32", "a figure is not finite"
    r32, r16 = figures.get("fp32_repeats") or [fp32], figures.get("bf16_repeats") or [bf16]
    if bf16 >= BF16_MARGIN * fp32 and min(r16) > max(r32):
        return "bf16", "bf16 faster, every repeat"
    if fp32 > bf16 and min(r32) > max(r16):
        return "fp32", "fp32 faster, every repeat"
    if bf16 >= BF16_MARGIN * fp32:
        return "fp32", "bf16's median 5% faster but the ranges overlap: could not tell, fp32 kept"
    return "fp32", "bf16 not 5% faster"


def pick(figures: dict, allowed: tuple[str, ...]) -> str:
    """The precision `verdict` picks."""
    return verdict(figures, allowed)[0]


def steady(figures: dict) -> bool:
    """True when every precision's repeats spread by at most MAX_SPREAD: a probe worth caching."""
    runs = [v for k, v in figures.items() if k.endswith("_repeats")]
    return bool(runs) and all(spread(r) <= MAX_SPREAD for r in runs)


# --- the cache ----------------------------------------------------------------------------------

def cache_key() -> str:
    """What a cached decision holds for: the CPU model, torch version, threads and the probe."""
    return (f"{runtime.cpu_name()} | torch {torch.__version__} | "
            f"{torch.get_num_threads()} threads | {probe_name()}")


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, key: str, entry: dict) -> None:
    data = _read_cache(path)
    data[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError as e:  # a read-only home: decide again next time
        warnings.warn(f"could not cache the precision probe in {path}: {e}", stacklevel=3)


def _span(figures: dict, p: str) -> str:
    """'281 (270-290)': a precision's median GFLOP/s and the range of its repeats."""
    r = figures.get(f"{p}_repeats")
    rng = f" ({min(r):.0f}-{max(r):.0f})" if r else ""
    return f"{figures[f'{p}_gflops']:.0f}{rng}"


_MEMO: dict[tuple[str, str], Decision] = {}  # (cache file, key) -> this process's decision


def clear_memo() -> None:
    """Forget the decisions this process made (the cache file is kept)."""
    _MEMO.clear()


def _cpu_decision(allowed: tuple[str, ...], refresh: bool) -> Decision:
    """The cached probe's decision, else a new probe's (saved to the cache)."""
    path, key = runtime.precision_cache(), cache_key()
    memo = (str(path), key)
    if not refresh and memo in _MEMO:
        return _MEMO[memo]
    entry = None if refresh else _read_cache(path).get(key)
    if (isinstance(entry, dict) and isinstance(entry.get("figures"), dict)
            and steady(entry["figures"])):  # an unsteady entry (older code wrote them): ignored
        figures, source = entry["figures"], "cache"
    else:
        figures, source = probe(), "probe"
        figures["measured"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds")
        figures["key"] = key
        if steady(figures):
            _write_cache(path, key, {"figures": figures})
        else:
            source = "probe, not cached"  # a loaded machine: measure again next time
    chosen, why = verdict(figures, allowed)
    reason = (f"{'cached ' if source == 'cache' else ''}probe ({figures['probe']}): bf16 "
              f"{_span(figures, 'bf16')} vs fp32 {_span(figures, 'fp32')} GFLOP/s, {why}"
              f"{'; repeats spread too widely to cache' if source == 'probe, not cached' else ''}")
    decision = Decision(chosen, reason, source, allowed, figures)
    _MEMO[memo] = decision
    return decision


# --- the policy ---------------------------------------------------------------------------------

def decide(device: torch.device, amp: bool = True, refresh: bool = False) -> Decision:
    """The precision a training step on `device` runs in, by the rules of this module's
    docstring. refresh: probe again (CPU) and update the cache."""
    allowed = eligible(device)
    if not amp:
        return Decision("fp32", "amp=false: fp32 asked for", "amp=false", allowed)
    if "bf16" not in allowed:
        return Decision("fp32", f"bf16 is not native on this {device.type}: not eligible "
                        "(emulated bf16 is slower than fp32)", "not eligible", allowed)
    override = runtime.precision_override()
    if override != "auto":
        return Decision(override, f"{runtime.PRECISION_ENV}={override}", "override", allowed)
    if device.type == "cuda":
        return Decision("bf16", "CUDA with native bf16 (Ampere or later)", "cuda", allowed)
    if runtime.fast_mode():
        return Decision("bf16", "fast mode: bf16 where native, no probe", "fast mode", allowed)
    return _cpu_decision(allowed, refresh)


def autocast_dtype(device: torch.device, amp: bool = True) -> torch.dtype | None:
    """The dtype `decide` picks, for torch.autocast: bf16 where it is eligible (native) and pays
    (on a CPU: measured once by a short probe and cached; on CUDA: Ampere and later), amp on and
    runtime.PRECISION_ENV not fp32; None (fp32) elsewhere."""
    return decide(device, amp).dtype
