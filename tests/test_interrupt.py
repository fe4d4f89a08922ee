"""Interrupted training loses nothing: SIGINT and SIGKILL at fixed moments of a fast run, in
the middle of training steps and in the middle of writing a checkpoint, each followed by
`train --resume`, end with the weights of an uninterrupted run, bit for bit on the CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from vae_tutorial import runtime
from vae_tutorial.checkpoint import load_checkpoint

# Run the CLI with a trap that sends `signal` to the process itself at the n-th training step,
# or halfway through writing the n-th checkpoint (after half a file reached the disk).
TRAPPED_CLI = r"""
import os, signal, sys
import torch
from vae_tutorial import cli, train
where, n, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
# Ctrl-C as a terminal delivers it, even where this test was started with SIGINT ignored (a
# background job of a shell without job control), which Python then leaves ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
calls = [0]
if where == "step":
    real_step = train.train_step
    def step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), sig)
        return real_step(*args, **kwargs)
    train.train_step = step
else:
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            f.write(b"PK\x03\x04 half of a checkpoint")
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), sig)
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
sys.exit(cli.main(sys.argv[4:]))
"""

RUN = ["train", "--preset", "fast", "--epochs", "3", "--set", "train_limit=192",
       "--batch-size", "32", "--set", "width=8", "--set", "latent_dim=8", "--set", "test_limit=64",
       "--set", "checkpoint_minutes=0", "--set", "log_every=2", "--set", "progress=false"]
STEPS = 18  # 3 epochs of 6 steps; checkpoints after steps 2, 4 (mid-epoch) and 6 (epoch end)...

KILLS = [  # (where, n, signal): steps count from 1 in each process; saves likewise
    ("step", 3, "SIGINT"),
    ("step", 5, "SIGKILL"),
    ("save", 2, "SIGKILL"),  # halfway through writing a checkpoint
    ("save", 1, "SIGINT"),
    ("step", 7, "SIGKILL"),
]


@pytest.fixture
def env(subset_root, tmp_path):
    return dict(os.environ, **{runtime.DATA_ENV: str(subset_root), runtime.ALLOW_PARTIAL_ENV: "1",
                               runtime.FIGURES_ENV: str(tmp_path / "fig"), "OMP_NUM_THREADS": "1"})


def _cli(args, env, trap=None):
    cmd = [sys.executable, "-m", "vae_tutorial", *args] if trap is None else \
        [sys.executable, "-c", TRAPPED_CLI, *trap, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_kills_at_fixed_moments_then_resume_equal_an_uninterrupted_run(tmp_path, env):
    straight = _cli([*RUN, "--out", tmp_path / "straight"], env)
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "killed"
    last_step = 0
    for i, (where, n, sig) in enumerate(KILLS):
        r = _cli([*RUN, "--out", out, "--resume"], env, trap=(where, str(n), sig))
        expected = -signal.SIGKILL if sig == "SIGKILL" else 130
        assert r.returncode == expected, (i, r.returncode, r.stderr[-500:])
        if sig == "SIGINT":
            assert "--resume" in r.stderr and "Traceback" not in r.stderr
        ckpt_file = out / "checkpoint.pt"
        if (where, sig) == ("save", "SIGKILL"):  # half a file stays, under a temporary name
            assert [p for p in out.iterdir() if p.name.endswith(".tmp")]
        if not ckpt_file.exists():
            continue  # killed before the first checkpoint: nothing to lose
        ckpt = load_checkpoint(ckpt_file)  # never corrupt, whatever the moment of the kill
        assert ckpt["step"] >= last_step  # nothing already saved was lost
        if where == "step":  # at most the steps since the last host sync (log_every = 2)
            assert ckpt["step"] >= last_step + n - 1 - 2
        last_step = ckpt["step"]
    r = _cli([*RUN, "--out", out, "--resume"], env)
    assert r.returncode == 0, r.stderr
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # leftovers cleaned
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(out / "checkpoint.pt")
    assert a["step"] == b["step"] == STEPS
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for key in ("epoch", "step", "train_elbo", "train_kl", "test_elbo"):  # not the timings
        assert [h[key] for h in a["history"]] == [h[key] for h in b["history"]], key
