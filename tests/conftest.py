"""Shared fixtures: the bit-exact CIFAR-10 subset in ../shared/data (or $VAE_TUTORIAL_DATA)."""

import os
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SUBSET = Path(os.environ.get("VAE_TUTORIAL_TEST_DATA", REPO.parent / "shared/data/cifar10-subset"))


def assert_check_passes(check, solution, capsys, start: str) -> None:
    """An exercise check passes `solution`, prints a line starting with `start`, and leaves the
    global random state as it found it."""
    state = torch.random.get_rng_state()
    result = check(solution)
    assert result and result.status == "passed", result.message
    assert capsys.readouterr().out.startswith(start)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.fixture(scope="session")
def subset_root() -> Path:
    """Root of the bit-exact subset: 5,085 train and 1,017 test images."""
    if not (SUBSET / "cifar-10-batches-py").is_dir():
        pytest.fail(f"test data not found at {SUBSET}; set VAE_TUTORIAL_TEST_DATA")
    return SUBSET


@pytest.fixture(scope="session")
def subset_test(subset_root):
    """(images uint8 (1017, 3, 32, 32), labels) of the subset's test split."""
    from vae_tutorial.data import load_cifar10

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_cifar10(subset_root, "test", allow_partial=True)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests use tiny tensors: one intra-op thread is faster, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_and_isolate(monkeypatch, tmp_path):
    """Every test starts from seed 0 and writes figures to its own temporary folder."""
    torch.manual_seed(0)
    monkeypatch.setenv("VAE_TUTORIAL_FIGURES", str(tmp_path / "figures"))
    # no precision probe in tests (quick, deterministic): bf16 wherever it is eligible, as the
    # reference weights were recorded; tests of the probe set "auto" and their own cache file
    monkeypatch.setenv("VAE_TUTORIAL_PRECISION", "bf16")
    monkeypatch.setenv("VAE_TUTORIAL_ADAMW", "fused")  # likewise AdamW: tests of its probe: auto
    monkeypatch.setenv("VAE_TUTORIAL_PRECISION_CACHE", str(tmp_path / "precision.json"))
