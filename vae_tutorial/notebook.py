"""What the notebooks' cells need, and nothing else imports: the fast-mode switch, a provenance
line, the trained model of the full run, and a cache for the minutes-long measurements."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from types import ModuleType
from typing import Callable, TypeVar

import torch

from . import runtime
from .config import TrainConfig, preset, run_name
from .data import PartialDatasetWarning

FAST = runtime.fast_mode()  # fast mode: a few hundred images, seconds per notebook
CACHE = "notebook-cache"  # under runs/: the results of cached(), a file each
T = TypeVar("T")


def setup(seed: int = 0) -> dict:
    """Seed torch, quiet the expected partial-copy warning, return the run's provenance."""
    torch.manual_seed(seed)
    warnings.filterwarnings("ignore", category=PartialDatasetWarning)
    return provenance()


def provenance(config: TrainConfig | None = None) -> dict:
    """Versions, device, data copies and mode of this session, as a dict (printed by notebooks)."""
    import torchvision

    cfg = config or preset()
    device = runtime.pick_device()
    return {
        "torch": torch.__version__.split("+")[0],
        "torchvision": torchvision.__version__.split("+")[0],
        "device": device.type,
        "hardware": runtime.hardware(device),
        "train data": Path(cfg.data).name,
        "test data": Path(cfg.test_data).name,
        "partial data allowed": cfg.allow_partial,
        "mode": f"fast ({runtime.FAST_ENV}=1)" if runtime.fast_mode() else "full",
        "preset": cfg.preset,
    }


# the training fields train_command repeats where a run differs from its preset
RECIPE = ("valid_size", "batch_size", "lr", "kl_warmup_epochs", "epochs", "time_limit", "hflip")


def train_command(cfg: TrainConfig) -> str:
    """The command line that trains (or finishes) the run of `cfg`: its preset and model, and
    where its data roots, validation split or RECIPE fields differ from the preset's, those
    too (data folders as /path/to/NAME)."""
    base = preset(cfg.preset, kind=cfg.model.kind)
    args = [f"--preset {cfg.preset}"]
    if cfg.model.kind != "conv":
        args.append(f"--model {cfg.model.kind}")
    if Path(cfg.data).name != Path(base.data).name:
        args.append(f"--data /path/to/{Path(cfg.data).name}")
    if cfg.extra_data:
        args.append(f"--set extra_data=/path/to/{Path(cfg.extra_data).name}")
    fields = ("extra_repeats",) * bool(cfg.extra_data) + RECIPE
    for field in fields:
        if getattr(cfg, field) != getattr(base, field):
            args.append(f"--set {field}={getattr(cfg, field)}")
    return f"python -m vae_tutorial train {' '.join(args)} --resume"


def load_run(config: TrainConfig | None = None):
    """The trained model of `config`'s run: (model in eval mode, history, checkpoint, source).

    Fast mode trains the tiny fast preset here (seconds). Otherwise nothing is trained in a
    notebook: the run's own checkpoint is loaded if there is one (finished or not; the source
    says which), else the half-precision weights committed under results/ for that preset,
    else those of the cpu preset. Without any of them the error names the command to run.
    """
    from . import checkpoint
    from .checkpoint import load_checkpoint, load_model
    from .train import train

    cfg = config or preset()
    path = checkpoint.path(cfg.out_dir)
    if runtime.fast_mode():
        train(cfg.replace(progress=False))
        source = f"trained here in fast mode ({cfg.out_dir})"
    elif path.exists():
        ckpt = load_checkpoint(path)
        done = ckpt["epoch"] >= ckpt["config"]["epochs"] or (
            ckpt["history"] and ckpt["history"][-1].get("partial"))
        source = f"your run {runtime.shown(path)}" + ("" if done else f", interrupted after epoch "
                                        f"{ckpt['epoch']}: finish it with `{train_command(cfg)}`")
    else:
        candidates = [runtime.results_dir() / run_name(cfg.model.kind, name) / "model-fp16.pt"
                      for name in dict.fromkeys((cfg.preset, "cpu"))]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise FileNotFoundError(f"no run of the {cfg.preset} preset in {cfg.out_dir} and no "
                                    f"committed weights; train it with `{train_command(cfg)}`")
        source = f"committed weights {path.relative_to(runtime.checkout_dir())}"
    model, ckpt = load_model(path)
    return model, ckpt["history"], ckpt, source


def digest(*parts) -> str:
    """A short hash of weights (a module's state), tensors, source files (a module object) and
    anything else by its repr: the key of a cached result."""
    h = hashlib.sha256()

    def tensor(t: torch.Tensor):
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())

    for part in parts:
        if isinstance(part, torch.nn.Module):
            for name, value in part.state_dict().items():
                h.update(name.encode())
                tensor(value)
        elif isinstance(part, torch.Tensor):
            tensor(part)
        elif isinstance(part, ModuleType):
            h.update(Path(part.__file__).read_bytes())
        else:
            h.update(repr(part).encode())
    return h.hexdigest()[:16]


def cached(name: str, compute: Callable[[], T], *key) -> T:
    """compute(), or the result of an earlier call with the same name and key, kept in
    runs/notebook-cache/: re-running a notebook repeats none of its minutes-long measurements.
    The key lists what the result depends on: the weights, the images and the settings; the code
    that computes bounds and analyses (the modules below) is added, so a change to it computes the
    result again."""
    from . import analysis, evaluate, hvae, hvae_analysis, likelihoods, losses, model
    from .checkpoint import save_atomic

    code = (analysis, evaluate, hvae, hvae_analysis, likelihoods, losses, model)
    path = runtime.runs_dir() / CACHE / f"{name}-{digest(*key, *code)}.pt"
    if path.exists():
        print(f"(computed earlier on this machine and kept in {runtime.shown(path)}; delete it "
              "to compute again)")
        return torch.load(path, weights_only=False)
    value = compute()
    save_atomic(value, path)  # an interrupted save leaves no half-written result behind
    return value


def step_table(model_config, images: torch.Tensor, labels: torch.Tensor, device: torch.device):
    """bench.step_table in this session's mode, its timings kept per machine (cached): the
    table of notebook 5 and appendix A2, measured once and shown by both."""
    from . import adamw, bench, measure, precision, train

    def keep(timings):
        return cached("step-table", timings, model_config, images, labels, FAST,
                      runtime.hardware(device), torch.__version__,
                      bench, measure, train, adamw, precision)

    return bench.step_table(model_config, images, labels, device, fast=FAST, keep=keep)
