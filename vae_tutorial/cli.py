"""Command line: python -m vae_tutorial {data,train,evaluate,sample,export,bench,report,results,
gpu-check}.

Every bad input is one line on stderr and exit status 2: argparse's own errors (each argument
is typed with its range), config fields (config.validate), data and checkpoint errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
import warnings
from pathlib import Path

import torch

from . import checkpoint, runtime
from .checkpoint import CheckpointError
from .config import (
    PRESETS,
    ConfigError,
    ModelConfig,
    TrainConfig,
    choices,
    field_range,
    parse_overrides,
    preset,
)
from .data import DatasetError, PartialDatasetWarning
from .losses import LogLikelihoodError
from .train import TrainingDiverged

EXPECTED = (ValueError, OSError, RuntimeError)  # every error of the package derives from these
assert all(issubclass(e, EXPECTED) for e in (DatasetError, CheckpointError, TrainingDiverged,
                                             LogLikelihoodError, ConfigError))


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def number(kind: type, lo: float, hi: float, open_lo: bool = False):
    """An argparse type: a `kind` (int or float) between lo and hi, else a one-line error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        above = value > lo if open_lo else value >= lo
        if not (above and value <= hi):  # also refuses nan
            raise argparse.ArgumentTypeError(
                f"must be {'above' if open_lo else 'at least'} {lo:g} and at most {hi:g}, "
                f"got {text}")
        return value
    parse.__name__ = kind.__name__
    parse.kind, parse.lo, parse.hi, parse.open_lo = kind, lo, hi, open_lo  # for the tests
    return parse


def field(name: str):
    """An argparse type for a TrainConfig field, with the field's own type and range."""
    kind, rng = field_range(TrainConfig, name)
    return number(kind, rng.lo, rng.hi, rng.open_lo)


def number_list(kind: type, lo: float, hi: float):
    """An argparse type: comma-separated `kind`s, each between lo and hi."""
    one = number(kind, lo, hi)

    def parse(text: str):
        return [one(v) for v in text.split(",")]
    parse.__name__ = f"list of {kind.__name__}"
    parse.kind, parse.lo, parse.hi, parse.open_lo = kind, lo, hi, False
    return parse


def output_file(text: str) -> Path:
    """An argparse type: a file path whose folder exists (nothing is created by surprise)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {path.parent} does not exist; create it "
                                         "first")
    return path


def folder_name(text: str) -> str:
    """An argparse type: one folder name (letters, digits, '-', '_', '.'), not a path."""
    if not text.strip("._") or not all(c.isalnum() or c in "-_." for c in text):
        raise argparse.ArgumentTypeError(f"expected a folder name such as conv-cpu, got {text!r}")
    return text


def existing_dir(text: str) -> Path:
    """An argparse type: a folder that exists."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return Path(text)


def _config(args, **extra):
    """The run's TrainConfig from --preset, --model, the data flags and --set."""
    over = parse_overrides(getattr(args, "set", None) or [])
    for name, flag in (("data", "data"), ("test_data", "test_data"),
                       ("allow_partial", "allow_partial"), ("kind", "model")):
        value = getattr(args, flag, None)
        if value is not None:
            over[name] = str(value) if isinstance(value, Path) else value
    if getattr(args, "device", None):
        over["device"] = args.device
    return preset(args.preset, **{**over, **extra})  # extra wins (--match-time's kind)


def _checkpoint(args, cfg) -> Path:
    """The CHECKPOINT argument, or the checkpoint of the --preset/--model run."""
    return args.checkpoint or checkpoint.path(cfg.out_dir)


def cmd_train(args) -> int:
    from .histories import curve_split
    from .train import train

    extra = {k: getattr(args, k) for k in TRAIN_FIELDS if getattr(args, k) is not None}
    if args.out:
        extra["out_dir"] = str(args.out)
    if args.note is not None:
        extra["notes"] = {"about": args.note}
    if args.match_time:
        ref = _config(args, kind=args.match_time)
        history = Path(ref.out_dir) / "history.json"
        if not history.is_file():
            raise ValueError(f"--match-time {args.match_time}: no {history}; train that run first")
        extra["time_limit"] = sum(h["seconds"] for h in json.loads(history.read_text())) / 60
    cfg = _config(args, **extra)
    ckpt = checkpoint.path(cfg.out_dir)
    resume = args.resume and ckpt.exists()
    if resume and args.note is None:  # the note the run was started with stays with it
        cfg = cfg.replace(notes=checkpoint.load_checkpoint(ckpt)["config"].get("notes", {}))
    if ckpt.exists() and not (args.resume or args.fresh):
        raise ValueError(f"{ckpt} exists: add --resume to continue that run, or --fresh to "
                         "start over and overwrite it")
    try:
        history = train(cfg, resume=resume)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {ckpt} holds the last checkpoint (at most "
              f"{cfg.checkpoint_minutes:g} minutes ago); continue with the same command and "
              "--resume", file=sys.stderr)
        return 130
    split = curve_split(history)
    if history and f"{split}_bpd" in history[-1]:  # only rank 0 evaluates under torchrun
        last = history[-1]
        print(f"done: {last['epoch']} epochs, {split} {last[split + '_bpd']:.3f} bits/dim "
              f"(ELBO), checkpoint {ckpt}" + ("; the test images: `evaluate`" if split == "valid"
                                              else ""))
    return 0


def cmd_evaluate(args) -> int:
    from tqdm.auto import tqdm

    from .checkpoint import load_model
    from .data import CifarLoader, load_cifar10, split_validation
    from .evaluate import evaluate, latent_statistics

    cfg = _config(args)
    path = _checkpoint(args, cfg)
    name = "eval.json" if args.split == "test" else f"eval-{args.split}.json"
    json_path = args.json or (None if args.checkpoint else path.parent / name)
    device = runtime.pick_device(cfg.device)
    model, ckpt = load_model(path, map_location=device)
    run = ckpt["config"]
    key = {"test": "test_data", "train": "data",  # valid: the exact images it was taken from
           "valid": "extra_data" if run.get("extra_data") else "data"}[args.split]
    exact = (cfg.extra_data or cfg.data) if run.get("extra_data") else cfg.data
    root = {"test": cfg.test_data, "train": cfg.data, "valid": exact}[args.split]
    stored = run.get(key)
    if args.data is None and args.test_data is None and stored and Path(stored).is_dir():
        root = stored  # by default, the images the run itself was tested (trained) on
    x, y = load_cifar10(root, "test" if args.split == "test" else "train",
                        allow_partial=cfg.allow_partial)
    if args.split == "valid":  # the run's own held-out training images (train.load_training_data)
        if not run.get("valid_size"):
            raise ValueError(f"--split valid: {path} held out no validation images "
                             "(valid_size 0); evaluate --split test instead")
        if not run.get("extra_data") and run.get("train_limit"):
            x, y = x[:run["train_limit"]], y[:run["train_limit"]]
        _, held = split_validation(len(x), run["valid_size"], run.get("valid_seed", 0))
        x, y = x[held], y[held]
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]
    batches = CifarLoader(x, y, batch_size=args.batch_size, device=device, shuffle=False)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    ev = evaluate(model, tqdm(batches, desc="evaluate", leave=False), num_samples=args.samples,
                  chunk=args.chunk, per_image=args.per_image)
    seconds = time.perf_counter() - t0  # evaluate() ends with a host copy, so this is synced
    result = {"checkpoint": str(runtime.shown(path.resolve())),  # no machine-specific prefix
              "split": args.split, "data": Path(root).name,
              "device": str(device), "hardware": runtime.hardware(device),
              "torch": torch.__version__, "seed": args.seed, "seconds": round(seconds, 2),
              # the run's validation split (held out of training, used for its curves)
              "valid_size": ckpt["config"].get("valid_size", 0),
              "valid_seed": ckpt["config"].get("valid_seed", 0),
              **{k: v for k, v in dataclasses.asdict(ev).items()
                 if v is not None or not k.endswith("_per_image")}}
    if args.stats:
        if not hasattr(model, "encode"):
            raise ValueError(f"--stats: the {model.config.kind} model has no single latent z")
        stats = latent_statistics(model, batches)
        result.update(active_units=stats["active_units"], active_threshold=stats["threshold"],
                      kl_per_dim=[round(v, 5) for v in stats["kl_per_dim"].tolist()])
        print(f"active units: {stats['active_units']} of {model.latent_dim}")
    if not model.likelihood.discrete:
        print(f"note: the {model.likelihood.kind} likelihood is not a probability of 8-bit "
              "images; its bits/dim do not compare with published numbers", file=sys.stderr)
    print(f"{ev.images} {args.split} images: ELBO {ev.elbo:.1f} nats "
          f"({ev.bits_per_dim:.3f} ± {ev.bits_per_dim_se:.3f} bits/dim, ± one standard error "
          "over images)")
    if args.samples:
        print(f"IWAE (k={args.samples}): log p(x) >= {ev.iwae:.1f} nats "
              f"({ev.iwae_bits_per_dim:.3f} ± {ev.iwae_bits_per_dim_se:.3f} bits/dim)")
    print(f"{seconds:.1f} s on {device}")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1))
        print(f"wrote {json_path}")
    return 0


def cmd_sample(args) -> int:
    from .checkpoint import load_model
    from .plots import save_grid

    cfg = _config(args)
    device = runtime.pick_device(cfg.device)
    model, _ = load_model(_checkpoint(args, cfg), map_location=device)
    torch.manual_seed(args.seed)
    images = model.sample(args.n, temperature=args.temperature)
    path = save_grid(images, args.out, nrow=args.nrow)
    print(f"wrote {args.n} samples (temperature {args.temperature:g}) to {path}")
    return 0


def cmd_data(args) -> int:
    from .data import load_cifar10

    cfg = _config(args)
    for split, root in (("train", cfg.data), ("test", cfg.test_data)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PartialDatasetWarning)
            x, _ = load_cifar10(root, split, download=args.download,
                                allow_partial=cfg.allow_partial)
        status = "partial copy, unverified" if caught else "verified against official md5"
        print(f"{split}: {len(x)} images in {root} ({status})")
    return 0


def cmd_export(args) -> int:
    from .checkpoint import export_half, load_checkpoint

    load_checkpoint(args.checkpoint)  # refuse a bad source before touching the output
    digest = export_half(args.checkpoint, args.out)
    size = args.out.stat().st_size / 2**20
    print(f"wrote {args.out} ({size:.1f} MiB, half-precision weights), sha256 {digest}")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_bench

    return run_bench(args, _config(args))


def cmd_report(args) -> int:
    from .report import fill, markers, tables

    generated = tables(args.results)
    if args.write:
        text = args.write.read_text()
        names = markers(text)
        args.write.write_text(fill(text, {k: generated[k] for k in names}))
        print(f"wrote {len(names)} tables into {args.write}")
    else:
        print("\n\n".join(f"<!-- report:{k} -->\n{v}" for k, v in generated.items()))
    return 0


def cmd_results(args) -> int:
    """Copy a finished run's history and evaluation (and half-precision weights) to results/."""
    from .report import write_all

    run = args.run.resolve() if args.run else Path(_config(args).out_dir)
    dest = runtime.results_dir() / (args.name or run.name)
    checkpoint.publish(run, dest, weights=args.weights)
    print(f"copied {run.name} to {dest}")
    for path in write_all(runtime.checkout_dir(), runtime.results_dir()):
        print(f"regenerated the tables of {path}")
    return 0


def cmd_gpu_check(args) -> int:
    from .gpu_check import process_age, run_check

    return run_check(args, start=time.perf_counter() - process_age())  # Python's start-up too


def config_option(p: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """An option that mirrors TrainConfig's field `name` (--batch-size for batch_size), typed from
    the field's declaration: a number within its range, or a flag for a bool (None when absent,
    so that the config's own value stands)."""
    flag = "--" + name.replace("_", "-")
    hint = typing.get_type_hints(TrainConfig)[name]
    if set(typing.get_args(hint) or (hint,)) <= {bool, type(None)}:
        p.add_argument(flag, action="store_true", default=None, **kwargs)
    else:
        p.add_argument(flag, type=field(name), **kwargs)


# train's options that set the TrainConfig field of the same name
TRAIN_FIELDS = {"epochs": None, "batch_size": None, "lr": None, "seed": None,
                "compile": "torch.compile"}  # name -> help


def _common(p: argparse.ArgumentParser, data: bool = True, model: bool = True) -> None:
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show full tracebacks on errors")
    if data:
        p.add_argument("--data", type=existing_dir, help="folder holding cifar-10-batches-py/ "
                       f"(default: ${runtime.DATA_ENV} or {runtime.checkout_dir() / 'data'})")
        p.add_argument("--test-data", type=existing_dir, help="folder with the test split "
                       f"(default: ${runtime.DATA_ENV} if set, else --data)")
        config_option(p, "allow_partial", help="accept a copy that fails the official "
                      f"checksums (a subset); also {runtime.ALLOW_PARTIAL_ENV}=1")
        p.add_argument("--device", help="auto (cuda, then mps, then cpu; the default), cpu, "
                       "cuda, cuda:1, mps")
    if model:
        p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help=f"named configuration (default: fast if {runtime.FAST_ENV}=1, else "
                       "gpu on CUDA, else cpu)")
        p.add_argument("--model", choices=choices(ModelConfig, "kind"), default=None,
                       help="ConvVAE, the seed's network, or the hierarchical VAE")


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="check (or download) CIFAR-10",
                       description="Check that CIFAR-10 loads, or download the official "
                       "archive (verified by torchvision) with --download.")
    _common(p, model=False)
    p.set_defaults(preset=None, model=None)
    p.add_argument("--download", action="store_true", help="download the official archive")
    p.set_defaults(func=cmd_data)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a VAE",
                       description="Train a VAE. Checkpoints are written every epoch and every "
                       "few minutes; rerun with --resume to continue an interrupted run.")
    _common(p)
    for name, help in TRAIN_FIELDS.items():
        config_option(p, name, help=help)
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override any config field, e.g. --set width=32 (repeatable)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<model>-<preset>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the run folder if it has a checkpoint")
    p.add_argument("--fresh", action="store_true",
                   help="start over even if the run folder has a checkpoint (overwrites it)")
    p.add_argument("--match-time", choices=choices(ModelConfig, "kind"),
                   help="train for as long as that model's run of this preset trained")
    p.add_argument("--note", metavar="TEXT", help="what this run changes, in words; `results` "
                   "records it in the run's about.json (kept on --resume)")
    p.set_defaults(func=cmd_train)


CKPT_HELP = "a checkpoint (default: the --preset/--model run's checkpoint.pt)"
COUNT = number(int, 1, 10**7)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="ELBO and IWAE log-likelihood",
                       description="Test ELBO and importance-weighted log-likelihood, in nats "
                       "and bits/dim. Without CHECKPOINT the result also goes to the run's "
                       "eval.json.")
    _common(p)
    p.add_argument("checkpoint", type=Path, nargs="?", help=CKPT_HELP)
    p.add_argument("-k", "--samples", type=number(int, 0, 100_000), default=100,
                   help="IWAE samples (0: ELBO only)")
    p.add_argument("--split", choices=["train", "valid", "test"], default="test",
                   help="valid: the run's own validation images (its valid_size, valid_seed)")
    p.add_argument("--per-image", action="store_true",
                   help="also write every image's ELBO (and IWAE) to the JSON, in nats, for "
                   "comparing two models on the same images")
    p.add_argument("--limit", type=COUNT, help="evaluate the first N images only")
    config_option(p, "batch_size", default=50)
    p.add_argument("--chunk", type=COUNT, help="images decoded at once by IWAE "
                   "(default: 16384 on CUDA, 256 on CPU)")
    config_option(p, "seed", default=0)
    p.add_argument("--stats", action="store_true",
                   help="also KL per latent dimension and active units (single-latent models)")
    p.add_argument("--json", type=output_file, help="also write the result to this JSON file")
    p.set_defaults(func=cmd_evaluate)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="write samples to a PNG grid",
                       description="Draw z from the prior at a temperature, decode and sample, "
                       "save an image grid.")
    _common(p)
    p.add_argument("checkpoint", type=Path, nargs="?", help=CKPT_HELP)
    p.add_argument("-n", type=number(int, 1, 10_000), default=64, help="number of images")
    p.add_argument("--nrow", type=number(int, 1, 1000), default=8, help="images per row")
    p.add_argument("-t", "--temperature", type=number(float, 0, 10), default=1.0,
                   help="scale of the prior's noise (1: the model; lower: smoother, less varied)")
    config_option(p, "seed", default=0)
    p.add_argument("--out", type=output_file, default=Path("samples.png"), help="PNG path")
    p.set_defaults(func=cmd_sample)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a small half-precision copy of a checkpoint",
                       description="Half-precision weights, no optimizer: small enough to "
                       "commit; `evaluate` and `sample` read it like a full checkpoint.")
    _common(p, data=False, model=False)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=output_file)
    p.set_defaults(func=cmd_export)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure training/evaluation speed",
                       description="Images per second of the seed's pipeline and the "
                       "project's, side by side; prints a table and writes JSON.")
    _common(p)
    p.add_argument("--repeats", type=number(int, 1, 1000), default=5,
                   help="timed repeats (median reported)")
    p.add_argument("--steps", type=number(int, 1, 100_000), default=10,
                   help="training steps per repeat")
    config_option(p, "batch_size", help="images per step (default: the preset's)")
    p.add_argument("--iwae-images", type=number(int, 1, 100_000), default=100,
                   help="images for the IWAE timing")
    p.add_argument("--ks", type=number_list(int, 1, 100_000), default=[100, 1000],
                   help="IWAE k values, comma-separated")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--profile-steps", type=number(int, 0, 10_000), default=3,
                   help="training steps per model profiled (where the time goes; 0: none)")
    p.add_argument("--loading-only", action="store_true",
                   help="time the input pipelines alone (no model), one epoch per repeat")
    p.add_argument("--json", type=output_file, default=Path("bench.json"),
                   help="where to write the table")
    p.set_defaults(func=cmd_bench)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="the README's tables, generated from results/",
                       description="Markdown tables of the committed measurements (training, "
                       "bench) from the JSON files under results/.")
    _common(p, data=False, model=False)
    p.add_argument("--results", type=existing_dir, default=runtime.results_dir(),
                   help="results folder")
    p.add_argument("--write", metavar="FILE", type=output_file,
                   help="replace the <!-- report:NAME --> blocks of this file (README.md, "
                   "DATA.md) instead of printing")
    p.set_defaults(func=cmd_report)


def _add_results(sub) -> None:
    p = sub.add_parser("results", help="record a finished run under results/ (maintainers)",
                       description="Copy the --preset/--model run's history.json, eval.json "
                       "and any eval-*.json (e.g. --split valid's) to results/<model>-<preset>/ "
                       "(with --weights, half-precision weights and their sha256 too), then "
                       "regenerate the README's tables.")
    _common(p)
    p.add_argument("--run", type=existing_dir, help="the run folder (default: that of --preset "
                   "and --model, runs/<model>-<preset>)")
    p.add_argument("--weights", action="store_true", help="also export half-precision weights")
    p.add_argument("--name", type=folder_name, help="folder under results/ (default: the run's, "
                   "e.g. conv-cpu)")
    p.set_defaults(func=cmd_results)


def _add_gpu_check(sub) -> None:
    p = sub.add_parser("gpu-check", help="a GPU machine's bench and two gpu runs, in one call",
                       description="Within --minutes of wall clock on a CUDA machine: the bench "
                       "with --compile, a time-limited gpu-preset ConvVAE and hierarchical VAE, "
                       "each evaluated with IWAE k=100 on the exact test images; JSON files into "
                       "results/gpu-<GPU name>/, each written as its phase ends.")
    _common(p, data=False, model=False)
    p.add_argument("--minutes", type=number(float, 0, 1440, open_lo=True), default=8.0,
                   help="wall-clock budget of the whole check (default: 8)")
    p.add_argument("--data", type=existing_dir, help="the exact copy (cifar-10-batches-py/ of "
                   "the test images, and training images unless --train-data; default: "
                   f"${runtime.DATA_ENV} or data/)")
    p.add_argument("--train-data", type=existing_dir, help="another training copy (e.g. the "
                   "JPEG copy decoded), mixed with --data's training images")
    config_option(p, "allow_partial", help="accept a copy that fails the official checksums "
                  f"(the exact subset); also {runtime.ALLOW_PARTIAL_ENV}=1")
    p.add_argument("--results", type=existing_dir, help="where the GPU's folder goes (default: "
                   "results/; with --allow-cpu, runs/)")
    p.add_argument("--fresh", action="store_true",
                   help="overwrite the folder of an earlier check on this GPU")
    p.add_argument("--allow-cpu", action="store_true",
                   help="without CUDA: a dry run of the whole pipeline on the CPU, tiny")
    p.set_defaults(func=cmd_gpu_check, preset=None, model=None)


SUBCOMMANDS = (_add_data, _add_train, _add_evaluate, _add_sample, _add_export, _add_bench,
               _add_report, _add_results, _add_gpu_check)  # in the order --help lists them


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m vae_tutorial", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = lambda message, category, *rest, **kw: f"warning: {message}\n"
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EXPECTED as err:
        if getattr(args, "debug", False):
            raise
        text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"error: {text or type(err).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
