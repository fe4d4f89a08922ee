"""CIFAR-10 as one uint8 tensor on the device, and a batch iterator over it.

`load_cifar10` reads the standard `cifar-10-batches-py` layout; torchvision downloads the
official archive and checks every file's md5, so a copy is verified before it is used. A
shortened copy (such as the project's bit-exact subset) loads only on explicit opt-in.
`CifarLoader` keeps a whole split on the target device and slices batches with a seeded,
device-side permutation: no DataLoader, no PIL, no per-image Python on the hot path.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity

from . import runtime

__all__ = [
    "DatasetError",
    "PartialDatasetWarning",
    "load_cifar10",
    "is_official",
    "CifarLoader",
    "split_validation",
    "near_duplicates",
    "CLASSES",
    "FOLDER",
]

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
FOLDER = CIFAR10.base_folder  # "cifar-10-batches-py"
FILES = {"train": CIFAR10.train_list, "test": CIFAR10.test_list}  # [(name, official md5)]
META = CIFAR10.meta  # {"filename": "batches.meta", "key": ..., "md5": ...}
DOWNLOAD_HELP = (
    "To download the official archive (163 MB, checksum-verified) run "
    "`python -m vae_tutorial data --download`, "
    f"or point {runtime.DATA_ENV} (or --data) at a folder that holds {FOLDER}/."
)


class DatasetError(RuntimeError):
    """The CIFAR-10 files are missing, corrupt or not the official ones."""


class PartialDatasetWarning(UserWarning):
    """A shortened, unverified copy of CIFAR-10 was loaded on request."""


def is_official(root: str | os.PathLike) -> bool:
    """Whether every batch file under root matches the md5 of the official archive."""
    folder = Path(root) / FOLDER
    return all(check_integrity(str(folder / name), md5)
               for name, md5 in FILES["train"] + FILES["test"])


def _read_batches(folder: Path, split: str) -> tuple[np.ndarray, list]:
    """(uint8 (N, 3, 32, 32), labels) from the pickled batch files of one split."""
    if not check_integrity(str(folder / META["filename"]), META["md5"]):
        raise DatasetError(f"{folder / META['filename']} is missing or corrupt (its md5 is not "
                           f"the official one). {DOWNLOAD_HELP}")
    data, labels = [], []
    for name, _ in FILES[split]:
        try:
            with open(folder / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        except Exception as err:  # noqa: BLE001 - pickle, EOF, key, shape: all mean corrupt
            raise DatasetError(f"Could not read CIFAR-10 {split} split from {folder}: {name} "
                               f"is truncated or corrupt ({type(err).__name__}: "
                               f"{str(err)[:100]}). {DOWNLOAD_HELP}") from None
    return np.concatenate(data), labels


def load_cifar10(
    root: str | os.PathLike | None = None,
    split: str = "train",
    *,
    download: bool = False,
    allow_partial: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a CIFAR-10 split as (images uint8 (N, 3, 32, 32), labels int64 (N,)).

    root: the folder holding `cifar-10-batches-py/` (default: runtime.data_root()).
    download: fetch and verify the official archive into root (torchvision) if it is not there.
    allow_partial: accept a copy whose batches fail the official checksums (a subset), with a
        warning; None reads the environment's switch (runtime.allow_partial).
    """
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser() if root is not None else runtime.data_root()
    allow_partial = runtime.allow_partial() if allow_partial is None else allow_partial
    folder = root.resolve() / FOLDER
    official = is_official(root)
    if not official and download:
        try:
            CIFAR10(str(root), train=split == "train", download=True)  # downloads and verifies
        except Exception as err:  # noqa: BLE001 - network and archive errors alike
            raise DatasetError(f"Could not download CIFAR-10 into {root}: "
                               f"{type(err).__name__}: {err}") from None
        official = is_official(root)
    if not official:
        names = [n for n, _ in FILES["train"] + FILES["test"]] + [META["filename"]]
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DatasetError(
                f"CIFAR-10 not found: {folder} is missing {', '.join(missing)}. {DOWNLOAD_HELP}")
        if not allow_partial:
            raise DatasetError(
                f"CIFAR-10 at {folder} does not match the official checksums: it is a partial "
                "or modified copy. If that is intended (for instance the bit-exact subset used "
                "by the tests), pass allow_partial=True, --allow-partial or set "
                f"{runtime.ALLOW_PARTIAL_ENV}=1. Otherwise delete it and download again. "
                f"{DOWNLOAD_HELP}")
    data, labels = _read_batches(folder, split)
    if len(data) != len(labels):
        raise DatasetError(f"CIFAR-10 {split} split at {folder} has unexpected shape: "
                           f"{len(data)} images but {len(labels)} labels.")
    if not official:
        warnings.warn(f"Loaded a partial CIFAR-10 copy from {folder}: {len(data)} {split} "
                      "images, not verified against the official checksums.",
                      PartialDatasetWarning, stacklevel=2)
    return torch.from_numpy(data), torch.as_tensor(labels, dtype=torch.int64)


def split_validation(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) sorted indices of n images: a seeded draw of `size` for validation."""
    if not 0 < size < n:
        raise ValueError(f"valid_size {size} must be at least 1 and below the {n} training "
                         "images it is taken from; lower valid_size (or 0 for no validation)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[size:].sort().values, order[:size].sort().values


def near_duplicates(images: torch.Tensor, of: torch.Tensor, min_psnr: float = 20.0,
                    chunk: int = 4096) -> torch.Tensor:
    """(N,) bool: which of `images` is the nearest neighbour of an image in `of` with a PSNR
    above min_psnr, e.g. the JPEG re-encodings (26-35 dB) of held-out exact images."""
    ref = of.reshape(len(of), -1).float()  # (M, D)
    ref_sq = ref.pow(2).sum(1)
    best = torch.full((len(of),), float("inf"))
    arg = torch.zeros(len(of), dtype=torch.long)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].reshape(-1, ref.shape[1]).float()  # (C, D)
        d = x.pow(2).sum(1)[:, None] - 2 * x @ ref.T + ref_sq[None]  # (C, M) squared distances
        value, where = d.min(0)
        better = value < best
        best, arg = torch.where(better, value, best), torch.where(better, where + start, arg)
    mse = best.clamp_min(0) / ref.shape[1]
    psnr = 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))
    mask = torch.zeros(len(images), dtype=torch.bool)
    mask[arg[psnr > min_psnr]] = True
    return mask


class CifarLoader:
    """Batches of float images in [0, 1] sliced from a uint8 tensor kept on `device`.

    Every epoch visits each image exactly once, in the order of a permutation drawn on the
    device from (seed, epoch), so epoch e is the same whether or not the run was resumed.
    The short last batch is kept unless drop_last. With `rank`/`world_size` each process
    takes a disjoint 1/world_size of every global batch (for DistributedDataParallel). With
    hflip, a seeded half of each epoch's images are mirrored left-right (augmentation).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None, *,
                 batch_size: int = 128, device: str | torch.device = "cpu",
                 shuffle: bool = True, drop_last: bool = False, seed: int = 0,
                 limit: int | None = None, channels_last: bool = False,
                 rank: int = 0, world_size: int = 1, hflip: bool = False):
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
        self.seed, self.epoch, self.skip, self.channels_last = seed, 0, 0, channels_last
        self.rank, self.world_size, self.hflip = rank, world_size, hflip

    def __len__(self) -> int:
        n, b = len(self.images), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Choose the permutation of the next iteration (it also advances after each one), and
        start it after its first `skip` batches (to resume a run in the middle of an epoch)."""
        self.epoch, self.skip = epoch, skip

    def _generator(self, stream: int = 0) -> torch.Generator:
        """The epoch's generator: stream 0 draws the order, stream 1 the flips."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed * 1_000_003 + self.epoch + stream * 1_000_000_007)
        return gen

    def order(self) -> torch.Tensor:
        """The visiting order of the current epoch, a device tensor of indices."""
        n = len(self.images)
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        return torch.randperm(n, generator=self._generator(), device=self.device)

    def flips(self) -> torch.Tensor | None:
        """Which images of the current epoch are mirrored left-right (hflip), by position in
        the visiting order: drawn per epoch from (seed, epoch), like the order."""
        if not self.hflip:
            return None
        return torch.rand(len(self.images), generator=self._generator(1),
                          device=self.device) < 0.5

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        order, flips = self.order(), self.flips()
        self.epoch += 1
        b, skip, self.skip = self.batch_size, self.skip, 0
        for start in range(skip * b, len(self.images), b):
            idx = order[start:start + b]
            if len(idx) < b and self.drop_last:
                break
            if self.world_size > 1:
                idx = idx.tensor_split(self.world_size)[self.rank]
            x = self.images[idx].float().div_(255.0)  # (B, 3, 32, 32) in [0, 1]
            if flips is not None:
                mirror = flips[start:start + b]
                if self.world_size > 1:
                    mirror = mirror.tensor_split(self.world_size)[self.rank]
                x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, (self.labels[idx] if self.labels is not None else None)
