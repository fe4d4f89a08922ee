"""Checks for the exercises at the end of every notebook: call `check_<name>(your_function)`.

Each check calls the learner's function on random and edge-case inputs, compares it with an
independent reference (torch.distributions, a closed form, a Monte Carlo estimate, or the
package's own tested function), and prints one verdict: passed; or the input that failed,
expected against got, and a hint aimed at the mistake it recognises. A function that still
raises NotImplementedError is "not attempted yet". Every check returns a `Result` (true when
passed), runs on the CPU in a fraction of a second, and leaves torch's random state as it was.

    python -m vae_tutorial.exercises my_answers.py   # checks every exercise function defined there
    python -m vae_tutorial.exercises --list          # the exercises, by notebook

One module per notebook holds that chapter's checks (ch00_whole_vae.py ... ch08_hierarchical.py);
verdict.py holds the Result they return and the helpers they share. Every check is importable
from here: `from vae_tutorial.exercises import check_<name>`.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Callable

from .ch00_whole_vae import check_vae_loss
from .ch01_elbo import check_exact_elbo, check_iwae_bounds, check_log_mean_exp, check_mc_elbo
from .ch02_encoder_decoder import (
    check_conv_output_size,
    check_conv_parameters,
    check_make_decoder,
    check_make_encoder,
)
from .ch03_reparameterization import check_reparameterize, check_score_function
from .ch04_loss import (
    check_bits_per_dim,
    check_discretized_logistic,
    check_elbo_loss,
    check_gaussian_kl,
)
from .ch05_training import check_batch_sizes, check_training_step
from .ch06_results import check_active_units, check_interpolate, check_slerp
from .ch07_blobs import check_aggregate_log_density, check_free_bits_kl
from .ch08_hierarchical import check_group_kl, check_group_step, check_soft_clamp
from .verdict import NOT_ATTEMPTED, Result

__all__ = ["Result", "EXERCISES", "NOT_ATTEMPTED"]  # and the check_* functions, in EXERCISES

EXERCISES: dict[str, tuple[int, Callable]] = {  # function name -> (notebook, check)
    "vae_loss": (0, check_vae_loss),
    "exact_elbo": (1, check_exact_elbo),
    "mc_elbo": (1, check_mc_elbo),
    "log_mean_exp": (1, check_log_mean_exp),
    "iwae_bounds": (1, check_iwae_bounds),
    "conv_output_size": (2, check_conv_output_size),
    "conv_parameters": (2, check_conv_parameters),
    "make_encoder": (2, check_make_encoder),
    "make_decoder": (2, check_make_decoder),
    "reparameterize": (3, check_reparameterize),
    "score_function": (3, check_score_function),
    "gaussian_kl": (4, check_gaussian_kl),
    "bits_per_dim": (4, check_bits_per_dim),
    "discretized_logistic": (4, check_discretized_logistic),
    "elbo_loss": (4, check_elbo_loss),
    "batch_sizes": (5, check_batch_sizes),
    "training_step": (5, check_training_step),
    "interpolate": (6, check_interpolate),
    "active_units": (6, check_active_units),
    "slerp": (6, check_slerp),
    "free_bits_kl": (7, check_free_bits_kl),
    "aggregate_log_density": (7, check_aggregate_log_density),
    "soft_clamp": (8, check_soft_clamp),
    "group_kl": (8, check_group_kl),
    "group_step": (8, check_group_step),
}


def main(argv: list[str] | None = None) -> int:
    """Check every exercise function a Python file defines (by name); 1 if any failed."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "--list"):
        print(__doc__.strip().splitlines()[0])
        print("usage: python -m vae_tutorial.exercises FILE.py   (FILE defines functions named:)")
        for name, (nb, _) in EXERCISES.items():
            print(f"  notebook {nb}: {name}")
        return 0
    spec = importlib.util.spec_from_file_location("answers", args[0])
    answers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(answers)
    results = [check(getattr(answers, name)) for name, (_, check) in EXERCISES.items()
               if callable(getattr(answers, name, None))]
    if not results:
        print(f"{args[0]} defines none of the exercise functions (--list names them)")
    return 0 if all(results) else 1

