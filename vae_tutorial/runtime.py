"""Where and on what the tutorial runs: environment switches, folders, device, precision.

Every environment variable the package reads is named here, once (the *_ENV constants), and
read here alone. Everything else asks these functions.
"""

from __future__ import annotations

import logging
import os
import platform
import re
from pathlib import Path

import torch

DATA_ENV = "VAE_TUTORIAL_DATA"  # folder holding cifar-10-batches-py/ (default: data/)
ALLOW_PARTIAL_ENV = "VAE_TUTORIAL_ALLOW_PARTIAL"  # 1: accept a copy failing the official md5s
FAST_ENV = "VAE_TUTORIAL_FAST"  # 1: fast mode, a few hundred images and a tiny network
PRESET_ENV = "VAE_TUTORIAL_PRESET"  # the preset notebooks show (default: gpu on CUDA, else cpu)
FIGURES_ENV = "VAE_TUTORIAL_FIGURES"  # where figures go (default: figures/, fast: runs/...)
RUNS_ENV = "VAE_TUTORIAL_RUNS"  # the folder of training runs (default: runs/ in the checkout)
PRECISION_ENV = "VAE_TUTORIAL_PRECISION"  # auto (measured, the default), fp32 or bf16 (if eligible)
PRECISION_CACHE_ENV = "VAE_TUTORIAL_PRECISION_CACHE"  # the precision probe's cache file
XDG_CACHE_ENV = "XDG_CACHE_HOME"  # the user's cache folder (default: ~/.cache)
PRECISIONS = ("auto", "fp32", "bf16")  # the values PRECISION_ENV accepts
ADAMW_ENV = "VAE_TUTORIAL_ADAMW"  # auto (measured on a CPU, the default), fused or loop
ADAMWS = ("auto", "fused", "loop")  # the values ADAMW_ENV accepts
TRUE = {"1", "true", "yes", "on"}  # values that switch a flag on
FALSE = {"0", "false", "no", "off"}  # values that switch it off
# set by torchrun for each process, read by world(); and one that cuBLAS reads for determinism
WORLD_SIZE_ENV, RANK_ENV, LOCAL_RANK_ENV = "WORLD_SIZE", "RANK", "LOCAL_RANK"
CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUE


def fast_mode() -> bool:
    """Fast mode (FAST_ENV=1): notebooks and the CLI use a few hundred images, a tiny network."""
    return _flag(FAST_ENV)


def allow_partial() -> bool:
    """ALLOW_PARTIAL_ENV=1: a copy that fails the official checksums may be loaded."""
    return _flag(ALLOW_PARTIAL_ENV)


# --- folders ----------------------------------------------------------------------------------

def checkout_dir() -> Path:
    """The project checkout (where data/, runs/ and figures/ live), or the working directory."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def shown(path: Path) -> Path:
    """`path` relative to the checkout where it lies inside it (no machine-specific prefix in
    what is printed or recorded), else as given."""
    return path.relative_to(checkout_dir()) if path.is_relative_to(checkout_dir()) else path


def quiet_cpp_extension() -> None:
    """Hide the one line torch.compile's C++ toolchain check prints for a CUDA build on a
    machine without CUDA (noise: compiling for the CPU works)."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def data_root() -> Path:
    """DATA_ENV's folder, else data/ in the checkout: the folder holding cifar-10-batches-py/."""
    env = os.environ.get(DATA_ENV, "").strip()
    return Path(env).expanduser().resolve() if env else checkout_dir() / "data"


def test_root(train_root: str | os.PathLike) -> Path:
    """The test split's root when none is given: DATA_ENV's folder if set, else train_root.

    So `--data` alone trains and tests on one copy, while an offline machine that points
    DATA_ENV at the exact subset keeps its likelihoods on the exact images."""
    env = os.environ.get(DATA_ENV, "").strip()
    return Path(env).expanduser().resolve() if env else Path(train_root)


def runs_dir() -> Path:
    """RUNS_ENV's folder, else runs/ in the checkout: checkpoints and histories of training runs
    (not committed)."""
    env = os.environ.get(RUNS_ENV, "").strip()
    return Path(env).expanduser().resolve() if env else checkout_dir() / "runs"


def results_dir() -> Path:
    """results/ in the checkout: the committed measurements (histories, evaluations, weights)."""
    return checkout_dir() / "results"


def figures_dir() -> Path:
    """FIGURES_ENV's folder, else figures/ of the checkout; in fast mode runs/figures-fast/,
    so that tests and smoke runs never overwrite the committed figures of the full run."""
    env = os.environ.get(FIGURES_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return runs_dir() / "figures-fast" if fast_mode() else checkout_dir() / "figures"


def preset_name() -> str:
    """The preset that notebooks show: fast in fast mode, else PRESET_ENV's, else gpu on a CUDA
    machine and cpu elsewhere."""
    if fast_mode():
        return "fast"
    return os.environ.get(PRESET_ENV, "").strip() or device_preset(pick_device())


# --- device and precision -----------------------------------------------------------------------

def world() -> tuple[int, int]:
    """(world size, local rank) of this process: (1, 0) unless launched by torchrun."""
    return (int(os.environ.get(WORLD_SIZE_ENV, "1")),
            int(os.environ.get(LOCAL_RANK_ENV, os.environ.get(RANK_ENV, "0"))))


def use_deterministic_algorithms() -> None:
    """Bit-reproducible kernels (slower on a GPU), cuBLAS's workspace setting included."""
    os.environ.setdefault(CUBLAS_ENV, ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def channels_last_default(device: torch.device) -> bool:
    """NHWC memory layout on CUDA (tensor-core convolutions); measured no faster on CPUs."""
    return device.type == "cuda"


def device_preset(device: torch.device) -> str:
    """The preset whose architecture suits the device: gpu on CUDA, cpu elsewhere."""
    return "gpu" if device.type == "cuda" else "cpu"


def pick_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu for "auto"; otherwise the named device, checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a torch device; use auto, cpu, cuda, cuda:N "
                         "or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here; "
                         "use --device cpu or auto")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None)
                                     and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r} requested but MPS is not available here")
    return device


def _cpuinfo(key: str) -> str:
    """The first value of `key` in /proc/cpuinfo (Linux), else ''."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    m = re.search(rf"^{key}\s*:(.*)$", text, re.M)
    return m.group(1).strip() if m else ""


def cpu_identity() -> dict:
    """What decides how kernels round on this CPU beyond torch's capability level: vendor,
    family, model, stepping and name (two CPUs with the same flags can differ, e.g. an Intel and
    an AMD with AVX512-BF16), with torch's version and capability."""
    keys = ("vendor_id", "cpu family", "model", "stepping", "model name")
    return {"cpu": {k: _cpuinfo(k) for k in keys} | {"machine": platform.machine()},
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports in /proc/cpuinfo (empty elsewhere)."""
    return set((_cpuinfo("flags") or _cpuinfo("Features")).split())


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively: AMX or AVX512-BF16 on x86, BF16 on Arm (as
    Linux reports them). With plain AVX512 oneDNN emulates bf16, slower than fp32."""
    return bool({"amx_bf16", "avx512_bf16", "bf16"} & cpu_flags())


def cuda_bf16_native() -> bool:
    """Whether this GPU computes bf16 natively (Ampere and later), not by emulation."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the argument
        return torch.cuda.is_bf16_supported()


def precision_override() -> str:
    """PRECISION_ENV: "auto" (unset: the probe decides on a CPU), "fp32" or "bf16" (where
    eligible); anything else is an error naming the choices."""
    value = os.environ.get(PRECISION_ENV, "").strip().lower() or "auto"
    if value not in PRECISIONS:
        raise ValueError(f"{PRECISION_ENV}={value!r}: expected one of {', '.join(PRECISIONS)}")
    return value


def adamw_override() -> str:
    """ADAMW_ENV: "auto" (unset: a probe decides on a CPU), "fused" or "loop"; anything else
    is an error naming the choices."""
    value = os.environ.get(ADAMW_ENV, "").strip().lower() or "auto"
    if value not in ADAMWS:
        raise ValueError(f"{ADAMW_ENV}={value!r}: expected one of {', '.join(ADAMWS)}")
    return value


def precision_cache() -> Path:
    """PRECISION_CACHE_ENV's file, else vae-tutorial/precision.json in the user's cache folder
    (XDG_CACHE_ENV, else ~/.cache): the precision probe's decisions, per CPU and torch."""
    env = os.environ.get(PRECISION_CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get(XDG_CACHE_ENV, "").strip() or Path.home() / ".cache"
    return Path(base).expanduser() / "vae-tutorial" / "precision.json"


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform reports."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def hardware(device: torch.device | None = None) -> str:
    """A short description of the machine: the GPU's name, or the CPU's cores and native bf16."""
    device = device or pick_device()
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    bf16 = ", native bf16" if cpu_bf16_native() else ""
    threads, cores = torch.get_num_threads(), os.cpu_count()
    used = f"{cores} cores" if threads >= (cores or 0) else f"{threads} of {cores} cores"
    return f"CPU {cpu_name()} ({platform.machine()}), {used}{bf16}"
