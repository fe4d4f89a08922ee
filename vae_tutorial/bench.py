"""Speed, measured side by side in one run: the seed's pipeline against the project's.

Every figure is the median of `repeats` timed blocks of `steps` training steps (or IWAE
batches), after warm-up; the training rows' blocks take turns (row a, b, c, a, b, c, ...), so
that a change of the machine's load hits every row alike. Rows:
  seed pipeline    torchvision CIFAR10 + ToTensor + DataLoader(num_workers=cpu_count//2,
                   pin_memory) + SeedVAE in fp32, the loss corrected (Bernoulli on [0, 1])
  project, seed    CifarLoader (uint8 on the device) + the same SeedVAE, in the precision
                   the trainer picks (precision.decide: on a CPU the probe, run afresh here)
                   and, where bf16 is eligible, in the other precision too
  project, conv    CifarLoader + ConvVAE as in the cpu (or, on CUDA, gpu) preset, likewise
  project, hvae    CifarLoader + the hierarchical VAE of that preset, likewise
  iwae k=...       evaluation images/s of iwae_log_likelihood on ConvVAE (fp32)
The JSON also holds the precision decision with the probe's figures, and a roofline: each
model's FLOP per image of a training step (torch.utils.flop_counter, forward and backward),
the GFLOP/s its rows reach, and their fraction of a reference measured in the same run, one
large 3x3 convolution (precision.REFERENCE) forward and backward in the same precision; and,
with --profile-steps, where each model's step spends its time in the picked precision (the
share of each kind of operator, torch.profiler) and the rate of its convolutions alone.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import torch

from . import adamw, measure, precision, runtime, train
from .config import TrainConfig, preset
from .data import CifarLoader, PartialDatasetWarning, load_cifar10
from .evaluate import iwae_log_likelihood
from .model import build_model

TRAIN_IMAGES = 50_000  # one epoch of the full training set


def flop_per_image(model: torch.nn.Module, batch: int = 4, convolutions: bool = False) -> float:
    """FLOP of one training step per image, forward and backward, as torch.utils.flop_counter
    counts them (convolutions and matrix products; elementwise work and the optimizer are not
    counted); with convolutions=True, those of the convolutions alone. Runs on a copy on the
    CPU in fp32; the random state is left as it was."""
    from torch.utils.flop_counter import FlopCounterMode

    net = copy.deepcopy(model).cpu().float().train()
    with torch.random.fork_rng(devices=[]):
        x = torch.randint(0, 256, (batch, 3, 32, 32)).float().div(255)
        with FlopCounterMode(display=False) as counter:
            (-net(x).elbo.mean()).backward()
    if not convolutions:
        return counter.get_total_flops() / batch
    ops = counter.get_flop_counts()["Global"]
    return sum(v for op, v in ops.items() if measure.op_kind(str(op)) == "convolutions") / batch


def profile_rows(rows: list[dict], profiles: dict[str, dict], conv_flop: dict[str, float],
                 reference: dict) -> list[dict]:
    """One row per profiled model (its bench row in the picked precision): the fraction of the
    step's operator time each kind of operator takes (measure.profile_step), and the rate of
    the convolutions alone (their FLOP at the row's training rate, in their share of the step)
    against the reference convolution's."""
    out = []
    for r in rows:
        kind = r.get("model")
        if kind not in profiles or r.get("variant") or not r.get("picked"):
            continue
        share = profiles[kind]["kinds"]["convolutions"]
        gflops = conv_flop[kind] * r["median"] / max(share, 1e-9) / 1e9
        out.append({"model": r["label"], "precision": r["precision"],
                    "kinds": profiles[kind]["kinds"],
                    "conv_mflop_per_image": conv_flop[kind] / 1e6, "conv_gflops": gflops,
                    "conv_fraction_of_reference": gflops / reference[r["precision"]]})
    return out


def roofline(rows: list[dict], flop: dict[str, float], reference: dict) -> list[dict]:
    """One row per model and precision: FLOP per image, the training rate of its bench row,
    the GFLOP/s that makes, and its fraction of the reference convolution's GFLOP/s."""
    out = []
    for r in rows:
        kind, prec = r.get("model"), r.get("precision")
        if kind not in flop or r.get("variant") or prec not in reference:
            continue
        gflops = flop[kind] * r["median"] / 1e9
        out.append({"model": r["label"], "precision": prec, "picked": r.get("picked", False),
                    "mflop_per_image": flop[kind] / 1e6, "images_per_second": r["median"],
                    "gflops": gflops, "reference_gflops": reference[prec],
                    "fraction_of_reference": gflops / reference[prec]})
    return out


def lost_in(values: torch.Tensor, dtype: torch.dtype) -> dict:
    """What casting fp32 values to a 16-bit type loses: the fraction of nonzero values that
    become 0 (underflow) and that become inf (overflow). fp16 keeps 10 mantissa bits but only
    5 exponent bits (smallest subnormal 6e-8, largest 65504); bf16 keeps fp32's 8 exponent
    bits, so it under- and overflows exactly where fp32 does."""
    v = values.detach().float().flatten()
    v = v[v != 0]
    cast = v.to(dtype)
    return {"underflow": float((cast == 0).float().mean()),
            "overflow": float(torch.isinf(cast).float().mean())}


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory so far: allocated tensors on CUDA (torch.cuda.max_memory_allocated), the
    process's peak resident memory on a CPU (Linux: ru_maxrss is in KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def time_iwae(model, x, k: int, repeats: int, device, chunk: int | None) -> list[float]:
    """Images/s of iwae_log_likelihood with k samples on the images x."""
    model.to(device).eval()
    iwae_log_likelihood(model, x[:2], k, chunk=chunk)  # warm-up
    rates = []
    for _ in range(repeats):
        measure._sync(device)
        t0 = time.perf_counter()
        for start in range(0, len(x), 50):
            iwae_log_likelihood(model, x[start:start + 50], k, chunk=chunk)
        measure._sync(device)
        rates.append(len(x) / (time.perf_counter() - t0))
    return rates


class SeedDataset(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 does per image: a PIL image from the HWC array, transformed."""

    def __init__(self, images: torch.Tensor, transform):
        self.images = images.permute(0, 2, 3, 1).numpy()  # (N, 32, 32, 3) uint8, as CIFAR10
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), 0


def seed_pipeline(images: torch.Tensor, batch_size: int, device) -> Iterator:
    """The seed notebook's input pipeline (PIL, ToTensor, DataLoader), with [0, 1] inputs
    instead of [-1, 1]."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    loader = DataLoader(SeedDataset(images, transforms.ToTensor()), batch_size=batch_size,
                        shuffle=True, drop_last=True,
                        num_workers=max(1, (os.cpu_count() or 2) // 2),
                        pin_memory=device.type == "cuda", persistent_workers=True)
    return _forever(loader)


def _forever(loader):
    while True:
        yield from loader


DEFAULT = "trainer's default"  # the first row of step_table's training steps


UNFUSED = "likelihood not fused"  # step_table's row: the likelihood's passes one by one


def step_table(model_config, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
               fast: bool = False, batch_size: int = 64,
               keep: Callable[[Callable[[], dict]], dict] | None = None):
    """The data pipelines and the training step's variants, each changing one thing against the
    trainer's default, timed in turns (notebook 5's table; appendix A2 reads the same fields).

    Returns a namespace: decision (the trainer's precision here), layouts, default_layout,
    other_layout, other_adamw (the AdamW row's name), reps, load_rates and rates ({row:
    images/s per repeat}), compile_seconds (None in fast mode), and the functions
    stepper(**change) and batches(layout, batch_size) that built the rows. keep(timings), if
    given, returns timings() or a result of it kept from earlier (`notebook.step_table`).
    """
    from types import SimpleNamespace

    decision = precision.decide(device)
    layouts = {torch.contiguous_format: "contiguous (NCHW)",
               torch.channels_last: "channels last (NHWC)"}
    default_layout, other_layout = list(layouts)[::-1 if runtime.channels_last_default(device)
                                                 else 1]
    reps = 2 if fast else 7

    def batches(layout=default_layout, batch_size=batch_size):
        return _forever(CifarLoader(images, labels, batch_size=batch_size, device=device,
                                    drop_last=True, channels_last=layout == torch.channels_last))

    def stepper(dtype=decision.dtype, layout=default_layout, batch_size=batch_size, **kw):
        torch.manual_seed(0)
        m = build_model(model_config).to(device).to(memory_format=layout)
        return measure.training_step(m, batches(layout, batch_size), device, dtype=dtype, **kw)

    fused = adamw.decide(build_model(model_config).parameters(), device).fused  # the trainer's
    other_adamw = "AdamW not fused (for-loop)" if fused else "AdamW fused=True"

    def timings() -> dict:
        pipelines = {"DataLoader + PIL + ToTensor": seed_pipeline(images, batch_size, device),
                     f"CifarLoader (uint8 on {device.type})": batches()}
        load_rates = measure.interleaved({name: measure.batch_draw(it, device)
                                          for name, it in pipelines.items()}, 8 if fast else 30,
                                         reps, device)
        variants = {DEFAULT: stepper(), "sync every step": stepper(sync_each_step=True),
                    layouts[other_layout]: stepper(layout=other_layout)}
        if "bf16" in decision.eligible:  # the other eligible precision
            variants["fp32" if decision.dtype else "bf16 autocast"] = stepper(
                dtype=None if decision.dtype else torch.bfloat16)
        if device.type == "cuda":
            variants["fp16 autocast + GradScaler"] = stepper(dtype=torch.float16)
        variants[other_adamw] = stepper(fused=not fused, foreach=False)
        if train.fuse_likelihood(TrainConfig()):  # the trainer compiles the likelihood alone
            variants[UNFUSED] = stepper(fuse_likelihood=False)
        compile_seconds = None
        if not fast:
            variants["torch.compile"] = stepper(compile_model=True)
            t0 = time.perf_counter()
            variants["torch.compile"]()  # the first step traces and compiles
            compile_seconds = time.perf_counter() - t0
        return {"load_rates": load_rates, "compile_seconds": compile_seconds,
                "rates": measure.interleaved(variants, 2 if fast else 8, reps, device)}

    timed = keep(timings) if keep else timings()
    return SimpleNamespace(decision=decision, layouts=layouts, default_layout=default_layout,
                           other_layout=other_layout, other_adamw=other_adamw, reps=reps,
                           stepper=stepper, batches=batches, batch_size=batch_size, **timed)


def against(ref, other) -> str:
    """'1.23x, beyond the spread' (or 'within'): other's median over ref's, and the verdict."""
    c = measure.compare(ref, other)
    return f"{c.ratio:5.2f}x, {'beyond' if c.exceeds else 'within'} the spread"


def print_step_table(t) -> None:
    """step_table's rows as min / median / max images/s, each against its group's first row."""
    print(f"images/s: min / median / max of {t.reps} repeats, in turns; the trainer's default "
          f"here: {t.decision.precision}, {t.layouts[t.default_layout]}")
    print(f"{'':<36}{'min / median / max':>26}   against the first row")
    for label, group in (("data alone", t.load_rates), ("training step", t.rates)):
        first = next(iter(group.values()))
        for i, (name, r) in enumerate(group.items()):
            print(f"{label + ': ' + name if i == 0 else '  ' + name:<36}"
                  f"{str(measure.Spread.of(r)):>26}   {'' if i == 0 else against(first, r)}")


def run_bench(args, cfg: TrainConfig) -> int:
    """The `bench` command: print a table and write it as JSON. cfg gives the data roots."""
    device = runtime.pick_device(cfg.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialDatasetWarning)
        x, y = load_cifar10(cfg.data, "train", allow_partial=cfg.allow_partial)
        tx, _ = load_cifar10(cfg.test_data, "test", allow_partial=cfg.allow_partial)
    size = runtime.device_preset(device)  # the preset whose architectures are timed
    b, steps, repeats = args.batch_size or cfg.batch_size, args.steps, args.repeats
    rows = []

    def add(name, rates, unit="train img/s", **extra):
        if "precision" in extra:
            extra["picked"] = extra["precision"] == decision.precision
        med = statistics.median(rates)
        rows.append({"name": name, "unit": unit, "median": med,
                     "repeats": [round(r, 1) for r in rates], **extra})
        print(f"  {name:<66} {med:>9.0f} {unit}", flush=True)

    print(f"bench on {runtime.hardware(device)} ({device}), torch {torch.__version__}, "
          f"data {cfg.data}")
    if args.loading_only:  # the input pipelines alone, one epoch's worth of batches each
        n = len(x) // b
        pipelines = {"seed pipeline: DataLoader + ToTensor, batches only":
                     seed_pipeline(x, b, device),
                     "project: CifarLoader, batches only":
                     _forever(CifarLoader(x, y, batch_size=b, device=device, drop_last=True))}
        rates = measure.interleaved({name: measure.batch_draw(it, device)  # in turns
                                     for name, it in pipelines.items()}, n, repeats, device,
                                    warmup=1)
        for name, r in rates.items():
            add(name, r, unit="img/s")
        rows[1]["speedup_vs_seed"] = rows[1]["median"] / rows[0]["median"]
        print(f"  CifarLoader: {rows[1]['speedup_vs_seed']:.0f}x the seed's input pipeline")
        return _write(args, device, cfg, b, n, repeats, rows)
    decision = precision.decide(device, refresh=True)  # on a CPU: the probe, measured again
    print(f"  precision: {decision.precision} ({decision.reason})")
    amp = decision.dtype  # the trainer's choice: bf16 autocast, or None for fp32
    other_dtype = None if amp else torch.bfloat16
    precisions = [amp, other_dtype] if "bf16" in decision.eligible else [None]  # where eligible
    prec = decision.precision
    channels_last = runtime.channels_last_default(device)  # the trainer's choice
    layout = torch.channels_last if channels_last else torch.contiguous_format
    # Every training row gets its own copy of the model (same initial weights) and its own
    # optimizer; the rows' timed blocks then take turns (measure.interleaved), so a change of
    # load hits them alike. (The seed pipeline's DataLoader worker may fill its prefetch queue,
    # two batches, during the other rows' turns, as it does during its own.)
    timed: list[tuple[str, Callable[[], int], dict]] = []  # (name, one step, row fields)

    def step_of(net, batches, dtype, layout=torch.contiguous_format, **kwargs):
        """One training step of a copy of `net` (same initial weights), its own optimizer."""
        return measure.training_step(copy.deepcopy(net).to(memory_format=layout), batches,
                                     device, dtype=dtype, **kwargs)

    def row(name, net, batches, dtype, layout=torch.contiguous_format, **extra):
        fields = {k: v for k, v in extra.items()
                  if k not in ("fused", "compile_model", "fuse_likelihood")}
        adamw = {"fused": extra["fused"]} if "fused" in extra else {}
        timed.append((name, step_of(net, batches, dtype, layout,
                                    compile_model=extra.get("compile_model", False),
                                    fuse_likelihood=extra.get("fuse_likelihood"), **adamw),
                      fields))

    torch.manual_seed(0)
    seed_model = build_model(kind="seed", likelihood="bernoulli")
    row("seed pipeline: DataLoader + SeedVAE, fp32", seed_model, seed_pipeline(x, b, device),
        None, fused=False, precision="fp32", variant="seed pipeline")
    loader = CifarLoader(x, y, batch_size=b, device=device, drop_last=True,
                         channels_last=channels_last)
    for run_amp in precisions:  # fp32 beside bf16: the data path's share alone
        p = "bf16" if run_amp else "fp32"
        row(f"project pipeline: CifarLoader + SeedVAE, {p}", seed_model, _forever(loader),
            run_amp, precision=p, model="seed", label="SeedVAE")
    # AdamW fused or a loop: each model's probe, measured again; a row with the other checks it
    updates = {"seed": adamw.decide(seed_model.parameters(), device, refresh=True)}

    def other_adam(kind):
        return "Adam not fused" if updates[kind].fused else "fused Adam"

    row(f"project pipeline: CifarLoader + SeedVAE, {prec}, {other_adam('seed')}", seed_model,
        _forever(loader), amp, fused=not updates["seed"].fused, precision=prec,
        variant=other_adam("seed"))
    models = {}
    fuses = train.fuse_likelihood(TrainConfig())  # the trainer's default: torch.compile
    for kind, label in (("conv", "ConvVAE"), ("hvae", "hierarchical VAE")):
        model = build_model(preset(size, kind=kind).model)
        models[kind] = model
        updates[kind] = adamw.decide(model.parameters(), device, refresh=True)
        print(f"  AdamW for {label}: {'fused' if updates[kind].fused else 'loop'} "
              f"({updates[kind].reason})", flush=True)
        name = f"project pipeline: CifarLoader + {label} ({size} preset)"
        for run_amp in precisions:
            p = "bf16" if run_amp else "fp32"
            row(f"{name}, {p}", model, _forever(loader), run_amp, layout, precision=p,
                model=kind, label=f"{label} ({size} preset)")
        if kind == "conv":  # channels_last is the default on CUDA only: check that choice
            other = torch.contiguous_format if channels_last else torch.channels_last
            other_name = "contiguous" if channels_last else "channels_last"
            row(f"{name}, {prec}, {other_name}", model, _forever(CifarLoader(
                x, y, batch_size=b, device=device, drop_last=True,
                channels_last=not channels_last)), amp, other, precision=prec,
                variant=other_name)
        row(f"{name}, {prec}, {other_adam(kind)}", model, _forever(loader), amp, layout,
            fused=not updates[kind].fused, precision=prec, variant=other_adam(kind))
        if fuses:  # the likelihood's elementwise passes one by one, as before they were fused
            row(f"{name}, {prec}, {UNFUSED}", model, _forever(loader), amp, layout,
                fuse_likelihood=False, precision=prec, variant=UNFUSED)
        if args.compile:
            row(f"{name}, {prec}, torch.compile", model, _forever(loader), amp, layout,
                compile_model=True, precision=prec, variant="torch.compile")
    if args.compile:
        row(f"project pipeline: CifarLoader + SeedVAE, {prec}, torch.compile", seed_model,
            _forever(loader), amp, compile_model=True, precision=prec, variant="torch.compile")
    print(f"  {len(timed)} training rows, their blocks of {steps} steps in turns, "
          f"{repeats} rounds", flush=True)
    rates = measure.interleaved({name: step for name, step, _ in timed}, steps, repeats, device)
    for name, _, fields in timed:
        add(name, rates[name], **fields)
    seed_rate = rows[0]["median"]
    for row in rows[1:]:
        row["speedup_vs_seed"] = row["median"] / seed_rate
        row["seconds_per_epoch"] = TRAIN_IMAGES / row["median"]
    print("  vs the seed pipeline: " + ", ".join(
        f"{r['name'].split(': ')[-1]} {r['speedup_vs_seed']:.2f}x" for r in rows[1:]))
    # the roofline: each model's FLOP against one large convolution, measured now, here
    flop = {"seed": flop_per_image(seed_model), **{k: flop_per_image(m) for k, m in
                                                    models.items()}}
    measured = ["bf16" if a else "fp32" for a in precisions]
    ref = precision.probe(tuple(measured), spec=_reference_spec(args), device=device)
    reference = {p: ref[f"{p}_gflops"] for p in measured}
    lines = roofline(rows, flop, reference)
    print(f"  reference: {ref['probe']}: " + ", ".join(
        f"{p} {g:.0f} GFLOP/s" for p, g in reference.items()))
    for r in lines:
        print(f"  roofline {r['model']}, {r['precision']}: {r['mflop_per_image']:.0f} MFLOP/image,"
              f" {r['gflops']:.0f} GFLOP/s, {100 * r['fraction_of_reference']:.0f}% of the "
              "reference", flush=True)
    extra = {"precision": decision.record(), "adamw": {k: d.record() for k, d in updates.items()},
             "roofline": {"reference": ref, "rows": lines}}
    if args.profile_steps:  # where each model's step spends its time, in the picked precision
        nets = {"seed": seed_model, **models}
        profiles = {k: measure.profile_step(step_of(
            m, _forever(loader), amp, torch.contiguous_format if k == "seed" else layout),
            args.profile_steps, device) for k, m in nets.items()}
        conv_flop = {k: flop_per_image(m, convolutions=True) for k, m in nets.items()}
        extra["profile"] = {"steps": args.profile_steps,
                            "rows": profile_rows(rows, profiles, conv_flop, reference)}
        for r in extra["profile"]["rows"]:
            top = sorted(r["kinds"].items(), key=lambda kv: -kv[1])
            print(f"  profile {r['model']}, {r['precision']}: " + ", ".join(
                f"{k} {100 * v:.0f}%" for k, v in top) + f"; convolutions alone "
                f"{r['conv_gflops']:.0f} GFLOP/s, {100 * r['conv_fraction_of_reference']:.0f}%"
                " of the reference", flush=True)
    test = tx[:args.iwae_images].to(device).float().div(255)
    for k in args.ks:
        rates = time_iwae(models["conv"], test, k, max(1, repeats // 2), device, chunk=None)
        add(f"iwae_log_likelihood k={k} (ConvVAE)", rates, unit="eval img/s",
            images=len(test), seconds_for_1017_images=1017 / statistics.median(rates))
    return _write(args, device, cfg, b, steps, repeats, rows, **extra)


def _reference_spec(args) -> dict:
    """precision.REFERENCE, with bench's --repeats (at least 3)."""
    return {**precision.REFERENCE, "repeats": max(3, args.repeats)}


def _write(args, device, cfg, batch_size, steps, repeats, rows, **extra) -> int:
    # the command as typed from the working directory (make passes absolute paths)
    argv = [os.path.relpath(a) if os.path.isabs(a) and os.path.exists(a) else a
            for a in sys.argv[1:]]
    command = " ".join(["python -m vae_tutorial", *map(shlex.quote, argv)])
    result = {"command": command, "hardware": runtime.hardware(device), "device": str(device),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "data": Path(cfg.data).name, "test_data": Path(cfg.test_data).name,
              "batch_size": batch_size, "steps": steps, "repeats": repeats, "rows": rows,
              **extra}
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")
    return 0
