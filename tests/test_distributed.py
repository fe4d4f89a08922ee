"""torchrun --nproc_per_node=2 (gloo, CPU) trains like one process on the same global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ARGS = ["train", "--preset", "fast", "--model", "seed", "--epochs", "1", "--set", "progress=false",
        "--set", "likelihood=bernoulli", "--set", "train_limit=256", "--batch-size", "64",
        "--set", "amp=false"]  # fp32: the comparison is about DDP, not bf16 rounding


def test_two_process_ddp_matches_single_process(subset_root, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun not installed")
    env = dict(os.environ, VAE_TUTORIAL_DATA=str(subset_root), VAE_TUTORIAL_ALLOW_PARTIAL="1",
               OMP_NUM_THREADS="1")
    runs = {
        "one": [sys.executable, "-m", "vae_tutorial", *ARGS, "--out", str(tmp_path / "one")],
        "two": [str(torchrun if torchrun.exists() else "torchrun"), "--nproc_per_node=2",
                "--master_port=29517", "-m", "vae_tutorial", *ARGS,
                "--out", str(tmp_path / "two")],
    }
    for name, cmd in runs.items():
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{name}: {r.stderr[-2000:]}"
    one = json.loads((tmp_path / "one" / "history.json").read_text())[-1]
    two = json.loads((tmp_path / "two" / "history.json").read_text())[-1]
    assert one["step"] == two["step"] == 4  # 256 images / global batch 64, on both
    # same data, same global batches, same initial weights: only the sampling noise differs
    for key in ("train_elbo", "train_reconstruction", "test_elbo"):
        assert two[key] == pytest.approx(one[key], rel=5e-3), key
    # only rank 0 checkpoints and logs
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "checkpoint.pt", "history.csv", "history.json"]
