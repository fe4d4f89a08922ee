"""AdamW's update fused or as a loop: measured on the machine and the model, not assumed.

On a CPU, torch's AdamW is a Python loop of small operations per tensor unless fused=True asks
for one kernel over all of them. Which is faster depends on the CPU and on the model: on an AMD
EPYC (family 26) bench measured the fused update ahead for ConvVAE and behind for the
hierarchical VAE. So a CPU run times both updates on its own parameters, in turns, once per
machine and model shape, and caches the verdict beside the precision probe's (one file,
runtime.precision_cache()). The loop replaces fusion only where it wins by MARGIN in the medians
and in every repeat; otherwise the fused update, the default, is kept. CUDA is always fused;
fast mode is fused without a probe (tests stay quick and the reference weights were recorded
so); runtime.ADAMW_ENV=fused or loop overrides the probe. A resumed run keeps the choice its
checkpoint's optimizer holds.

    d = decide(model.parameters(), torch.device("cpu"))   # Decision(fused=True, reason=..., ...)
    torch.optim.AdamW(model.parameters(), fused=d.fused or None)
"""

from __future__ import annotations

import datetime
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch

from . import precision, runtime

MARGIN = 1.05  # the loop replaces the fused update only when at least 5% faster
PROBE = dict(steps=10, repeats=5)  # updates per timed block, blocks per kind (in turns)


@dataclass
class Decision:
    """Whether AdamW runs fused, and why."""

    fused: bool
    reason: str  # one line: the rule, or the probe's figures, that decided it
    source: str  # "cuda", "not a cpu", "override", "fast mode", "cache", "probe",
    #              "probe, not cached",
    #              "checkpoint" (a resumed run keeps its optimizer's choice)
    figures: dict = field(default_factory=dict)  # the probe's: ms per update, each repeat

    def record(self) -> dict:
        """The decision as plain JSON values, for a run's history and bench's JSON."""
        return asdict(self)


def signature(params: list[torch.Tensor]) -> str:
    """'1,234,567 parameters in 89 tensors': what a cached verdict holds for."""
    return f"{sum(p.numel() for p in params):,} parameters in {len(params)} tensors"


def time_updates(params: list[torch.Tensor], fused: bool, steps: int) -> float:
    """Milliseconds per AdamW update (fused, or torch's per-tensor loop) over copies of params
    with random gradients, after two warm-up updates. The random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        copies = [p.detach().clone().requires_grad_() for p in params]
        for c in copies:
            c.grad = torch.randn_like(c)
    opt = torch.optim.AdamW(copies, lr=1e-4, fused=fused or None, foreach=False)
    opt.step()  # allocates the moments
    opt.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - t0) / steps * 1e3


def probe(params: Iterable[torch.Tensor], steps: int = PROBE["steps"],
          repeats: int = PROBE["repeats"]) -> dict:
    """Both updates timed on the model's parameters, `repeats` blocks each, in turns (so that a
    change of load hits both alike): the median ms per update, every repeat, the seconds taken."""
    params = [p for p in params if p.requires_grad]
    runs: dict[str, list[float]] = {"fused": [], "loop": []}
    t0 = time.perf_counter()
    for i in range(repeats):
        for kind in ("fused", "loop") if i % 2 == 0 else ("loop", "fused"):
            runs[kind].append(time_updates(params, kind == "fused", steps))
    return {**{f"{k}_ms": statistics.median(r) for k, r in runs.items()},
            **{f"{k}_repeats": [round(v, 3) for v in r] for k, r in runs.items()},
            "seconds": time.perf_counter() - t0, "params": signature(params)}


def verdict(figures: dict) -> tuple[bool, str]:
    """(fused, why): the loop only if its median beats the fused one's by MARGIN and its slowest
    repeat beats the fused update's fastest; else fused, the default."""
    fused, loop = figures["fused_ms"], figures["loop_ms"]
    rf, rl = figures.get("fused_repeats") or [fused], figures.get("loop_repeats") or [loop]
    if fused >= MARGIN * loop and max(rl) < min(rf):
        return False, "the loop faster, every repeat"
    if loop > fused and max(rf) < min(rl):
        return True, "fused faster, every repeat"
    return True, "could not tell them apart: fused kept"


def steady(figures: dict) -> bool:
    """True when both kinds' repeats spread by at most precision.MAX_SPREAD: worth caching."""
    return all(precision.spread(figures[f"{k}_repeats"]) <= precision.MAX_SPREAD
               for k in ("fused", "loop"))


def cache_key(params: list[torch.Tensor]) -> str:
    """What a cached verdict holds for: the CPU model, torch version, threads and the model."""
    return (f"adamw | {runtime.cpu_name()} | torch {torch.__version__} | "
            f"{torch.get_num_threads()} threads | {signature(params)}")


def decide(params: Iterable[torch.Tensor], device: torch.device,
           refresh: bool = False) -> Decision:
    """Fused or loop for AdamW over `params` on `device`, by the rules of the docstring above.
    refresh: probe again (CPU) and update the cache."""
    if device.type == "cuda":
        return Decision(True, "CUDA: one fused kernel", "cuda")
    if device.type != "cpu":
        return Decision(False, f"{device.type}: torch's default update", "not a cpu")
    override = runtime.adamw_override()
    if override != "auto":
        return Decision(override == "fused", f"{runtime.ADAMW_ENV}={override}", "override")
    if runtime.fast_mode():
        return Decision(True, "fast mode: fused, no probe", "fast mode")
    params = [p for p in params if p.requires_grad]
    path, key = runtime.precision_cache(), cache_key(params)
    entry = None if refresh else precision._read_cache(path).get(key)
    if isinstance(entry, dict) and isinstance(entry.get("figures"), dict) and steady(
            entry["figures"]):
        figures, source = entry["figures"], "cache"
    else:
        figures, source = probe(params), "probe"
        figures["measured"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds")
        if steady(figures):
            precision._write_cache(path, key, {"figures": figures})
        else:
            source = "probe, not cached"  # a loaded machine: measure again next time
    fused, why = verdict(figures)
    reason = (f"{'cached ' if source == 'cache' else ''}probe ({figures['params']}): fused "
              f"{_span(figures, 'fused')} vs loop {_span(figures, 'loop')} ms per update, {why}")
    return Decision(fused, reason, source, figures)


def from_optimizer(opt: torch.optim.Optimizer) -> Decision:
    """The choice a (resumed) optimizer already holds."""
    fused = bool(opt.param_groups[0].get("fused"))
    return Decision(fused, "the run's own choice, from its checkpoint", "checkpoint")


def _span(figures: dict, kind: str) -> str:
    """'3.1 (3.0-3.3)': a kind's median ms per update and the range of its repeats."""
    r = figures[f"{kind}_repeats"]
    return f"{figures[f'{kind}_ms']:.2f} ({min(r):.2f}-{max(r):.2f})"
