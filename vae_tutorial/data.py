"""CIFAR-10 as one uint8 tensor on the device, and a batch iterator over it.

`load_cifar10` reads the standard `cifar-10-batches-py` layout through
`torchvision.datasets.CIFAR10`, so the official archive is downloaded and checksum-verified.
A shortened copy (such as the project's bit-exact subset) loads only on explicit opt-in.
`CifarLoader` keeps a whole split on the target device and slices batches with a seeded,
device-side permutation: no DataLoader, no PIL, no per-image Python on the hot path.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torchvision.datasets import CIFAR10

__all__ = [
    "DatasetError",
    "PartialDatasetWarning",
    "default_root",
    "env_flag",
    "load_cifar10",
    "CifarLoader",
    "CLASSES",
]

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
FOLDER = CIFAR10.base_folder  # "cifar-10-batches-py"
DOWNLOAD_HELP = (
    "To download the official archive (163 MB, checksum-verified) run\n"
    "    python -m vae_tutorial data --download\n"
    "or point VAE_TUTORIAL_DATA (or --data) at a folder that holds {folder}/."
)


class DatasetError(RuntimeError):
    """The CIFAR-10 files are missing, corrupt or not the official ones."""


class PartialDatasetWarning(UserWarning):
    """A shortened, unverified copy of CIFAR-10 was loaded on request."""


def env_flag(name: str) -> bool:
    """True when the environment variable `name` is set to 1, true, yes or on."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def checkout_dir() -> Path:
    """The project checkout (where data/, runs/ and figures/ live), or the working directory."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def default_root() -> Path:
    """`$VAE_TUTORIAL_DATA`, else `data/` in the project checkout, else `./data`."""
    if os.environ.get("VAE_TUTORIAL_DATA"):
        return Path(os.environ["VAE_TUTORIAL_DATA"]).expanduser()
    return checkout_dir() / "data"


class _CIFAR10(CIFAR10):
    """torchvision's CIFAR10 whose checksum test can be waived for a shortened copy."""

    def __init__(self, root, train, download, verify):
        self._verify = verify
        super().__init__(str(root), train=train, download=download)

    def _check_integrity(self) -> bool:
        if self._verify:
            return super()._check_integrity()
        files = self.train_list + self.test_list
        return all((Path(self.root) / FOLDER / name).is_file() for name, _ in files)


def _is_official(root: Path) -> bool:
    """Whether every batch file matches the md5 of the official archive."""
    probe = CIFAR10.__new__(CIFAR10)
    probe.root = str(root)
    return probe._check_integrity()


def load_cifar10(
    root: str | os.PathLike | None = None,
    split: str = "train",
    *,
    download: bool = False,
    allow_partial: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a CIFAR-10 split as (images uint8 (N, 3, 32, 32), labels int64 (N,)).

    root: the folder holding `cifar-10-batches-py/` (default: `default_root()`).
    download: fetch and verify the official archive into root if it is not there.
    allow_partial: accept a copy whose batches fail the official checksums (a subset), with a
        warning; None reads `VAE_TUTORIAL_ALLOW_PARTIAL` from the environment.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser() if root is not None else default_root()
    if allow_partial is None:
        allow_partial = env_flag("VAE_TUTORIAL_ALLOW_PARTIAL")
    where = root.resolve() / FOLDER
    help_text = DOWNLOAD_HELP.format(folder=FOLDER)

    official = _is_official(root)
    if not official and not download:
        missing = [n for n, _ in CIFAR10.train_list + CIFAR10.test_list + [(
            CIFAR10.meta["filename"], None)] if not (where / n).is_file()]
        if missing:
            raise DatasetError(
                f"CIFAR-10 not found: {where} is missing {', '.join(missing)}.\n{help_text}")
        if not allow_partial:
            raise DatasetError(
                f"CIFAR-10 at {where} does not match the official checksums: it is a partial "
                "or modified copy. If that is intended (for instance the bit-exact subset used "
                "by the tests), pass allow_partial=True, --allow-partial or set "
                f"VAE_TUTORIAL_ALLOW_PARTIAL=1. Otherwise delete it and download again.\n"
                f"{help_text}")
    try:
        ds = _CIFAR10(root, train=(split == "train"), download=download,
                      verify=official or download)
    except DatasetError:
        raise
    except Exception as err:  # torchvision raises RuntimeError, pickle/OSError on bad files
        raise DatasetError(
            f"Could not read CIFAR-10 {split} split from {where}: {type(err).__name__}: {err}\n"
            f"The files may be truncated or corrupt. {help_text}") from None

    data = np.asarray(ds.data)
    if data.ndim != 4 or data.shape[1:] != (32, 32, 3) or len(data) != len(ds.targets):
        raise DatasetError(f"CIFAR-10 {split} split at {where} has unexpected shape "
                           f"{data.shape}; expected (N, 32, 32, 3).")
    if not official and not download:
        warnings.warn(f"Loaded a partial CIFAR-10 copy from {where}: {len(data)} {split} "
                      "images, not verified against the official checksums.",
                      PartialDatasetWarning, stacklevel=2)
    images = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return images, labels


class CifarLoader:
    """Batches of float images in [0, 1] sliced from a uint8 tensor kept on `device`.

    Every epoch visits each image exactly once, in the order of a permutation drawn on the
    device from (seed, epoch), so epoch e is the same whether or not the run was resumed.
    The short last batch is kept unless drop_last. With `rank`/`world_size` each process
    takes a disjoint 1/world_size of every global batch (for DistributedDataParallel).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None, *,
                 batch_size: int = 128, device: str | torch.device = "cpu",
                 shuffle: bool = True, drop_last: bool = False, seed: int = 0,
                 limit: int | None = None, channels_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"batch_size must be a positive multiple of world_size "
                             f"({world_size}), got {batch_size}")
        if limit is not None:
            images = images[:limit]
            labels = labels[:limit] if labels is not None else None
        self.device = torch.device(device)
        self.images = images.to(self.device)  # (N, 3, 32, 32) uint8, resident
        self.labels = labels.to(self.device) if labels is not None else None
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.epoch, self.channels_last = seed, 0, channels_last
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        n, b = len(self.images), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """Choose the permutation of the next iteration (it also advances after each one)."""
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """The visiting order of the current epoch, a device tensor of indices."""
        n = len(self.images)
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(n, generator=gen, device=self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        order = self.order()
        self.epoch += 1
        b = self.batch_size
        for start in range(0, len(self.images), b):
            idx = order[start:start + b]
            if len(idx) < b and self.drop_last:
                break
            if self.world_size > 1:
                idx = idx.tensor_split(self.world_size)[self.rank]
            x = self.images[idx].float().div_(255.0)  # (B, 3, 32, 32) in [0, 1]
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, (self.labels[idx] if self.labels is not None else None)
