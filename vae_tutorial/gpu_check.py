"""`python -m vae_tutorial gpu-check`: what a short-lived GPU machine can measure, in one call.

Within a wall-clock budget (--minutes, default 8), on CUDA, in this order:
  train conv      a `gpu`-preset ConvVAE run, its time limit aimed at its share of the clock
  evaluate conv   ELBO and IWAE k=100 on the 1,017 exact test images (fewer samples, then fewer
                  images, only where the measured speed says they cannot finish in time)
  train hvae      the same for the hierarchical VAE
  evaluate hvae
  bench           `python -m vae_tutorial bench --compile` (every row), in its own process,
                  killed if it outruns its share; last, so that it also gets the time the
                  evaluations left (compiling three models is the least predictable part)
Each phase's share is re-split from the time left as it starts, so none exceeds the budget.
The results go to one folder named by the GPU, results/gpu-<name>/, as the files `report`
reads for any run, each written atomically as its phase ends (Ctrl-C keeps the finished ones):
  gpu-check.json                      the plan, each phase's time and status, the runs
  bench.json                          as `bench --json` writes it
  conv-gpu/history.json, eval.json    as `train` and `evaluate` write them
  hvae-gpu/history.json, eval.json
Without CUDA it refuses (exit status 2) unless --allow-cpu: a dry run of the same pipeline on
the CPU with the fast preset and a tiny bench (no torch.compile), into runs/dry-run-cpu-<CPU>/.

It imports nothing beyond torch, torchvision, numpy and tqdm (no Jupyter), so it runs as
`python -m vae_tutorial` from a copy of the repository on a machine without the notebooks' tools.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from . import runtime
from .config import preset, run_name
from .data import CifarLoader, PartialDatasetWarning, load_cifar10
from .evaluate import evaluate
from .model import count_parameters
from .report import GPU_MANIFEST as MANIFEST

SAMPLES = 100  # IWAE samples per test image
EVAL_BATCH = 50  # test images per IWAE batch (as `evaluate`'s default)
SAFETY = 0.85  # fraction of a phase's remaining time an evaluation plans to fill
# The evaluation's probes, in images: the first pays for first calls (kernels, autotuning), the
# second times two images warm, the third a whole batch (a GPU is only busy with one)
PROBES = (2, 2, EVAL_BATCH)


class BudgetError(ValueError):
    """The budget cannot hold every phase."""


@dataclass(frozen=True)
class Phase:
    """One step of the check: its weight in the split, and the least time it can work with."""

    name: str
    weight: float  # share of the budget, relative to the other phases
    minimum: float  # seconds


@dataclass(frozen=True)
class Mode:
    """What the check runs: the GPU's, or the CPU dry run's."""

    phases: tuple[Phase, ...]
    reserve: tuple[float, float]  # seconds held back: max(fixed, fraction of the budget)
    preset: str  # both trainings' preset
    bench_args: tuple[str, ...]  # sizes of the bench


# On the GPU: the bench compiles three models' training steps (a minute or more each on a fresh
# machine), so it gets half, and the trainings what is left. The reserve covers each phase's
# overshoot of its share (the last epoch's evaluation and checkpoint, killing the bench) and the
# final writes; Python's and CUDA's start-up count against the budget itself.
GPU = Mode(phases=(Phase("train conv", 0.15, 30.0), Phase("evaluate conv", 0.1, 10.0),
                   Phase("train hvae", 0.15, 30.0), Phase("evaluate hvae", 0.1, 10.0),
                   Phase("bench", 0.5, 60.0)),
           reserve=(30.0, 0.06), preset="gpu",
           bench_args=("--preset", "gpu", "--steps", "20", "--repeats", "5",
                       "--iwae-images", "100", "--ks", "100,1000", "--compile"))
# The CPU dry run: the same pipeline at sizes a test can afford (the bench still times every
# model's architecture of the cpu preset, one step each; torch.compile would take minutes).
DRY = Mode(phases=(Phase("train conv", 0.1, 2.0), Phase("evaluate conv", 0.15, 2.0),
                   Phase("train hvae", 0.1, 2.0), Phase("evaluate hvae", 0.15, 2.0),
                   Phase("bench", 0.5, 5.0)),
           reserve=(3.0, 0.05), preset="fast",
           bench_args=("--steps", "1", "--repeats", "1", "--iwae-images", "2", "--ks", "2",
                       "--batch-size", "8"))


# --- the budget -------------------------------------------------------------------------------

def reserve_seconds(seconds: float, reserve: tuple[float, float]) -> float:
    """The seconds of a budget held back from every phase: max(fixed, fraction * budget)."""
    fixed, fraction = reserve
    return max(fixed, fraction * seconds)


def shares(seconds: float, phases) -> dict[str, float]:
    """`seconds` split among phases in proportion to their weights."""
    total = sum(p.weight for p in phases)
    return {p.name: seconds * p.weight / total for p in phases}


def split_budget(minutes: float, mode: Mode = GPU) -> dict[str, float]:
    """Seconds per phase for a budget of `minutes`, after the reserve: they sum to at most the
    budget, each is at least its phase's minimum, else BudgetError says the least budget."""
    seconds = 60 * minutes
    split = shares(seconds - reserve_seconds(seconds, mode.reserve), mode.phases)
    short = [p for p in mode.phases if not split[p.name] >= p.minimum - 1e-9]
    if short:
        total = sum(p.weight for p in mode.phases)
        usable = max(p.minimum * total / p.weight for p in mode.phases)
        fixed, fraction = mode.reserve
        need = max(usable + fixed, usable / (1 - fraction)) / 60
        p = short[0]
        raise BudgetError(f"--minutes {minutes:g} is too short: {p.name} would get "
                          f"{max(split[p.name], 0):.1f} s of the {p.minimum:g} s it needs; "
                          f"give at least --minutes {math.ceil(need * 10) / 10:g}")
    return split


def plan_evaluation(rate: float, images: int, samples: int, seconds: float) -> tuple[int, int]:
    """(samples, images) that fit in `seconds` at `rate` images/s measured with `samples`:
    all of both if they fit, else fewer samples (the time goes as samples + 1, the ELBO's
    pass included), and fewer images only below one sample."""
    budget = SAFETY * seconds * rate  # images at `samples` that fit
    if budget >= images:
        return samples, images
    fewer = math.floor((samples + 1) * budget / images) - 1
    if fewer >= 1:
        return fewer, images
    return 1, max(1, min(images, math.floor(budget * (samples + 1) / 2)))


# --- names and files ----------------------------------------------------------------------------

def sanitize(name: str) -> str:
    """A device's name as a folder name: lower case, each run of other characters one '-'."""
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return text[:60].rstrip("-") or "unknown"


def folder_name(device: torch.device) -> str:
    """The check's folder: gpu-<the GPU's name> on CUDA, dry-run-cpu-<the CPU's> on a CPU."""
    if device.type == "cuda":
        return "gpu-" + sanitize(torch.cuda.get_device_name(device))
    cpu = runtime._cpuinfo("model name") or platform.processor() or platform.machine()
    return "dry-run-cpu-" + sanitize(cpu)


def process_age() -> float:
    """Seconds since this Python process started (Linux; 0 elsewhere): the budget counts the
    interpreter's and torch's start-up too."""
    try:
        ticks = float(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def write_json(path: Path, obj) -> None:
    """Write JSON atomically: a temporary file in the same folder, renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _scratch() -> tempfile.TemporaryDirectory:
    """Where checkpoints go while training: /dev/shm when it has room (a checkpoint every epoch
    costs little in memory), else the system's temporary folder. Removed at the end."""
    shm = Path("/dev/shm")
    roomy = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2**31
    return tempfile.TemporaryDirectory(prefix="vae-gpu-check-", dir=shm if roomy else None)


# --- the phases ---------------------------------------------------------------------------------

def run_bench(bench_args, roots: dict, device, seconds: float, scratch: Path,
              out: Path) -> tuple[str, str | None]:
    """The bench in its own process (killed with its children at `seconds`), into bench.json;
    (status, note)."""
    flags = ["--device", str(device), *bench_args] + (
        ["--allow-partial"] if roots["allow_partial"] else [])
    cmd = [sys.executable, "-m", "vae_tutorial", "bench", *flags, "--data", roots["train"],
           "--test-data", roots["test"], "--json", str(scratch / "bench.json")]
    package = str(Path(__file__).resolve().parent.parent)  # importable without pip install
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)  # its own process group
    try:
        proc.wait(timeout=seconds)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as stop:
        _kill_group(proc)
        if isinstance(stop, KeyboardInterrupt):
            raise
        return "timed out", f"killed after {seconds:.0f} s, before it wrote bench.json"
    if proc.returncode != 0:
        return "failed", f"bench exited with status {proc.returncode}"
    result = json.loads((scratch / "bench.json").read_text())
    result["command"] = "python -m vae_tutorial " + shlex.join(  # as one would type it
        ["bench", *flags, "--data", _shown(roots["train"]), "--test-data",
         _shown(roots["test"]), "--json", _shown(out / "bench.json")])
    write_json(out / "bench.json", result)
    return "done", None


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill a process started with start_new_session and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (AttributeError, ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def train_run(kind: str, mode: Mode, roots: dict, device, seconds: float, scratch: Path):
    """A time-limited run whose time limit is re-aimed after each epoch at the end of its
    `seconds` of wall clock (the epochs' evaluations and checkpoints included). Returns the
    trainer's Run (history, model) and a summary for the manifest."""
    from .train import StopTraining, train

    start = time.perf_counter()
    end = start + seconds
    extra = {"extra_data": roots["test"]} if roots["train"] != roots["test"] else {}
    cfg = preset(mode.preset, kind=kind, data=roots["train"], test_data=roots["test"],
                 allow_partial=roots["allow_partial"], device=str(device), progress=False,
                 out_dir=str(scratch / run_name(kind, mode.preset)), time_limit=seconds / 60,
                 **extra)
    clock = {}  # when setup ended, when progress was last printed; and the run

    def reaim(run) -> None:
        """After setup, and after each epoch: aim the time limit at the end of `seconds`."""
        now = time.perf_counter()
        if not clock:  # until an epoch has shown what its evaluation and checkpoint cost,
            clock.update(first=now, printed=now, run=run)  # aim at 80% of what is left
            run.cfg = cfg.replace(time_limit=max(0.8 * (end - now), 1.0) / 60)
            return
        if now >= end:
            raise StopTraining
        train_s, epochs = run.pos.seconds, run.pos.epoch
        overhead = max(0.0, (now - clock["first"]) - train_s) / epochs  # evaluation, saving
        per_epoch = train_s / epochs
        left = end - now - overhead  # the last epoch's evaluation and checkpoint come after it
        limit = train_s + left * per_epoch / (per_epoch + overhead)
        if limit <= train_s:
            raise StopTraining
        run.cfg = run.cfg.replace(time_limit=limit / 60)
        if now - clock["printed"] >= 30:
            print(f"  {kind}: epoch {epochs}, {now - start:.0f} of {seconds:.0f} s", flush=True)
            clock["printed"] = now

    train(cfg, hook=reaim)
    run = clock["run"]
    n = len(run.loader.images)
    data = Path(cfg.data).name + (f" + {Path(cfg.extra_data).name}" if cfg.extra_data else "")
    held = f", {cfg.valid_size:,} exact ones held out for validation" if cfg.valid_size else ""
    summary = {"folder": run_name(kind, mode.preset), "model": kind, "preset": mode.preset,
               "parameters": count_parameters(run.model),
               "training_data": f"{data}: {n:,} images{held}"
                                + (", mirrored at random" if cfg.hflip else ""),
               "epochs": run.pos.epoch, "steps": run.pos.step,
               "training_seconds": round(run.pos.seconds, 2),
               "wall_seconds": round(time.perf_counter() - start, 2),
               "time_limit_minutes": round(run.cfg.time_limit, 4),
               # the KL weight of the last step: below beta, the clock stopped the run inside
               # its KL warm-up (counted in epochs), and its bound is that of a model not yet
               # trained on the ELBO it is scored with
               "final_kl_weight": run.history[-1]["kl_weight"] if run.history else None,
               "beta": cfg.beta}
    return run, summary


def warmup_note(summary: dict) -> str | None:
    """What the training phase's record says when the clock ended it inside the KL warm-up."""
    w, beta = summary.get("final_kl_weight"), summary.get("beta", 1.0)
    if w is None or w >= beta - 1e-9:
        return None
    return (f"stopped inside the KL warm-up (KL weight {w:.2f} of {beta:g}, after "
            f"{summary['epochs']} epochs): more minutes, or a shorter kl_warmup_epochs, "
            "give a model trained on the ELBO it is scored with")


def _until(batches, end: float):
    """The batches, until the clock passes `end`."""
    for batch in batches:
        if time.perf_counter() >= end:
            return
        yield batch


def evaluate_run(model, images: torch.Tensor, test_root: str, device, seconds: float) -> dict:
    """ELBO and IWAE (k=SAMPLES) on `images`, sized by a measured batch to end within
    `seconds`; the eval.json of `evaluate`, with what was asked and what was cut, and why."""
    start = time.perf_counter()
    end = start + seconds
    rate = 0.0  # images/s at k=SAMPLES: the best of the probes, each run only if affordable
    for size in PROBES:
        left = end - time.perf_counter()
        if rate and (len(images) / rate <= SAFETY * left or size / rate > 0.2 * left):
            break  # the whole evaluation fits already, or this probe would not
        probe = [(images[:size].to(device).float().div(255), None)]
        t0 = time.perf_counter()
        evaluate(model, probe, num_samples=SAMPLES)  # ends with a host copy: synced
        rate = max(rate, size / (time.perf_counter() - t0))
    samples, n = plan_evaluation(rate, len(images), SAMPLES, end - time.perf_counter())
    torch.manual_seed(0)
    t0 = time.perf_counter()
    batches = CifarLoader(images[:n], batch_size=EVAL_BATCH, device=device, shuffle=False)
    ev = evaluate(model, _until(batches, end), num_samples=samples)
    spent = time.perf_counter() - t0
    if ev.images == 0:
        raise RuntimeError(f"no test image evaluated in the {seconds:.0f} s of this phase")
    notes = []
    if (samples, n) != (SAMPLES, len(images)):
        notes.append(f"k={samples} on {n:,} images, not k={SAMPLES} on {len(images):,}: at the "
                     f"measured {rate:.1f} images/s (k={SAMPLES}) those would not finish in "
                     f"the {max(0.0, end - t0):.0f} s left")
    if ev.images < n:
        notes.append(f"{ev.images:,} of those {n:,} images: the time ran out")
    return {"checkpoint": None, "split": "test", "data": Path(test_root).name,
            "device": str(device), "hardware": runtime.hardware(device),
            "torch": torch.__version__, "seed": 0, "seconds": round(spent, 2),
            **dataclasses.asdict(ev), "requested_samples": SAMPLES,
            "requested_images": len(images), "probe_images_per_second": round(rate, 2),
            "note": "; ".join(notes) or None}


# --- the command --------------------------------------------------------------------------------

def _device(allow_cpu: bool) -> torch.device:
    """CUDA, or the CPU for a dry run; without either, one clear error."""
    if allow_cpu:
        return torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CUDA build without a driver warns: one line only
        available = torch.cuda.is_available()
    if not available:
        raise ValueError(f"gpu-check needs a CUDA GPU, and torch {torch.__version__} sees none "
                         "here (torch.cuda.is_available() is False): run it on a GPU machine, "
                         "or add --allow-cpu for a tiny dry run on the CPU")
    return torch.device("cuda")


def run_check(args, start: float | None = None) -> int:
    """The `gpu-check` command; args: minutes, data, train_data, allow_partial, results,
    fresh, allow_cpu. The budget counts from `start` (time.perf_counter(); default: now)."""
    start = time.perf_counter() if start is None else start
    device = _device(args.allow_cpu)
    mode = DRY if device.type == "cpu" else GPU
    plan = split_budget(args.minutes, mode)
    test_root = Path(args.data or runtime.data_root()).resolve()
    allow_partial = runtime.allow_partial() if args.allow_partial is None else args.allow_partial
    roots = {"test": str(test_root), "train": str(Path(args.train_data or test_root).resolve()),
             "allow_partial": allow_partial}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PartialDatasetWarning)
        test_x, _ = load_cifar10(roots["test"], "test", allow_partial=allow_partial)
        load_cifar10(roots["train"], "train", allow_partial=allow_partial)
    for w in {str(w.message) for w in caught}:
        print(f"warning: {w}", file=sys.stderr)
    parent = args.results or (runtime.results_dir() if device.type == "cuda"
                              else runtime.runs_dir())
    out = Path(parent) / folder_name(device)
    if (out / MANIFEST).exists() and not args.fresh:
        raise ValueError(f"{out} holds an earlier gpu-check: add --fresh to overwrite it, or "
                         "move it away")
    if args.fresh and out.is_dir():
        shutil.rmtree(out)

    budget = 60 * args.minutes
    deadline = start + budget - reserve_seconds(budget, mode.reserve)
    manifest = {"command": _command(args, roots),
                "hardware": runtime.hardware(device), "device": str(device),
                "torch": torch.__version__, "cuda": torch.version.cuda,
                "dry_run": device.type != "cuda", "budget_minutes": args.minutes,
                "reserve_seconds": round(reserve_seconds(budget, mode.reserve), 1),
                "plan": {k: round(v, 1) for k, v in plan.items()},
                "data": {"test": test_root.name, "train": Path(roots["train"]).name},
                "phases": [], "runs": [], "seconds": 0.0, "finished": False}
    print(f"gpu-check on {manifest['hardware']}, {args.minutes:g} min: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in plan.items())
          + f", reserve {manifest['reserve_seconds']:.0f} s; writing {_shown(out)}/", flush=True)

    def save():
        manifest["seconds"] = round(time.perf_counter() - start, 1)
        write_json(out / MANIFEST, manifest)

    save()
    models = {}
    with _scratch() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialDatasetWarning)  # said once, above
        scratch = Path(tmp)
        todo = list(mode.phases)
        record, t0 = {}, time.perf_counter()
        try:
            while todo:
                phase = todo.pop(0)
                share = shares(max(0.0, deadline - time.perf_counter()), [phase, *todo])
                seconds = share[phase.name]
                t0 = time.perf_counter()
                record = {"name": phase.name, "planned_seconds": round(seconds, 1)}
                manifest["phases"].append(record)
                record["status"], record["files"], record["note"] = _run_phase(
                    phase.name, mode, roots, device, seconds, scratch, out, test_x, models,
                    manifest)
                record["seconds"] = round(time.perf_counter() - t0, 1)
                save()
                left = start + budget - time.perf_counter()
                print(f"gpu-check: {phase.name}: {record['status']} in {record['seconds']:.0f} s"
                      f" (planned {seconds:.0f} s){'; ' + record['note'] if record['note'] else ''}"
                      f"; {left / 60:.1f} of {args.minutes:g} min left", flush=True)
        except KeyboardInterrupt:
            if record and "seconds" not in record:  # the phase it stopped, not a finished one
                record.update(status="interrupted", files=[], note="Ctrl-C",
                              seconds=round(time.perf_counter() - t0, 1))
            save()
            print(f"\ninterrupted: {_shown(out)}/ keeps the phases that finished",
                  file=sys.stderr)
            return 130
    manifest["finished"] = True
    save()
    done = [p for p in manifest["phases"] if p["status"] == "done"]
    print(f"gpu-check: {len(done)} of {len(manifest['phases'])} phases done in "
          f"{manifest['seconds'] / 60:.1f} min; {_shown(out)}/ holds them "
          "(then: python -m vae_tutorial report)", flush=True)
    return 0 if len(done) == len(manifest["phases"]) else 1


def _command(args, roots: dict) -> str:
    """The command line of this check, as one would type it."""
    argv = ["gpu-check", "--minutes", f"{args.minutes:g}", "--data", _shown(roots["test"])]
    if roots["train"] != roots["test"]:
        argv += ["--train-data", _shown(roots["train"])]
    argv += [flag for flag, on in (("--allow-partial", args.allow_partial),
                                   ("--allow-cpu", args.allow_cpu)) if on]
    return "python -m vae_tutorial " + shlex.join(argv)


def _run_phase(name, mode, roots, device, seconds, scratch, out, test_x, models,
               manifest) -> tuple[str, list[str], str | None]:
    """Run one phase: (status, files written, note). Its errors become its status, so that
    the phases after it still run."""
    action, _, kind = name.partition(" ")
    try:
        if seconds < 1:
            return "skipped", [], "no time left"
        if action == "bench":
            status, note = run_bench(mode.bench_args, roots, device, seconds, scratch, out)
            return status, ["bench.json"] if status == "done" else [], note
        folder = run_name(kind, mode.preset)
        if action == "train":
            run, summary = train_run(kind, mode, roots, device, seconds, scratch)
            if not run.history:
                return "failed", [], "no epoch finished in its time"
            write_json(out / folder / "history.json", run.history)
            models[kind] = run.model
            manifest["runs"].append(summary)
            return "done", [f"{folder}/history.json"], warmup_note(summary)
        if kind not in models:
            return "skipped", [], "its training did not finish"
        result = evaluate_run(models.pop(kind), test_x, roots["test"], device, seconds)
        write_json(out / folder / "eval.json", result)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return "done", [f"{folder}/eval.json"], result["note"]
    except (ValueError, OSError, RuntimeError) as err:  # the package's errors, CUDA's too
        return "failed", [], f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
