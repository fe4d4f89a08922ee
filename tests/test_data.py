"""CIFAR-10 loading (bit-exact subset, opt-in, error messages) and the device-side loader."""

import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vae_tutorial import runtime
from vae_tutorial.data import (
    FOLDER,
    CifarLoader,
    DatasetError,
    PartialDatasetWarning,
    load_cifar10,
)

N_TRAIN, N_TEST, PER_BATCH = 5085, 1017, 1017
FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
         "test_batch", "batches.meta"]


@pytest.fixture(autouse=True)
def _no_partial_env(monkeypatch):
    """No test here inherits an opt-in (or a data root) from the caller's environment."""
    monkeypatch.delenv(runtime.ALLOW_PARTIAL_ENV, raising=False)
    monkeypatch.delenv(runtime.DATA_ENV, raising=False)


@pytest.fixture(scope="module")
def subset_train(subset_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_cifar10(subset_root, "train", allow_partial=True)


def _raw_batch(root: Path, name: str) -> dict:
    with open(root / FOLDER / name, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _copy_subset(src: Path, dst: Path) -> Path:
    """A writable copy of the subset's batch folder under dst; returns dst."""
    (dst / FOLDER).mkdir(parents=True)
    for name in FILES:
        shutil.copyfile(src / FOLDER / name, dst / FOLDER / name)
    return dst


# --- load_cifar10 ------------------------------------------------------------------------------

def test_subset_counts_dtypes_and_classes(subset_train, subset_test):
    """5,085 train / 1,017 test images, uint8 (N, 3, 32, 32), int64 labels 0..9, all classes."""
    for (images, labels), n in ((subset_train, N_TRAIN), (subset_test, N_TEST)):
        assert images.shape == (n, 3, 32, 32) and images.dtype == torch.uint8
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert int(labels.min()) == 0 and int(labels.max()) == 9
        assert torch.bincount(labels, minlength=10).min() > 0  # every class present
        assert images.is_contiguous()


def test_pixels_match_raw_pickle_with_chw_layout(subset_root, subset_train, subset_test):
    """Images equal the pickled rows byte for byte: row = R plane, G plane, B plane (CHW)."""
    images, labels = subset_train
    for k in (0, 2, 4):  # data_batch_1, 3 and 5
        raw = _raw_batch(subset_root, f"data_batch_{k + 1}")
        data = np.asarray(raw["data"])
        assert data.shape == (PER_BATCH, 3072)
        start = k * PER_BATCH
        for i in (0, 1, 500, PER_BATCH - 1):
            img = images[start + i]
            # explicit indexing, independent of reshape: red plane first, row-major pixels
            assert int(img[0, 0, 0]) == data[i, 0]
            assert int(img[0, 0, 1]) == data[i, 1]
            assert int(img[0, 1, 0]) == data[i, 32]
            assert int(img[1, 0, 0]) == data[i, 1024]
            assert int(img[2, 31, 31]) == data[i, 3071]
            assert np.array_equal(img.numpy(), data[i].reshape(3, 32, 32))
        assert labels[start:start + PER_BATCH].tolist() == list(raw["labels"])
    raw = _raw_batch(subset_root, "test_batch")
    test_images, test_labels = subset_test
    assert np.array_equal(test_images.numpy().reshape(N_TEST, 3072), np.asarray(raw["data"]))
    assert test_labels.tolist() == list(raw["labels"])


def test_partial_copy_refused_without_opt_in(subset_root):
    """The subset fails the official md5s: refused by default, naming both opt-ins and the path."""
    with pytest.raises(DatasetError) as info:
        load_cifar10(subset_root, "test")
    msg = str(info.value)
    assert "allow_partial" in msg and "VAE_TUTORIAL_ALLOW_PARTIAL" in msg
    assert str(subset_root.resolve() / FOLDER) in msg


def test_explicit_false_wins_over_env(subset_root, monkeypatch):
    """allow_partial=False refuses the subset even when the environment opts in."""
    monkeypatch.setenv("VAE_TUTORIAL_ALLOW_PARTIAL", "1")
    with pytest.raises(DatasetError):
        load_cifar10(subset_root, "test", allow_partial=False)


@pytest.mark.parametrize("split,count", [("train", N_TRAIN), ("test", N_TEST)])
def test_allow_partial_warns_with_count(subset_root, split, count):
    """allow_partial=True loads the subset with a PartialDatasetWarning stating the image count."""
    with pytest.warns(PartialDatasetWarning, match=str(count)):
        images, _ = load_cifar10(subset_root, split, allow_partial=True)
    assert len(images) == count


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_env_var_is_an_opt_in(subset_root, monkeypatch, value):
    """VAE_TUTORIAL_ALLOW_PARTIAL=1 (or true/yes) opts in like allow_partial=True."""
    monkeypatch.setenv("VAE_TUTORIAL_ALLOW_PARTIAL", value)
    with pytest.warns(PartialDatasetWarning, match="1017"):
        images, _ = load_cifar10(subset_root, "test")
    assert len(images) == N_TEST


def test_env_var_zero_is_not_an_opt_in(subset_root, monkeypatch):
    """VAE_TUTORIAL_ALLOW_PARTIAL=0 does not opt in."""
    monkeypatch.setenv("VAE_TUTORIAL_ALLOW_PARTIAL", "0")
    with pytest.raises(DatasetError):
        load_cifar10(subset_root, "test")


@pytest.mark.parametrize("allow_partial", [False, True])
def test_missing_dataset_message(tmp_path, allow_partial):
    """An empty root raises DatasetError saying where it looked, how to download, the env var."""
    with pytest.raises(DatasetError) as info:
        load_cifar10(tmp_path, "train", allow_partial=allow_partial)
    assert type(info.value) is DatasetError
    msg = str(info.value)
    assert str(tmp_path.resolve() / FOLDER) in msg
    assert "--download" in msg and "VAE_TUTORIAL_DATA" in msg
    assert "data_batch_1" in msg and "test_batch" in msg  # names the missing files


def test_one_missing_file_is_named(subset_root, tmp_path):
    """A copy missing one batch file raises DatasetError naming that file (and only it)."""
    root = _copy_subset(subset_root, tmp_path)
    (root / FOLDER / "data_batch_4").unlink()
    with pytest.raises(DatasetError) as info:
        load_cifar10(root, "test", allow_partial=True)
    msg = str(info.value).splitlines()[0]
    assert "data_batch_4" in msg and "data_batch_3" not in msg


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
@pytest.mark.parametrize("allow_partial", [False, True])
def test_corrupt_batch_raises_dataset_error(subset_root, tmp_path, damage, allow_partial):
    """A truncated or garbage batch file gives DatasetError (never pickle/EOF errors)."""
    root = _copy_subset(subset_root, tmp_path)
    path = root / FOLDER / "test_batch"
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(1000)
    else:
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DatasetError) as info:
        load_cifar10(root, "test", allow_partial=allow_partial)
    assert type(info.value) is DatasetError
    msg = str(info.value)
    assert str(root.resolve() / FOLDER) in msg
    if allow_partial:
        assert "corrupt" in msg  # it read the file and says what is wrong with it
    else:
        assert "checksum" in msg


def test_corrupt_meta_raises_dataset_error(subset_root, tmp_path):
    """A modified batches.meta (md5 checked by torchvision) gives DatasetError."""
    root = _copy_subset(subset_root, tmp_path)
    (root / FOLDER / "batches.meta").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="corrupt"):
        load_cifar10(root, "test", allow_partial=True)


def test_inconsistent_batch_raises_dataset_error(subset_root, tmp_path):
    """A well-formed pickle whose label count disagrees with its images gives DatasetError."""
    root = _copy_subset(subset_root, tmp_path)
    raw = _raw_batch(subset_root, "test_batch")
    raw["labels"] = raw["labels"][:-1]
    with open(root / FOLDER / "test_batch", "wb") as f:
        pickle.dump(raw, f)
    with pytest.raises(DatasetError, match="unexpected shape"):
        load_cifar10(root, "test", allow_partial=True)


def test_data_root_honours_env(monkeypatch, tmp_path, subset_root):
    """data_root() is the data env var's folder when set (and load_cifar10(None) reads it)."""
    checkout = Path(runtime.__file__).resolve().parent.parent
    assert runtime.data_root() == checkout / "data"  # unset: the checkout's data/
    monkeypatch.setenv(runtime.DATA_ENV, str(tmp_path))
    assert runtime.data_root() == tmp_path
    monkeypatch.setenv(runtime.DATA_ENV, str(subset_root))
    with pytest.warns(PartialDatasetWarning):
        images, _ = load_cifar10(None, "test", allow_partial=True)
    assert len(images) == N_TEST


@pytest.mark.parametrize("split", ["val", "Train", ""])
def test_invalid_split(split, subset_root):
    """Any split other than 'train' or 'test' is a ValueError."""
    with pytest.raises(ValueError, match="split"):
        load_cifar10(subset_root, split, allow_partial=True)


# --- CifarLoader -------------------------------------------------------------------------------

N = 203  # odd, so most batch sizes leave a short last batch


@pytest.fixture
def synthetic():
    """N random small uint8 images (the loader is size-agnostic) and labels = arange(N)."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (N, 3, 4, 4), dtype=torch.uint8, generator=g), torch.arange(N)


def _indices(loader) -> list[torch.Tensor]:
    return [y for _, y in loader]


def test_loader_values_are_exact_uint8_over_255(subset_test):
    """Batches are float32 in [0, 1] and equal the uint8 pixels / 255 exactly."""
    images, _ = subset_test
    loader = CifarLoader(images, torch.arange(len(images)), batch_size=100, seed=3)
    seen = 0
    for x, idx in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        ref = torch.from_numpy(images[idx].numpy().astype(np.float32) / np.float32(255))
        assert torch.equal(x, ref)
        seen += len(x)
    assert seen == len(images)


@pytest.mark.parametrize("batch_size", [1, 7, 100, N, N + 5])
def test_epoch_covers_every_image_once(synthetic, batch_size):
    """drop_last=False: every image exactly once per epoch; only the last batch may be short."""
    images, labels = synthetic
    loader = CifarLoader(images, labels, batch_size=batch_size, seed=0)
    batches = _indices(loader)
    assert len(batches) == len(loader) == -(-N // batch_size)
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(N))
    assert all(len(b) == batch_size for b in batches[:-1])
    assert len(batches[-1]) == N - (len(batches) - 1) * batch_size


@pytest.mark.parametrize("batch_size", [1, 7, 100, N, N + 5])
def test_drop_last(synthetic, batch_size):
    """drop_last=True: N // B full batches, no image twice."""
    images, labels = synthetic
    loader = CifarLoader(images, labels, batch_size=batch_size, drop_last=True)
    batches = _indices(loader)
    assert len(batches) == len(loader) == N // batch_size
    assert all(len(b) == batch_size for b in batches)
    if batches:
        flat = torch.cat(batches)
        assert len(flat.unique()) == len(flat) == (N // batch_size) * batch_size


def test_images_follow_their_labels(synthetic):
    """The image of each batch row is the one its label (index) names."""
    images, labels = synthetic
    for x, idx in CifarLoader(images, labels, batch_size=64, seed=5):
        assert torch.equal((x * 255).round().to(torch.uint8), images[idx])


def test_shuffle_determinism(synthetic):
    """Same seed: same order; other seed or next epoch: another permutation."""
    images, labels = synthetic

    def order(seed, epochs=1):
        loader = CifarLoader(images, labels, batch_size=16, seed=seed)
        return [torch.cat(_indices(loader)) for _ in range(epochs)]

    a0, a1 = order(0, epochs=2)
    (b0,) = order(0)
    (c0,) = order(1)
    assert torch.equal(a0, b0)
    assert not torch.equal(a0, c0)
    assert not torch.equal(a0, a1)
    assert not torch.equal(a0, torch.arange(N))  # it does shuffle
    for o in (a0, a1, c0):
        assert torch.equal(o.sort().values, torch.arange(N))


def test_set_epoch_reproduces_order(synthetic):
    """set_epoch(e) on a fresh loader gives exactly epoch e's order of an uninterrupted run."""
    images, labels = synthetic
    run = CifarLoader(images, labels, batch_size=10, seed=7)
    epochs = [torch.cat(_indices(run)) for _ in range(4)]
    assert run.epoch == 4  # each iteration advances the epoch
    for e in (3, 0, 2):
        resumed = CifarLoader(images, labels, batch_size=10, seed=7)
        resumed.set_epoch(e)
        assert torch.equal(torch.cat(_indices(resumed)), epochs[e])
    fresh = CifarLoader(images, labels, batch_size=10, seed=7)
    fresh.set_epoch(1)
    assert torch.equal(fresh.order(), epochs[1])


def test_set_epoch_skip_resumes_in_the_middle_of_an_epoch(synthetic):
    """set_epoch(e, skip=k) yields exactly the batches after the first k of epoch e, and the
    next epoch starts from its first batch again."""
    images, labels = synthetic
    straight = CifarLoader(images, labels, batch_size=16, seed=3)
    straight.set_epoch(2)
    batches = _indices(straight)
    after = _indices(straight)  # epoch 3
    resumed = CifarLoader(images, labels, batch_size=16, seed=3)
    resumed.set_epoch(2, skip=5)
    rest = _indices(resumed)
    assert len(rest) == len(batches) - 5
    assert all(torch.equal(a, b) for a, b in zip(rest, batches[5:]))
    assert all(torch.equal(a, b) for a, b in zip(_indices(resumed), after))


def test_no_shuffle_is_arange(synthetic):
    """shuffle=False visits images in storage order, every epoch."""
    images, labels = synthetic
    loader = CifarLoader(images, labels, batch_size=50, shuffle=False)
    for _ in range(2):
        assert torch.equal(torch.cat(_indices(loader)), torch.arange(N))


def test_limit_takes_first_images(synthetic):
    """limit=n keeps exactly the first n images (and labels)."""
    images, labels = synthetic
    loader = CifarLoader(images, labels, batch_size=8, limit=37, seed=2)
    assert len(loader.images) == 37 and torch.equal(loader.images, images[:37])
    idx = torch.cat(_indices(loader))
    assert torch.equal(idx.sort().values, torch.arange(37))
    assert len(loader) == 5


def test_labels_none(synthetic):
    """Without labels the loader yields (x, None) and still covers every image."""
    images, _ = synthetic
    batches = list(CifarLoader(images, batch_size=50, shuffle=False))
    assert all(y is None for _, y in batches)
    assert sum(len(x) for x, _ in batches) == N


def test_channels_last(synthetic):
    """channels_last=True yields channels_last tensors with the same values."""
    images, labels = synthetic
    plain = list(CifarLoader(images, labels, batch_size=64, seed=0))
    cl = list(CifarLoader(images, labels, batch_size=64, seed=0, channels_last=True))
    for (x, _), (y, _) in zip(plain, cl):
        assert x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(x, y)


@pytest.mark.parametrize("batch_size", [8, 10])
def test_world_size_two_splits_each_global_batch(synthetic, batch_size):
    """Ranks 0 and 1 take disjoint halves whose concatenation is the global batch, each step."""
    images, labels = synthetic
    single = _indices(CifarLoader(images, labels, batch_size=batch_size, seed=4))
    ranks = [_indices(CifarLoader(images, labels, batch_size=batch_size, seed=4, rank=r,
                                  world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for g, r0, r1 in zip(single, *ranks):
        assert not set(r0.tolist()) & set(r1.tolist())
        assert torch.equal(torch.cat([r0, r1]), g)
        if len(g) == batch_size:
            assert len(r0) == len(r1) == batch_size // 2


def test_bad_inputs(synthetic):
    """Float or 3-d images and batch sizes that are not positive multiples of world_size fail."""
    images, labels = synthetic
    with pytest.raises(ValueError, match="uint8"):
        CifarLoader(images.float() / 255, labels)
    with pytest.raises(ValueError, match="uint8"):
        CifarLoader(images[0], labels)
    with pytest.raises(ValueError, match="world_size"):
        CifarLoader(images, labels, batch_size=7, world_size=2)
    with pytest.raises(ValueError, match="positive"):
        CifarLoader(images, labels, batch_size=0)
