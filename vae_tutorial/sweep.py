"""Notebook 7's rate-distortion sweep: the `sweep` preset trained at several values of beta
(and two collapse counter-measures), each through the command line, then evaluated with
latent statistics; the history, the evaluation and half-precision weights (about 1 MiB) go to
results/sweep/<point>/.

    python -m vae_tutorial.sweep [--data ...] [--set ...]     # make sweep
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from . import checkpoint, runtime

# point name -> --set overrides of the sweep preset
POINTS: dict[str, dict] = {
    "beta-0.1": {"beta": 0.1},
    "beta-0.3": {"beta": 0.3},
    "beta-1": {"beta": 1.0},
    "beta-3": {"beta": 3.0},
    "beta-10": {"beta": 10.0},
    "beta-10-free-bits": {"beta": 10.0, "free_bits": 0.5},  # collapse countered
    "beta-1-no-warm-up": {"beta": 1.0, "kl_warmup_epochs": 0.0},  # the warm-up's effect
}


def run(points: dict[str, dict], preset: str, out_root: Path, results: Path | None = None,
        extra: list[str] = (), eval_limit: int | None = None) -> None:
    """Train and evaluate each point into out_root/<name>/ (resuming finished or interrupted
    ones), and copy its history and evaluation to results/<name>/ when `results` is given.
    eval_limit: evaluate on the first test images only (fast mode)."""
    for name, overrides in points.items():
        out = Path(out_root) / name
        sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
        steps = [["train", "--preset", preset, *sets, *extra, "--out", str(out), "--resume"],
                 ["evaluate", str(checkpoint.path(out)), "--preset", preset, "-k", "0",
                  "--stats", "--json", str(out / "eval.json"), *_data_args(extra),
                  *(["--limit", str(eval_limit)] if eval_limit else [])]]
        for argv in steps:  # each a command line of its own, as a user would type it
            command = [sys.executable, "-m", "vae_tutorial", *argv]
            print(f"sweep {name}: python -m vae_tutorial {' '.join(argv)}", file=sys.stderr)
            if subprocess.run(command).returncode != 0:
                raise RuntimeError(f"sweep {name} failed: python -m vae_tutorial {' '.join(argv)}")
        if results is not None:
            checkpoint.publish(out, results / name)


def _data_args(extra: list[str]) -> list[str]:
    """The data flags among `extra` (evaluate takes no --set)."""
    keep, it = [], iter(extra)
    for a in it:
        if a in ("--data", "--test-data", "--allow-partial", "--device"):
            keep.append(a)
            if a != "--allow-partial":
                keep.append(next(it))
    return keep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vae_tutorial.sweep", description=__doc__)
    p.add_argument("--preset", default="sweep", help="the configuration swept (default: sweep)")
    p.add_argument("--points", default=",".join(POINTS), help="comma-separated point names")
    args, extra = p.parse_known_args(argv)
    names = args.points.split(",")
    unknown = [n for n in names if n not in POINTS]
    if unknown:
        p.error(f"unknown points {unknown}; choose from {', '.join(POINTS)}")
    run({n: POINTS[n] for n in names}, args.preset, runtime.runs_dir() / "sweep",
        runtime.results_dir() / "sweep", extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
