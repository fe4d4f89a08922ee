"""Command line: python -m vae_tutorial {data,train,evaluate,sample,export,bench} --help."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_model
from .config import PRESETS, TrainConfig, fast_mode, preset
from .data import CifarLoader, DatasetError, PartialDatasetWarning, default_root, load_cifar10
from .losses import LogLikelihoodError
from .train import TrainingDiverged, pick_device

EXPECTED = (DatasetError, CheckpointError, TrainingDiverged, LogLikelihoodError, ValueError,
            FileNotFoundError, PermissionError)


def _common(debug_only: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show full tracebacks on errors")
    if not debug_only:
        p.add_argument("--data", help="folder holding cifar-10-batches-py/ "
                       f"(default: $VAE_TUTORIAL_DATA or {default_root()})")
        p.add_argument("--allow-partial", action="store_true", default=None,
                       help="accept a copy that fails the official checksums (a subset); "
                       "also VAE_TUTORIAL_ALLOW_PARTIAL=1")
        p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, ...")
    return p


def _parse_value(field: dataclasses.Field, text: str):
    kind = str(field.type)
    if text.lower() in ("none", "null") and "None" in kind:
        return None
    if kind.startswith("bool"):
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"--set {field.name}: expected true or false, got {text!r}")
        return text.lower() in ("1", "true", "yes")
    for cast in (int, float):
        if kind.startswith(cast.__name__):
            try:
                return cast(text)
            except ValueError:
                raise ValueError(f"--set {field.name}: expected {cast.__name__}, "
                                 f"got {text!r}") from None
    return text


def _overrides(pairs: list[str]) -> dict:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(sorted(fields))}")
        out[key] = _parse_value(fields[key], value)
    return out


def cmd_train(args) -> int:
    from .train import train

    over = _overrides(args.set or [])
    for name in ("epochs", "batch_size", "lr", "model", "seed", "data", "test_data",
                 "allow_partial", "device", "compile"):
        value = getattr(args, name, None)
        if value is not None and not (name == "device" and value == "auto"):
            over[name] = value
    if args.out:
        over["out_dir"] = args.out
    cfg = preset(args.preset, **over)
    if args.out is None and args.preset is None and "out_dir" not in over and cfg.model == "seed":
        cfg = cfg.replace(out_dir=cfg.out_dir.replace("conv", "seed"))
    print(f"training {cfg.model} ({args.preset or ('fast' if fast_mode() else 'cpu')} preset) "
          f"into {cfg.out_dir}", file=sys.stderr)
    try:
        history = train(cfg, resume=args.resume)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {cfg.out_dir}/checkpoint.pt holds the last finished epoch; "
              "continue with the same command and --resume", file=sys.stderr)
        return 130
    if history and "test_bpd" in history[-1]:  # only rank 0 evaluates under torchrun
        last = history[-1]
        print(f"done: {last['epoch']} epochs, test {last['test_bpd']:.3f} bits/dim (ELBO), "
              f"checkpoint {cfg.out_dir}/checkpoint.pt")
    return 0


def _test_batches(args, model_device):
    x, y = load_cifar10(args.data, args.split, allow_partial=args.allow_partial)
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]
    return CifarLoader(x, y, batch_size=args.batch_size, device=model_device, shuffle=False)


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    device = pick_device(args.device)
    model, ckpt = load_model(args.checkpoint, map_location=device)
    torch.manual_seed(args.seed)
    batches = _test_batches(args, device)
    t0 = time.perf_counter()
    ev = evaluate(model, batches, num_samples=args.samples, chunk=args.chunk, progress=True)
    seconds = time.perf_counter() - t0  # evaluate() ends with a host copy, so this is synced
    from .notebook import hardware

    result = {"checkpoint": str(args.checkpoint), "split": args.split,
              "data": Path(args.data or default_root()).resolve().name, "device": str(device),
              "hardware": hardware(), "torch": torch.__version__, "seed": args.seed,
              "seconds": round(seconds, 2), **dataclasses.asdict(ev)}
    if not model.likelihood.discrete:
        print(f"note: the {model.likelihood.kind} likelihood is not a probability of 8-bit "
              "images; its bits/dim do not compare with published numbers", file=sys.stderr)
    print(f"{ev.images} {args.split} images: ELBO {ev.elbo:.1f} nats "
          f"({ev.bits_per_dim:.3f} bits/dim)")
    if args.samples:
        print(f"IWAE (k={args.samples}): log p(x) >= {ev.iwae:.1f} nats "
              f"({ev.iwae_bits_per_dim:.3f} bits/dim)")
    print(f"{seconds:.1f} s on {device}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def cmd_sample(args) -> int:
    from .plots import save_grid

    device = pick_device(args.device)
    model, _ = load_model(args.checkpoint, map_location=device)
    torch.manual_seed(args.seed)
    images = model.sample(args.n)
    path = save_grid(images, args.out, nrow=args.nrow)
    print(f"wrote {args.n} samples to {path}")
    return 0


def cmd_data(args) -> int:
    root = Path(args.data) if args.data else default_root()
    for split in ("train", "test"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PartialDatasetWarning)
            x, _ = load_cifar10(root, split, download=args.download,
                                allow_partial=args.allow_partial)
        status = "partial copy, unverified" if caught else "verified against official md5"
        print(f"{split}: {len(x)} images in {root.resolve()} ({status})")
    return 0


def cmd_export(args) -> int:
    from .checkpoint import export_half

    digest = export_half(args.checkpoint, args.out)
    size = Path(args.out).stat().st_size / 2**20
    print(f"wrote {args.out} ({size:.1f} MiB, half-precision weights), sha256 {digest}")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_bench

    return run_bench(args)


def cmd_report(args) -> int:
    from .report import fill, tables

    generated = tables(args.results)
    if args.write:
        readme = Path(args.write)
        readme.write_text(fill(readme.read_text(), generated))
        print(f"wrote {len(generated)} tables into {readme}")
    else:
        print("\n\n".join(f"<!-- report:{k} -->\n{v}" for k, v in generated.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vae_tutorial", description=__doc__,
                                     parents=[_common(debug_only=True)])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", parents=[_common()], help="check (or download) CIFAR-10",
                       description="Check that CIFAR-10 loads, or download the official "
                       "archive (verified by torchvision) with --download.")
    p.add_argument("--download", action="store_true", help="download the official archive")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", parents=[_common()], help="train a VAE",
                       description="Train a VAE. Each epoch ends with a checkpoint; rerun "
                       "with --resume to continue an interrupted run.")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="named configuration (default: fast if VAE_TUTORIAL_FAST=1, else cpu)")
    p.add_argument("--model", choices=["conv", "seed"], help="ConvVAE or the seed's network")
    p.add_argument("--test-data", help="folder with the test split (default: --data)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override any TrainConfig field, e.g. --set width=32 (repeatable)")
    p.add_argument("--out", help="output folder (default: the preset's out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", parents=[_common()], help="ELBO and IWAE log-likelihood",
                       description="Test ELBO and importance-weighted log-likelihood, in nats "
                       "and bits/dim.")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("-k", "--samples", type=int, default=100, help="IWAE samples (0: ELBO only)")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--chunk", type=int, help="images decoded at once by IWAE "
                   "(default: 16384 on CUDA, 256 on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the result to this JSON file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sample", parents=[_common()], help="write samples to a PNG grid",
                       description="Draw z ~ N(0, I), decode and sample, save an image grid.")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("-n", type=int, default=64, help="number of images")
    p.add_argument("--nrow", type=int, default=8, help="images per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png", help="PNG path")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("export", parents=[_common(debug_only=True)],
                       help="write a small half-precision copy of a checkpoint",
                       description="Half-precision weights, no optimizer: small enough to "
                       "commit; `evaluate` and `sample` read it like a full checkpoint.")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", parents=[_common()], help="measure training/evaluation speed",
                       description="Images per second of the seed's pipeline and the "
                       "project's, side by side; prints a table and writes JSON.")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    p.add_argument("--steps", type=int, default=10, help="training steps per repeat")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--test-data", help="folder with the test split for the IWAE timing "
                   "(default: --data)")
    p.add_argument("--iwae-images", type=int, default=100, help="images for the IWAE timing")
    p.add_argument("--ks", default="100,1000", help="IWAE k values, comma-separated")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--loading-only", action="store_true",
                   help="time the input pipelines alone (no model), one epoch per repeat")
    p.add_argument("--json", default="bench.json", help="where to write the table")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", parents=[_common(debug_only=True)],
                       help="the README's tables, generated from results/",
                       description="Markdown tables of the committed measurements (training, "
                       "bench) from the JSON files under results/.")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    p.add_argument("--write", metavar="README", help="replace the <!-- report:NAME --> blocks "
                   "of this file instead of printing")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EXPECTED + (RuntimeError,) as err:
        if getattr(args, "debug", False):
            raise
        text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
