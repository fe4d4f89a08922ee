"""Checks for the exercises at the end of every notebook: call `check_<name>(your_function)`.

Each check calls the learner's function on random and edge-case inputs, compares it with an
independent reference (torch.distributions, a closed form, a Monte Carlo estimate, or the
package's own tested function), and prints one verdict: passed; or the input that failed,
expected against got, and a hint aimed at the mistake it recognises. A function that still
raises NotImplementedError is "not attempted yet". Every check returns a `Result` (true when
passed), runs on the CPU in a fraction of a second, and leaves torch's random state as it was.

    python -m vae_tutorial.exercises my_answers.py   # checks every exercise function defined there
    python -m vae_tutorial.exercises --list          # the exercises, by notebook
"""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from . import analysis, losses
from .config import ModelConfig
from .data import CifarLoader
from .evaluate import log_mean_exp
from .linear_gaussian import LinearGaussianVAE
from .model import build_model, count_parameters

__all__ = ["Result", "EXERCISES"]  # and the check_* functions, listed in EXERCISES

NOT_ATTEMPTED = "not attempted yet"


@dataclass
class Result:
    """The verdict of one check; true when passed. `hint` names the mistake recognised."""

    name: str
    status: str  # "passed", "failed" or NOT_ATTEMPTED
    message: str  # the whole printed verdict
    hint: str = ""

    def __bool__(self) -> bool:
        return self.status == "passed"

    def _ipython_display_(self) -> None:
        """Show nothing in a notebook: the check has printed the verdict already."""


class _Failed(Exception):
    """Raised inside a check: the case that failed, expected, got and the hint."""

    def __init__(self, case: str, hint: str, expected=None, got=None):
        super().__init__(case)
        self.case, self.hint, self.expected, self.got = case, hint, expected, got


class _NotAttempted(Exception):
    """The learner's function raised NotImplementedError."""


def _fmt(v, digits: int = 6) -> str:
    """A short, readable rendering of a number, tensor or list (at most 8 values)."""
    if isinstance(v, torch.Tensor):
        v = v.detach()
        if v.is_floating_point():
            v = v.double()
        if v.numel() == 1:
            return f"{v.item():.{digits}g}" if v.is_floating_point() else str(v.item())
        flat = v.flatten().tolist()
        shown = ", ".join(f"{a:.{digits - 1}g}" if isinstance(a, float) else str(a)
                          for a in flat[:8])
        return f"[{shown}{', ...' if len(flat) > 8 else ''}] (shape {tuple(v.shape)})"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return f"[{', '.join(map(str, v[:8]))}, ...] ({len(v)} values)"
    return str(v)


def _run(name: str, body: Callable[[], str]) -> Result:
    """Run a check's body with torch's random state saved and restored; print the verdict."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            detail = body()
            result = Result(name, "passed", f"check_{name}: passed ({detail})")
        except _NotAttempted:
            result = Result(name, NOT_ATTEMPTED, f"check_{name}: {NOT_ATTEMPTED} (your function "
                            "still raises NotImplementedError: replace it with your code)")
        except _Failed as f:
            lines = [f"check_{name}: FAILED on {f.case}"]
            if f.expected is not None or f.got is not None:
                digits = next((d for d in (6, 10, 17) if _fmt(f.expected, d) != _fmt(f.got, d)),
                              17)  # enough digits to show where they differ
                lines += [f"  expected: {_fmt(f.expected, digits)}",
                          f"  got:      {_fmt(f.got, digits)}"]
            lines.append(f"  hint: {f.hint}")
            result = Result(name, "failed", "\n".join(lines), f.hint)
    print(result.message)
    return result


def _call(fn, case: str, *args, **kwargs):
    """fn(*args) on copies of tensor arguments; NotImplementedError and errors reported."""
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise _NotAttempted from None
    except Exception as err:  # the learner's bug: report it as a failure, not a crash
        raise _Failed(case, f"your function raised {type(err).__name__}: {err}") from None


def _as_tensor(v) -> torch.Tensor | None:
    try:
        t = torch.as_tensor(v.detach() if isinstance(v, torch.Tensor) else v)
        return t.double() if t.dtype != torch.bool else t
    except Exception:
        return None


def _close(got, expected: torch.Tensor, rtol: float, atol: float) -> bool:
    """Same shape and values within tolerance; matching infinities count as equal."""
    g = _as_tensor(got)
    e = expected.double()
    if g is None or g.shape != e.shape:
        return False
    return bool(torch.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True)) or bool(
        torch.isinf(e).any() and torch.equal(torch.isinf(g), torch.isinf(e))
        and torch.allclose(g[~torch.isinf(e)], e[~torch.isinf(e)], rtol=rtol, atol=atol))


def _compare(got, expected: torch.Tensor, case: str, mistakes=(), args=(), *,
             rtol: float = 1e-5, atol: float = 1e-8, shape_hint: str = "",
             nonfinite_hint: str = "", nan_hint: str = "", fallback: str = "") -> None:
    """Raise _Failed unless got matches expected; the hint comes from the first mistake
    (a function of the same args) whose output got matches, else the shape, NaN, non-finite
    or fallback hint."""
    if _close(got, expected, rtol, atol):
        return
    g = _as_tensor(got)
    for wrong, hint in mistakes:
        try:
            w = torch.as_tensor(wrong(*args)).double()
            if torch.isfinite(w).any() and _close(got, w, rtol, atol):
                raise _Failed(case, hint, expected, got)
        except _Failed:
            raise
        except Exception:  # a mistake that cannot be computed on these inputs
            continue
    if g is None:
        hint = f"return a tensor (or a number), not {type(got).__name__}"
    elif g.shape != expected.shape:
        hint = (f"expected shape {tuple(expected.shape)}, got {tuple(g.shape)}. "
                + shape_hint).strip()
    elif nan_hint and torch.isfinite(expected).all() and torch.isnan(g).any():
        hint = nan_hint
    elif nonfinite_hint and torch.isfinite(expected).all() and not torch.isfinite(g).all():
        hint = nonfinite_hint
    elif rtol < 1e-4 and _close(got, expected, 1e-4, max(atol, 1e-6)):
        hint = (f"right to about 4 digits but not to the check's relative {rtol:g}: an error "
                "this small is usually float32 rounding. A constant such as torch.tensor(2.0) or "
                "torch.log(torch.tensor(k)) is float32: use math.log(...) or build it with "
                "dtype=torch.float64 (the inputs' dtype)")
    else:
        hint = fallback or "compare your formula with the statement, term by term"
    raise _Failed(case, hint, expected, got)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- notebook 1: the ELBO ------------------------------------------------------------------------

def _lw_elbo(lw):
    return lw.mean(0)


def check_log_mean_exp(fn) -> Result:
    """fn(log_w) -> (B,): the IWAE estimate log (1/k) sum_i exp(log_w[i]) from (k, B) log_w."""
    def body():
        g = _gen(1)
        cases = [
            ("random log-weights, k = 5 samples of B = 3 images",
             -10 + 2 * torch.randn(5, 3, generator=g, dtype=torch.float64)),
            ("k = 1 (the estimate is the log-weight itself)",
             torch.randn(1, 4, generator=g, dtype=torch.float64)),
            ("log-weights of real images, about -7000 nats (k = 4, B = 2)",
             -7000 + 5 * torch.randn(4, 2, generator=g, dtype=torch.float64)),
            ("log-weights around +800 nats (k = 3, B = 2)",
             800 + torch.randn(3, 2, generator=g, dtype=torch.float64)),
        ]
        mistakes = [
            (_lw_elbo, "you averaged the log-weights: that is the ELBO estimate, which Jensen's "
             "inequality puts below the IWAE bound. Average the weights inside the log"),
            (lambda lw: torch.logsumexp(lw, 0), "off by log k: the 1/k inside the log is "
             "- math.log(k) outside it (k = log_w.shape[0])"),
            (lambda lw: torch.logsumexp(lw, 0) - math.log(lw.shape[1]),
             "divide by k, the number of samples (log_w.shape[0]), not by the batch size"),
        ]
        for case, lw in cases:
            got = _call(fn, case, lw)
            _compare(got, log_mean_exp(lw), case, mistakes, (lw,), rtol=1e-6, atol=1e-6,
                     shape_hint="Reduce over the first dimension (the k samples) and keep one "
                     "value per image.",
                     nonfinite_hint="exp(log_w) under- or overflows at hundreds of nats: "
                     "use torch.logsumexp(log_w, dim=0) - math.log(k), which subtracts the "
                     "maximum first")
        return f"{len(cases)} inputs against evaluate.log_mean_exp, large log-weights included"
    return _run("log_mean_exp", body)


def _iwae_bounds_reference(lw: torch.Tensor, ks) -> torch.Tensor:
    out = []
    for k in ks:
        n = lw.shape[0] // k
        blocks = lw[:n * k].reshape(n, k, -1)  # (n, k, B): consecutive blocks of k
        out.append(log_mean_exp(blocks.transpose(0, 1)).mean())
    return torch.stack(out)


def check_iwae_bounds(fn) -> Result:
    """fn(log_w, ks) -> (len(ks),): the mean IWAE bound for each k, from consecutive blocks."""
    def body():
        g = _gen(2)
        model = LinearGaussianVAE(data_dim=4, latent_dim=2, sigma=0.5, seed=0)
        with torch.no_grad():
            x = model.decode(torch.randn(8, 2, generator=g, dtype=torch.float64))
            x = x + 0.5 * torch.randn(x.shape, generator=g, dtype=torch.float64)
            log_px = model.log_marginal(x).mean()
        torch.manual_seed(2)
        lw_model = model.log_weights(x, 1024, chunk=8192)  # (1024, 8)
        cases = [
            ("random log-weights, K = 12, ks = [1, 2, 3, 4, 6, 12]",
             torch.randn(12, 3, generator=g, dtype=torch.float64), [1, 2, 3, 4, 6, 12]),
            ("K = 10 and ks = [1, 3, 4] (K is not a multiple of k)",
             2 * torch.randn(10, 2, generator=g, dtype=torch.float64), [1, 3, 4]),
            ("log-weights of the linear-Gaussian VAE of this notebook, K = 1024",
             lw_model, [1, 4, 16, 64, 256, 1024]),
        ]

        def first_block(lw, ks):
            return torch.stack([log_mean_exp(lw[:k]).mean() for k in ks])

        def strided(lw, ks):
            return torch.stack([log_mean_exp(lw[:(len(lw) // k) * k].reshape(
                k, len(lw) // k, -1)).mean() for k in ks])

        def partial(lw, ks):
            return torch.stack([torch.cat([log_mean_exp(lw[i:i + k]) for i in range(
                0, len(lw), k)]).mean() for k in ks])

        def no_log_k(lw, ks):
            return _iwae_bounds_reference(lw, ks) + torch.tensor([math.log(k) for k in ks],
                                                                 dtype=lw.dtype)

        def elbo_blocks(lw, ks):
            return torch.stack([lw[:(len(lw) // k) * k].mean() for k in ks])

        mistakes = [
            (first_block, "you used only the first k log-weights: average the estimate over "
             "all K // k blocks (same expectation, less noise)"),
            (strided, "the blocks must be consecutive rows, log_w[j*k:(j+1)*k]: reshape to "
             "(K // k, k, B), not (k, K // k, B)"),
            (partial, "drop the last K % k log-weights: a partial block of fewer than k "
             "samples is a looser bound than L_k"),
            (no_log_k, "off by log k: each block's estimate is logsumexp - math.log(k)"),
            (elbo_blocks, "you averaged log-weights: that is the ELBO for every k. Average the "
             "weights inside the log (torch.logsumexp)"),
        ]
        for case, lw, ks in cases:
            got = _call(fn, case, lw, ks)
            _compare(got, _iwae_bounds_reference(lw, ks), case, mistakes, (lw, ks),
                     rtol=1e-6, atol=1e-6, shape_hint="One number per k: the mean over "
                     "images and blocks.")
        bounds = _as_tensor(got)
        if not (bounds.diff() > 0).all() or bounds[-1] > log_px + 0.05:
            raise _Failed("the linear-Gaussian VAE", "the bound must rise with k and stay "
                          "below log p(x)", bounds, log_px)
        return (f"3 inputs; on the linear-Gaussian VAE the bound rises with k, from "
                f"{bounds[0]:.2f} (k = 1) to {bounds[-1]:.2f} nats (k = 1024), below the "
                f"exact log p(x) = {log_px:.2f}")
    return _run("iwae_bounds", body)


def check_exact_elbo(fn) -> Result:
    """fn(model, x) -> (B,): the closed-form ELBO of a LinearGaussianVAE."""
    def body():
        setups = [("the model of this notebook (D = 4, d = 2, sigma = 0.5), 5 points",
                   dict(data_dim=4, latent_dim=2, sigma=0.5, seed=0), 5),
                  ("another model (D = 6, d = 3, sigma = 0.3), 3 points",
                   dict(data_dim=6, latent_dim=3, sigma=0.3, seed=1), 3)]
        for case, kw, n in setups:
            model = LinearGaussianVAE(**kw)
            with torch.no_grad():
                model.q_log_var.copy_(torch.linspace(-1.0, 0.5, model.latent_dim,
                                                     dtype=torch.float64))
                torch.manual_seed(n)
                x = model.sample(n)
                # independent of the ELBO's formula: log p(x) - KL(q(z|x) || p(z|x))
                expected = model.log_marginal(x) - model.posterior_gap(x)
                m, lv = model.encode(x)
                s2 = model.log_sigma.exp() ** 2
                sq = (x - model.decode(m)).pow(2).sum(1)
                tr = (model.W.pow(2) * lv.exp()[:1]).sum()
                const = model.data_dim * (model.log_sigma + 0.5 * math.log(2 * math.pi))
                kl = losses.gaussian_kl(m, lv)
                tr_std = (model.W.pow(2) * (0.5 * lv).exp()[:1]).sum()
            mistakes = [
                (lambda: -0.5 * sq / s2 - const - kl, "you left out the trace term "
                 "tr(W diag(v) W^T) / (2 sigma^2): the expected extra squared error from "
                 "sampling z (your value is the reconstruction at z = m)"),
                (lambda: -0.5 * (sq + tr) / s2 - const, "subtract the KL term "
                 "KL(q(z|x) || p(z)) = 0.5 * sum(m^2 + v - 1 - log v)"),
                (lambda: -0.5 * (sq + tr) / s2 - const + kl, "the KL term is subtracted, "
                 "not added"),
                (lambda: -0.5 * (sq + tr) / s2 - model.data_dim * model.log_sigma - kl,
                 "the Gaussian's normalising constant - (D / 2) log(2 pi) is missing"),
                (lambda: -0.5 * (sq + tr) / model.log_sigma.exp() - const - kl,
                 "divide the squared error by 2 sigma^2 (sigma = exp(log_sigma)), not 2 sigma"),
                (lambda: -0.5 * (sq + tr_std) / s2 - const - kl,
                 "v = exp(q_log_var) is the variance: the trace is sum_ij W_ij^2 v_j"),
            ]
            got = _call(fn, case, model, x)
            _compare(got, expected.detach(), case, [(f, h) for f, h in mistakes], (),
                     rtol=1e-6, atol=1e-6, shape_hint="One ELBO per data point.")
        return "2 models against log p(x) - KL(q(z|x) || p(z|x)), both in closed form"
    return _run("exact_elbo", body)


# --- notebook 2: encoder and decoder ------------------------------------------------------------

def check_conv_output_size(fn) -> Result:
    """fn(size, kernel, stride, padding) -> int: the output size of nn.Conv2d."""
    def body():
        cases = [(16, 5, 1, 2), (32, 4, 2, 1), (32, 3, 1, 1), (5, 4, 2, 1), (7, 3, 2, 0),
                 (1, 3, 1, 1), (8, 5, 3, 2), (33, 4, 2, 1)]
        mistakes = [
            (lambda s, k, st, p: (s + 2 * p - k) // st, "add 1: a kernel that fits once "
             "gives one output, floor((size + 2 padding - kernel) / stride) + 1"),
            (lambda s, k, st, p: -(-(s + 2 * p - k) // st) + 1, "round down, not up: "
             "a stride that does not fit in the last step is dropped (use //)"),
            (lambda s, k, st, p: (s + 2 * p - k) / st + 1, "use floor division //: sizes "
             "are whole numbers"),
            (lambda s, k, st, p: (s + p - k) // st + 1, "padding is added on both sides: "
             "size + 2 * padding"),
        ]
        for s, k, st, p in cases:
            case = f"size={s}, kernel={k}, stride={st}, padding={p}"
            expected = nn.Conv2d(1, 1, k, stride=st, padding=p)(torch.zeros(1, 1, s, s)).shape[-1]
            got = _call(fn, case, s, k, st, p)
            if isinstance(got, float) and got != int(got):
                raise _Failed(case, mistakes[2][1], expected, got)
            _compare(got, torch.tensor(float(expected)), case, mistakes, (s, k, st, p))
        return f"{len(cases)} layers against nn.Conv2d's own output"
    return _run("conv_output_size", body)


def check_conv_parameters(fn) -> Result:
    """fn(c_in, c_out, kernel, bias) -> int: the parameters of nn.Conv2d (square kernel)."""
    def body():
        cases = [(3, 64, 4, True), (64, 128, 4, False), (16, 32, 3, True), (1, 1, 1, True),
                 (128, 30, 4, True), (5, 7, 3, False)]
        mistakes = [
            (lambda i, o, k, b: o * i * k * k, "add the biases: one per output channel"),
            (lambda i, o, k, b: o * i * k * k + o, "bias=False: such a layer has no biases"),
            (lambda i, o, k, b: o * i * k + o * b, "a k x k kernel has k * k weights per pair "
             "of channels"),
            (lambda i, o, k, b: o * i * k * k + i * b, "one bias per output channel, not per "
             "input channel"),
            (lambda i, o, k, b: o * k * k + o * b, "every output channel sees every input "
             "channel: c_in * c_out kernels"),
        ]
        for i, o, k, b in cases:
            case = f"c_in={i}, c_out={o}, kernel={k}, bias={b}"
            expected = count_parameters(nn.Conv2d(i, o, k, bias=b))
            got = _call(fn, case, i, o, k, b)
            _compare(got, torch.tensor(float(expected)), case, mistakes, (i, o, k, b))
        return f"{len(cases)} layers against count_parameters(nn.Conv2d(...))"
    return _run("conv_parameters", body)


def _spec_encoder(latent_dim: int, width: int) -> nn.Module:
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 4, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),
        nn.Flatten(), nn.Linear(2 * w * 16, 2 * latent_dim))


def check_make_encoder(fn) -> Result:
    """fn(latent_dim, width) -> nn.Module mapping (B, 3, 32, 32) to (B, 2 latent_dim)."""
    def body():
        from .demos import superposition_error
        for latent_dim, width in ((8, 4), (5, 3)):
            spec = f"make_encoder(latent_dim={latent_dim}, width={width})"
            torch.manual_seed(0)
            enc = _call(fn, spec, latent_dim, width)
            if not isinstance(enc, nn.Module):
                raise _Failed(spec, f"return an nn.Module (e.g. nn.Sequential), not "
                              f"{type(enc).__name__}")
            sizes = []
            hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
                     for m in enc.modules() if isinstance(m, nn.Conv2d)]
            for b in (2, 3, 1):
                case = f"{spec} on a batch of {b} images"
                sizes.clear()
                try:
                    with torch.no_grad():
                        out = enc(torch.rand(b, 3, 32, 32) - 0.5)
                except Exception as err:
                    hint = (f"it raised {type(err).__name__}: {err}. "
                            + ("It fails on a batch of {b} only: do not build the batch size "
                               "into the network (nn.Flatten() keeps any batch)".format(b=b)
                               if b != 2 else ""))
                    raise _Failed(case, hint.strip()) from None
                if tuple(out.shape) != (b, 2 * latent_dim):
                    raise _Failed(case, "the output holds mean and log-variance side by side: "
                                  "(B, 2 * latent_dim)", (b, 2 * latent_dim), tuple(out.shape))
                if sizes != [16, 8, 4]:
                    raise _Failed(case, "three convolutions with kernel 4, stride 2, padding "
                                  "1 halve the resolution: 32 -> 16 -> 8 -> 4", [16, 8, 4], sizes)
            for h in hooks:
                h.remove()
            g = _gen(3)
            xa, xb = (0.5 * torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
                      for _ in range(2))
            f = copy.deepcopy(enc).double().eval()
            with torch.no_grad():
                err = superposition_error(f, xa, xb) / max(f(xa).abs().max().item(), 1e-12)
            if err < 1e-9:
                raise _Failed(f"{spec}: the superposition test of notebook 2", "your encoder is "
                              "affine: its activations do nothing. nn.LeakyReLU(True) sets "
                              "negative_slope = 1.0 (the identity); use nn.LeakyReLU(0.01) or "
                              "nn.SiLU()", "> 1e-9 (non-linear)", f"{err:.2g}")
            n, want = count_parameters(enc), count_parameters(_spec_encoder(latent_dim, width))
            if n != want:
                norm = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
                no_bias = sum(m.out_channels for m in enc.modules()
                              if isinstance(m, nn.Conv2d) and m.bias is None)
                own = [m for m in enc.modules() if not isinstance(m, (nn.Conv2d, nn.Linear, *norm))
                       and any(True for _ in m.parameters(recurse=False))]
                if no_bias and want - n == no_bias and not any(
                        isinstance(m, norm) for m in enc.modules()):
                    raise _Failed(f"{spec}: the parameter count", f"{no_bias} parameters short, "
                                  "exactly the biases of your convolutions with bias=False: the "
                                  "specification's convolutions have biases (nn.Conv2d's "
                                  "default)", want, n)
                if own and not any(isinstance(m, norm) for m in enc.modules()):
                    raise _Failed(f"{spec}: the parameter count", f"{n - want:+d} parameters: "
                                  f"your {type(own[0]).__name__} has parameters of its own; the "
                                  "specification asks for a parameter-free non-linearity "
                                  "(nn.SiLU(), nn.LeakyReLU(0.01), ...)", want, n)
                raise _Failed(f"{spec}: the parameter count", "the specified layers (three "
                              "convolutions with biases, widths width, 2 width, 2 width, then "
                              "one Linear, no normalisation) have exactly this many parameters",
                              want, n)
        return "2 specifications: output shape on batches of 1, 2 and 3, resolutions " \
               "16 -> 8 -> 4, non-linear, parameter count"
    return _run("make_encoder", body)


# --- notebook 3: reparameterization ---------------------------------------------------------------

def check_reparameterize(fn) -> Result:
    """fn(mean, log_var) -> z = mean + exp(log_var / 2) * eps, eps ~ N(0, I), gradients kept."""
    def body():
        case = "mean, log_var of shape (4, 3)"
        mean = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        log_var = torch.tensor([[-2.0, 0.5, 1.5]] * 4, dtype=torch.float64, requires_grad=True)
        z = _call(fn, case, mean, log_var)
        if not isinstance(z, torch.Tensor) or z.shape != mean.shape:
            raise _Failed(case, "z has the shape of mean: one sample per element",
                          tuple(mean.shape), getattr(z, "shape", type(z).__name__))
        no_grad_hint = ("no gradient reaches {}: the sample is cut from the graph (torch.normal, "
                        "Normal(...).sample() or .detach()). Write z = mean + std * eps with "
                        "eps = torch.randn_like(mean)")
        if not z.requires_grad:
            raise _Failed(case, no_grad_hint.format("mean and log_var"))
        g_mean, g_lv = torch.autograd.grad(z.sum(), (mean, log_var), allow_unused=True)
        for name, grad in (("mean", g_mean), ("log_var", g_lv)):
            if grad is None or not grad.abs().sum() > 0:
                raise _Failed(case, no_grad_hint.format(name))

        # the distribution: 100,000 draws per element
        n = 100_000
        lvs = torch.tensor([-3.0, -1.0, 0.7, 2.0], dtype=torch.float64)
        mu = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
        case = f"{n:,} draws at mean {mu.tolist()}, log_var {lvs.tolist()}"
        with torch.no_grad():
            zs = _call(fn, case, mu.expand(n, 4), lvs.expand(n, 4))
        zs = _as_tensor(zs)
        sd, centre = zs.std(0), zs.mean(0)
        want = (0.5 * lvs).exp()
        if (zs - zs[:1]).abs().max() == 0:
            raise _Failed(case, "every row got the same z: draw eps for every element "
                          "(torch.randn_like(mean))", _fmt(want), _fmt(sd))
        ratio = sd / want
        if not ((ratio - 1).abs() < 0.02).all():
            for guess, hint in (
                    (lvs.exp(), "exp(log_var) is the variance: the standard deviation is "
                     "exp(0.5 * log_var)"),
                    (lvs.abs(), "log_var is the log-variance, not the standard deviation: "
                     "std = exp(0.5 * log_var)"),
                    (torch.ones(4, dtype=torch.float64), "the spread ignores log_var: multiply "
                     "eps by std = exp(0.5 * log_var)"),
                    ((0.5 * lvs).exp().sqrt(), "std = exp(0.5 * log_var), not its square root"),
                    ((0.5 * lvs).exp() / math.sqrt(12), "eps must be standard normal, "
                     "torch.randn_like(mean), not uniform (torch.rand_like)")):
                if ((sd / guess - 1).abs() < 0.02).all():
                    raise _Failed(case + ": standard deviations", hint, want, sd)
            raise _Failed(case + ": standard deviations", "z must have standard deviation "
                          "exp(0.5 * log_var)", want, sd)
        if not ((centre - mu).abs() < 5 * want / math.sqrt(n)).all():
            raise _Failed(case + ": means", "z must be centred on mean: z = mean + std * eps",
                          mu, centre)
        corr = torch.corrcoef(zs.T)[0, 1:]
        if corr.abs().max() > 0.05:
            raise _Failed(case + ": correlation of the columns", "one noise value is shared "
                          "by several elements: draw eps with torch.randn_like(mean)", 0.0,
                          corr.abs().max())
        # the gradient of the reparameterized sample: dz/dlog_var = 0.5 * (z - mean)
        case = "the gradient dz/dlog_var"
        mean = torch.zeros(3, 5, dtype=torch.float64, requires_grad=True)
        log_var = torch.linspace(-4, 3, 15, dtype=torch.float64).view(3, 5).requires_grad_()
        z = _call(fn, case, mean, log_var)
        g = torch.autograd.grad(z.sum(), log_var)[0]
        _compare(g, 0.5 * (z - mean).detach(), case, rtol=1e-6, atol=1e-10,
                 fallback="z = mean + exp(0.5 * log_var) * eps gives dz/dlog_var = "
                 "0.5 * (z - mean): build z from mean and log_var directly")
        case = "extreme log-variances (-30 and 30)"
        z = _call(fn, case, torch.zeros(2, dtype=torch.float64),
                  torch.tensor([-30.0, 30.0], dtype=torch.float64))
        if not torch.isfinite(_as_tensor(z)).all():
            raise _Failed(case, "z must stay finite: exp(0.5 * log_var) is finite for any "
                          "log_var a model produces", "finite values", z)
        return "gradients reach mean and log_var; 100,000 draws have the right mean, " \
               "standard deviation and independence"
    return _run("reparameterize", body)


def _score_reference(f, mu, sigma, eps, baseline=0.0):
    fz = f(mu + sigma * eps) - baseline
    return torch.stack([fz * eps / sigma, fz * (eps.pow(2) - 1.0) / sigma], dim=1)


def check_score_function(fn) -> Result:
    """fn(f, mu, sigma, eps, baseline) -> (n, 2): per-draw score-function estimates."""
    def body():
        from .demos import quadratic_gradient, reparam_gradients, score_function_gradients
        g = _gen(4)

        def quad(z):
            return (z - 2.0) ** 2

        cases = [("f(z) = (z - 2)^2, mu = 0.5, sigma = 0.5, baseline 0", quad, 0.5, 0.5, 0.0),
                 ("f(z) = (z - 2)^2, mu = 0.5, sigma = 0.5, baseline 2.5", quad, 0.5, 0.5, 2.5),
                 ("f(z) = sin(3z), mu = -1, sigma = 2, baseline -0.3", lambda z: torch.sin(3 * z),
                  -1.0, 2.0, -0.3)]
        for case, f, mu, sigma, b in cases:
            eps = torch.randn(6, generator=g, dtype=torch.float64)
            expected = _score_reference(f, mu, sigma, eps, b)
            if b == 0.0:  # the notebook's tested function agrees
                assert torch.allclose(expected, score_function_gradients(f, mu, sigma, eps))
            mistakes = [
                (lambda: _score_reference(f, mu, sigma, eps, b) * sigma, "the score of mu is "
                 "d log N(z; mu, sigma^2) / d mu = eps / sigma: divide by sigma"),
                (lambda: torch.stack([(f(mu + sigma * eps) - b) * eps / sigma,
                                      (f(mu + sigma * eps) - b) * eps ** 2 / sigma], 1),
                 "the score of sigma is (eps^2 - 1) / sigma: without the - 1 its mean is not "
                 "zero and the estimator is biased"),
                (lambda: _score_reference(f, mu, sigma, eps, -b), "subtract the baseline from "
                 "f(z), do not add it"),
                (lambda: _score_reference(f, mu, sigma, eps, 0.0), "the baseline is ignored: "
                 "use (f(z) - baseline) * score"),
                (lambda: reparam_gradients(f, mu, sigma, eps), "that is the reparameterization "
                 "estimator (it differentiates f); the score function uses only values of f"),
                (lambda: _score_reference(f, mu, sigma, eps, b).flip(1), "the columns are "
                 "d/dmu first, then d/dsigma"),
                (lambda: _score_reference(lambda z: f(torch.full_like(z, mu)), mu, sigma, eps,
                                          b), "evaluate f at the sample z = mu + sigma * eps, "
                 "not at mu"),
            ]
            got = _call(fn, case, f, mu, sigma, eps, b)
            _compare(got, expected, case, mistakes, (), rtol=1e-9, atol=1e-12,
                     shape_hint="One row per draw, columns d/dmu and d/dsigma.")
        # what the baseline buys, on the notebook's objective: same draws, same mean
        eps = torch.randn(200_000, generator=g, dtype=torch.float64)
        plain = _as_tensor(_call(fn, "200,000 draws", quad, 0.5, 0.5, eps, 0.0))
        mean_f = float(quad(0.5 + 0.5 * eps).mean())
        based = _as_tensor(_call(fn, "200,000 draws", quad, 0.5, 0.5, eps, mean_f))
        exact = torch.tensor(quadratic_gradient(0.5, 0.5), dtype=torch.float64)
        se = based.std(0) / math.sqrt(len(eps))
        if not ((based.mean(0) - exact).abs() < 5 * se).all():
            raise _Failed("200,000 draws with baseline E[f(z)]", "with a baseline the "
                          "estimator must stay unbiased", exact, based.mean(0))
        ratio = plain.var(0)[0] / based.var(0)[0]
        return (f"3 inputs; with the baseline E[f(z)] the estimate of d/dmu stays unbiased and "
                f"its variance falls {ratio:.1f}-fold")
    return _run("score_function", body)


# --- notebook 4: the loss -----------------------------------------------------------------------

def _kl_reference(mean, log_var):
    q = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    return torch.distributions.kl_divergence(q, p).sum(-1)


def check_gaussian_kl(fn) -> Result:
    """fn(mean, log_var) -> (B,): KL(N(mean, exp(log_var)) || N(0, I)), summed over dims."""
    def body():
        g = _gen(5)
        cases = [
            ("random codes, B = 4, d = 8", torch.randn(4, 8, generator=g, dtype=torch.float64),
             torch.randn(4, 8, generator=g, dtype=torch.float64)),
            ("q equal to the prior (mean 0, log_var 0): KL = 0",
             torch.zeros(2, 5, dtype=torch.float64), torch.zeros(2, 5, dtype=torch.float64)),
            ("one image, one dimension", torch.tensor([[1.5]], dtype=torch.float64),
             torch.tensor([[-3.0]], dtype=torch.float64)),
            ("very narrow and very wide posteriors (log_var -12 and 6)",
             torch.tensor([[0.3, -0.2]], dtype=torch.float64),
             torch.tensor([[-12.0, 6.0]], dtype=torch.float64)),
        ]

        def kl_terms(m, lv):
            return 0.5 * (m.pow(2) + lv.exp() - 1 - lv)

        mistakes = [
            (lambda m, lv: kl_terms(m, lv).mean(-1), "you averaged over the latent dimensions:"
             " the KL of a code is the sum over its dimensions"),
            (lambda m, lv: 2 * kl_terms(m, lv).sum(-1), "a factor of 2 too large: the "
             "closed form has 0.5 in front"),
            (lambda m, lv: -kl_terms(m, lv).sum(-1), "the sign is flipped: a KL divergence "
             "is never negative"),
            (lambda m, lv: 0.5 * (m.pow(2) + lv.pow(2) - 1 - lv.pow(2).log()).sum(-1),
             "log_var is the log-variance, not the standard deviation: sigma^2 = exp(log_var)"),
            (lambda m, lv: 0.5 * (m.pow(2) + (2 * lv).exp() - 1 - 2 * lv).sum(-1),
             "exp(log_var) is already the variance: you squared it (log-variance taken for "
             "a log standard deviation)"),
            (lambda m, lv: 0.5 * (m.pow(2) + lv.exp() - lv).sum(-1), "the - 1 in each term "
             "is missing (check: mean 0, log_var 0 must give KL = 0)"),
            (lambda m, lv: kl_terms(m, lv).sum(), "one value per image, (B,): leave the batch "
             "mean to the trainer"),
        ]
        for case, m, lv in cases:
            got = _call(fn, case, m, lv)
            _compare(got, _kl_reference(m, lv), case, mistakes, (m, lv), rtol=1e-6,
                     atol=1e-9, shape_hint="Sum over the latent dimensions, one value per "
                     "image.")
        return f"{len(cases)} inputs against torch.distributions.kl_divergence"
    return _run("gaussian_kl", body)


def check_bits_per_dim(fn) -> Result:
    """fn(log_px, image_shape) -> bits per dimension, -log_px / (C H W ln 2)."""
    def body():
        cases = [
            ("log p(x) = [-7000, -10000] nats, CIFAR-10 images (3, 32, 32)",
             torch.tensor([-7000.0, -10000.0], dtype=torch.float64), (3, 32, 32)),
            ("the uniform model, log p(x) = -3072 ln 256: exactly 8 bits/dim",
             torch.tensor([-3072 * math.log(256)], dtype=torch.float64), (3, 32, 32)),
            ("grey-scale 28 x 28 images (1, 28, 28)",
             torch.tensor([-600.0, -1200.0, -900.0], dtype=torch.float64), (1, 28, 28)),
        ]

        def dims(shape):
            return math.prod(shape)

        mistakes = [
            (lambda lp, s: -lp / dims(s), "nats for bits: divide by ln 2 as well"),
            (lambda lp, s: lp / (dims(s) * math.log(2)), "the sign: bits/dim is the negative "
             "log-likelihood, a positive code length"),
            (lambda lp, s: -lp / (s[-1] * s[-2] * math.log(2)), "count every sub-pixel: "
             "C x H x W dimensions (3 x 32 x 32 = 3072), not the H x W pixels"),
            (lambda lp, s: -lp * math.log(2) / dims(s), "multiply by 1 / ln 2 (= log2(e)), "
             "not by ln 2"),
            (lambda lp, s: -lp / math.log(2), "divide by the number of dimensions too"),
        ]
        for case, lp, shape in cases:
            got = _call(fn, case, lp, shape)
            _compare(got, losses.bits_per_dim(lp, dims(shape)), case, mistakes, (lp, shape),
                     rtol=1e-6, atol=1e-9, shape_hint="One value per image.")
        return f"{len(cases)} inputs against losses.bits_per_dim; the uniform model gives 8"
    return _run("bits_per_dim", body)


def _logistic_mass(x, mean, log_scale, half=losses.HALF_BIN, low_edge=True, high_edge=True,
                   shift=0.0, scale=None):
    """The bin masses, with switches that make known mistakes (float64 inputs)."""
    s = log_scale.exp() if scale is None else scale
    up = torch.sigmoid((x + shift + half - mean) / s)
    down = torch.sigmoid((x + shift - half - mean) / s)
    mass = up - down
    if low_edge:
        mass = torch.where(x < losses.HALF_BIN, up, mass)
    if high_edge:
        mass = torch.where(x > 1 - losses.HALF_BIN, 1 - down, mass)
    return mass.log()


def _pixelcnn_shortcut(x, mean, log_scale, bins_per_unit):
    """PixelCNN++'s code: where a bin's mass is below 1e-5, the density at its centre over
    bins_per_unit (its width); edge bins exact."""
    u = (x - mean) / log_scale.exp()
    approx = -u - log_scale - 2 * torch.nn.functional.softplus(-u) - math.log(bins_per_unit)
    mid = _logistic_mass(x, mean, log_scale, low_edge=False, high_edge=False)
    exact = _logistic_mass(x, mean, log_scale)
    inner = torch.where(mid.exp() > 1e-5, mid, approx)
    return torch.where((x < losses.HALF_BIN) | (x > 1 - losses.HALF_BIN), exact, inner)


def check_discretized_logistic(fn) -> Result:
    """fn(x, mean, log_scale) -> log P(x) per sub-pixel, under a logistic discretized to
    256 bins of width 1/255 with the tails in the edge bins."""
    def body():
        g = _gen(6)
        ks = torch.randint(1, 255, (12,), generator=g)
        levels = torch.arange(256, dtype=torch.float64) / 255
        scales = torch.empty(12, dtype=torch.float64).uniform_(0.01, 0.2, generator=g)
        cases = [
            ("interior pixel values (0 < k < 255)", ks.double() / 255,
             ks.double() / 255 + scales * torch.randn(12, generator=g, dtype=torch.float64),
             scales.log()),
            ("a very wide logistic (scale 1000)", levels[[0, 100, 255]],
             torch.tensor(0.5, dtype=torch.float64), torch.tensor(math.log(1000.0),
                                                                  dtype=torch.float64)),
            ("all 256 values at mean 0.3, scale 0.05 (the masses must sum to 1)", levels,
             torch.tensor(0.3, dtype=torch.float64), torch.tensor(math.log(0.05),
                                                                  dtype=torch.float64)),
            ("the edge bins k = 0 and k = 255 at means near the edges",
             torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64),
             torch.tensor([0.02, 0.4, 0.97, 0.6], dtype=torch.float64),
             torch.tensor([math.log(0.03), math.log(0.1), math.log(0.03), math.log(0.1)],
                          dtype=torch.float64)),
            ("float32, far in the tails (pixels 200 to 220 scales from the mean)",
             torch.tensor([10 / 255, 250 / 255, 0.5]), torch.tensor([0.9, 0.1, 0.1]),
             torch.tensor([math.log(0.004), math.log(0.004), math.log(0.002)])),
        ]
        mistakes = [
            (lambda x, m, ls: _logistic_mass(x, m, ls, low_edge=False, high_edge=False),
             "a missing edge bin: k = 0 takes all the mass below it, "
             "P = sigmoid((x + 0.5/255 - mean) / s), and k = 255 all the mass above, "
             "P = 1 - sigmoid((x - 0.5/255 - mean) / s)"),
            (lambda x, m, ls: _logistic_mass(x, m, ls, low_edge=False),
             "the lowest bin k = 0 must take all the mass below it: "
             "P = sigmoid((x + 0.5/255 - mean) / s)"),
            (lambda x, m, ls: _logistic_mass(x, m, ls, high_edge=False),
             "the highest bin k = 255 must take all the mass above it: "
             "P = 1 - sigmoid((x - 0.5/255 - mean) / s)"),
            (lambda x, m, ls: _logistic_mass(x, m, ls, half=0.5 / 256),
             "a bin is 1/255 wide here (x = k / 255): its edges are x -+ 0.5 / 255"),
            (lambda x, m, ls: _logistic_mass(x, m, ls, half=1 / 255),
             "the bin edges are x -+ 0.5 / 255 (half a bin each side), not x -+ 1 / 255"),
            (lambda x, m, ls: _logistic_mass(x, m, ls, shift=0.5 / 255),
             "the bin of x runs from x - 0.5/255 to x + 0.5/255: you forgot the - 0.5 "
             "(your bin starts at x)"),
            (lambda x, m, ls: _logistic_mass(x, m, ls, scale=ls),
             "log_scale is log s: use s = exp(log_scale)"),
            (lambda x, m, ls: _pixelcnn_shortcut(x, m, ls, 127.5),
             "a bin is 1/255 wide here: PixelCNN++'s code scores x in "
             "[-1, 1], where bins are 2/255 wide and log(127.5) appears; on [0, 1] it is "
             "log(255)"),
            (lambda x, m, ls: _pixelcnn_shortcut(x, m, ls, 255.0),
             "the mass must be exact where it is small too: the density "
             "at the bin's centre times its width (PixelCNN++'s shortcut) is off there. Use "
             "sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(b - a)), in logs"),
            (lambda x, m, ls: -(x - m) / ls.exp() - ls - 2 * torch.nn.functional.softplus(
                -(x - m) / ls.exp()) - math.log(255),
             "a density times the bin width is not the mass of the bin: integrate, "
             "sigmoid(upper edge) - sigmoid(lower edge)"),
        ]
        for case, x, m, ls in cases:
            got = _call(fn, case, x, m, ls)
            expected = losses._log_bin_mass(x.double(), m.double(), ls.double())
            if x.dtype == torch.float32:
                expected = losses._log_bin_mass(x, m, ls).double()
            tails = x.dtype == torch.float32
            _compare(got, expected, case, mistakes, (x, m, ls),
                     rtol=1e-4 if tails else 1e-7, atol=1e-7,
                     fallback="far in the tails the mass must still be exact: an approximation "
                     "(such as the density at the bin's centre times its width) is off there. "
                     "Use sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(b - a)), "
                     "in logs" if tails else "",
                     shape_hint="One log-probability per sub-pixel: the shape of x.",
                     nan_hint="a NaN is the log of a negative number: the mass "
                     "sigmoid(upper) - sigmoid(lower) needs s = exp(log_scale) > 0 and the "
                     "upper edge above the lower",
                     nonfinite_hint="log(sigmoid(a) - sigmoid(b)) is log 0 far in the tails, "
                     "where both sigmoids round to the same number. Use sigmoid(a) - sigmoid(b)"
                     " = sigmoid(a) * sigmoid(-b) * (1 - exp(b - a)): log it term by term with "
                     "F.logsigmoid and torch.log(-torch.expm1(b - a))")
        total = float(_as_tensor(_call(fn, "", levels, torch.tensor(0.3, dtype=torch.float64),
                                       torch.tensor(math.log(0.05), dtype=torch.float64)))
                      .exp().sum())
        return (f"{len(cases)} inputs against losses.discretized_logistic_log_likelihood's "
                f"bin masses, edge bins and far tails included; the 256 masses sum to "
                f"{total:.12f}")
    return _run("discretized_logistic", body)


# --- notebook 5: training ----------------------------------------------------------------------

def check_batch_sizes(fn) -> Result:
    """fn(n, batch_size, drop_last) -> list of the batch sizes of one epoch."""
    def body():
        cases = [(1000, 128, False), (1000, 128, True), (50_000, 128, False), (500, 100, False),
                 (80, 128, False), (80, 128, True), (50_000, 100, True)]
        mistakes = [
            (lambda n, b, d: [b] * (n // b) + ([n % b] if n % b else []),
             "drop_last=True drops the short last batch"),
            (lambda n, b, d: [b] * (n // b), "keep the short last batch "
             "(drop_last=False): its n % batch_size images are part of the epoch"),
            (lambda n, b, d: [b] * (n // b) + ([] if d else [n % b]), "no empty batch when "
             "batch_size divides n (n % batch_size == 0)"),
            (lambda n, b, d: [b] * -(-n // b), "the last batch holds only the images left, "
             "n - (batches - 1) * batch_size"),
        ]
        for n, b, d in cases:
            case = f"n={n:,}, batch_size={b}, drop_last={d}"
            images = torch.zeros(n, 1, 1, 1, dtype=torch.uint8)
            expected = [len(x) for x, _ in CifarLoader(images, batch_size=b, shuffle=False,
                                                        drop_last=d)]
            got = _call(fn, case, n, b, d)
            try:
                got_list = [int(v) for v in got]
            except Exception:
                raise _Failed(case, "return a list of integers", expected, got) from None
            if got_list != expected:
                hint = next((h for w, h in mistakes if w(n, b, d) == got_list),
                            "one batch of batch_size images after another; what is left over "
                            "forms the last batch")
                raise _Failed(case, hint, expected, got_list)
        return f"{len(cases)} epochs against the batches CifarLoader yields"
    return _run("batch_sizes", body)


def _reference_step(model, opt, x, kl_weight, max_norm, amp_dtype, *, kl=True, mean=True,
                    zero=True, clip="before", autocast=True):
    """One training step as train.train_step takes it; keyword switches make known mistakes."""
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32,
                        enabled=autocast and amp_dtype is not None):
        out = model(x)
    w = kl_weight if kl else 1.0
    per_image = -(out.reconstruction - w * out.kl)
    loss = per_image.mean() if mean else per_image.sum()
    if zero:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    params = list(model.parameters())
    if clip == "before":
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    elif clip == "after-norm":  # the norm after clipping returned
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
    opt.step()
    return loss.detach(), norm


class _AutocastProbe(nn.Module):
    """Wraps a model; records whether each forward pass ran under autocast, and its dtype."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        dev = x.device.type
        self.seen.append(torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev)
                         else None)
        return self.model(x)


def _trajectory(step_fn, base, x, kl_weight, max_norm, amp_dtype, steps=2, **kw):
    """(losses, norms, final parameters, autocast dtypes seen) of `steps` steps from `base`."""
    model = _AutocastProbe(copy.deepcopy(base))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = []
    for s in range(steps):
        torch.manual_seed(100 + s)  # the same noise z for every trajectory
        out.append(step_fn(model, opt, x, kl_weight, max_norm, amp_dtype, **kw))
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    return out, params, model.seen


def check_training_step(fn) -> Result:
    """fn(model, optimizer, x, kl_weight, max_norm, amp_dtype) -> (loss, gradient norm)."""
    def body():
        torch.manual_seed(0)
        base = build_model(ModelConfig(width=4, latent_dim=4, res_blocks=0,
                                       likelihood="logistic"))
        g = _gen(7)
        x = torch.randint(0, 256, (6, 3, 32, 32), generator=g).float() / 255
        cases = [("fp32, kl_weight 0.5, max_norm 1e9 (no clipping)", 0.5, 1e9, None),
                 ("fp32, kl_weight 1.0, max_norm 5 (clipping active)", 1.0, 5.0, None),
                 ("bf16 autocast, kl_weight 0.3, max_norm 5", 0.3, 5.0, torch.bfloat16)]
        mistakes = [
            (dict(zero=False), "call optimizer.zero_grad() before backward(): the second "
             "step's gradient included the first step's"),
            (dict(clip="none"), "clip the gradient with torch.nn.utils.clip_grad_norm_(params, "
             "max_norm) between backward() and step() (clipping after the step does nothing)"),
            (dict(clip="after-norm"), "return the norm clip_grad_norm_ returns: the norm "
             "before clipping (it is what tells you clipping happened)"),
            (dict(mean=False), "sum where a mean belongs: average the per-image loss over "
             "the batch (the gradient was batch-size times too large)"),
            (dict(kl=False), "weight the KL term by kl_weight: "
             "losses.training_loss(out, kl_weight)"),
        ]
        for case, w, max_norm, amp in cases:
            ref, ref_params, _ = _trajectory(_reference_step, base, x, w, max_norm, amp)

            def learner(model, opt, x, w, max_norm, amp, case=case):
                return _call(fn, case, model, opt, x, w, max_norm, amp)

            got, got_params, seen = _trajectory(learner, base, x, w, max_norm, amp)
            if amp is not None and any(d != amp for d in seen):
                raise _Failed(case, "run the forward pass under torch.autocast(x.device.type, "
                              "dtype=amp_dtype) when amp_dtype is given", amp, seen[-1])
            if amp is None and any(d is not None for d in seen):
                raise _Failed(case, "amp_dtype None means fp32: no autocast "
                              "(enabled=amp_dtype is not None)", None, seen[-1])
            for s, ((rl, rn), gv) in enumerate(zip(ref, got)):
                what = f"{case}, step {s + 1}"
                if not (isinstance(gv, (tuple, list)) and len(gv) == 2):
                    raise _Failed(what, "return (loss, gradient norm)")
                got_all = torch.cat([_as_tensor(v).reshape(1) for v in gv]
                                    + [got_params.double()])
                exp_all = torch.cat([_as_tensor(rl).reshape(1), _as_tensor(rn).reshape(1),
                                     ref_params.double()])
                if _close(got_all, exp_all, rtol=1e-4, atol=1e-6):
                    continue
                for kw, hint in mistakes:
                    m, m_params, _ = _trajectory(_reference_step, base, x, w, max_norm, amp,
                                                 **kw)
                    ml, mn = m[s]
                    mut = torch.cat([_as_tensor(ml).reshape(1), _as_tensor(mn).reshape(1),
                                     m_params.double()])
                    if _close(got_all, mut, rtol=1e-4, atol=1e-6):
                        raise _Failed(what, hint, f"loss {float(rl):.6g}, norm {float(rn):.6g}",
                                      f"loss {float(gv[0]):.6g}, norm {float(gv[1]):.6g}")
                raise _Failed(what, "the loss is -(reconstruction - kl_weight * kl).mean(); "
                              "zero_grad, backward, clip_grad_norm_, step, in that order",
                              f"loss {float(rl):.6g}, norm {float(rn):.6g}",
                              f"loss {float(gv[0]):.6g}, norm {float(gv[1]):.6g}")
        return "2 steps in each of 3 settings against train.train_step's sequence: loss, " \
               "gradient norm, parameters and autocast"
    return _run("training_step", body)


# --- notebook 6: results ------------------------------------------------------------------------

def _lerp(a, b, steps):
    t = torch.linspace(0, 1, steps, dtype=a.dtype)[:, None]
    return (1 - t) * a + t * b


def check_interpolate(fn) -> Result:
    """fn(z_a, z_b, steps) -> (steps, D): the straight line from z_a to z_b, both included."""
    def body():
        g = _gen(8)
        cases = [("z_a = [0, 0, 0], z_b = [1, 2, 4], 5 steps", torch.zeros(3, dtype=torch.float64),
                  torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64), 5),
                 ("two random 128-d codes, 10 steps", torch.randn(128, generator=g,
                                                                  dtype=torch.float64),
                  torch.randn(128, generator=g, dtype=torch.float64), 10),
                 ("2 steps: the endpoints alone", torch.tensor([1.0, -1.0], dtype=torch.float64),
                  torch.tensor([3.0, 5.0], dtype=torch.float64), 2)]
        mistakes = [
            (lambda a, b, n: torch.stack([(1 - t) * a + t * b for t in
                                          torch.arange(n, dtype=a.dtype) / n]),
             "the path must end at z_b: t = torch.linspace(0, 1, steps), both ends included"),
            (lambda a, b, n: _lerp(b, a, n), "the path starts at z_a (t = 0) and ends at z_b"),
            (lambda a, b, n: _lerp(a, b, n + 1), "exactly `steps` codes, the endpoints "
             "included"),
        ]
        for case, a, b, n in cases:
            got = _call(fn, case, a, b, n)
            _compare(got, _lerp(a, b, n), case, mistakes, (a, b, n), rtol=1e-9, atol=1e-12,
                     shape_hint="One row per step, (steps, D).")
        return f"{len(cases)} inputs against (1 - t) z_a + t z_b"
    return _run("interpolate", body)


def _slerp(a, b, steps):
    t = torch.linspace(0, 1, steps, dtype=a.dtype)[:, None]
    cos = (a @ b / (a.norm() * b.norm())).clamp(-1, 1)
    omega = torch.arccos(cos)
    if omega.sin() < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / omega.sin()


def check_slerp(fn) -> Result:
    """fn(z_a, z_b, steps) -> (steps, D): spherical interpolation."""
    def body():
        g = _gen(9)
        a128 = torch.randn(128, generator=g, dtype=torch.float64)
        cases = [("orthogonal unit vectors [1, 0] and [0, 1], 3 steps",
                  torch.tensor([1.0, 0.0], dtype=torch.float64),
                  torch.tensor([0.0, 1.0], dtype=torch.float64), 3),
                 ("two random 128-d codes, 7 steps", a128,
                  torch.randn(128, generator=g, dtype=torch.float64), 7),
                 ("codes of different lengths, [3, 0] and [0, 1], 5 steps",
                  torch.tensor([3.0, 0.0], dtype=torch.float64),
                  torch.tensor([0.0, 1.0], dtype=torch.float64), 5),
                 ("z_b = z_a (the angle is 0)", a128, a128.clone(), 4)]

        def unnormalised(a, b, n):
            t = torch.linspace(0, 1, n, dtype=a.dtype)[:, None]
            omega = torch.arccos(a @ b)
            return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / omega.sin()

        mistakes = [
            (_lerp, "that is linear interpolation: its midpoint is shorter than both ends. "
             "Slerp follows the arc, (sin((1-t) W) z_a + sin(t W) z_b) / sin W, with "
             "cos W = z_a . z_b / (|z_a| |z_b|)"),
            (unnormalised, "the angle needs the lengths: cos W = z_a . z_b / (|z_a| |z_b|)"),
        ]
        for case, a, b, n in cases:
            got = _call(fn, case, a, b, n)
            _compare(got, _slerp(a, b, n), case, mistakes, (a, b, n), rtol=1e-7, atol=1e-9,
                     shape_hint="One row per step, (steps, D).",
                     nonfinite_hint="when z_a and z_b are parallel, sin W = 0: fall back to "
                     "linear interpolation there (the two agree as W -> 0), and clamp cos W to "
                     "[-1, 1], which rounding can overshoot" if torch.equal(a, b)
                     else "arccos of a number outside [-1, 1] is NaN: the angle needs the "
                     "lengths, cos W = z_a . z_b / (|z_a| |z_b|)")
        return f"{len(cases)} inputs against the closed form, parallel codes included"
    return _run("slerp", body)


def check_active_units(fn) -> Result:
    """fn(means, threshold) -> int: units u with Var over images of means[:, u] > threshold."""
    def body():
        g = _gen(10)
        stds = torch.tensor([0.0, 0.05, 0.2, 1.0, 3.0, 0.001], dtype=torch.float64)
        offsets = torch.tensor([5.0, 0.0, -1.0, 0.0, 2.0, 0.3], dtype=torch.float64)
        means = offsets + stds * torch.randn(500, 6, generator=g, dtype=torch.float64)
        cases = [("500 codes, 6 units with standard deviations "
                  "[0, 0.05, 0.2, 1, 3, 0.001] around means [5, 0, -1, 0, 2, 0.3]", means, 0.01),
                 ("the same codes, threshold 0.001", means, 0.001),
                 ("the same codes, threshold 100", means, 100.0),
                 ("3 codes of 4 units", torch.randn(3, 4, generator=g, dtype=torch.float64), 0.01)]
        mistakes = [
            (lambda m, t: int((m.var(1) > t).sum()), "take the variance over images "
             "(dim 0), one value per unit, not over the units of each image"),
            (lambda m, t: int((m.std(0) > t).sum()), "compare the variance, not the standard "
             "deviation, with the threshold"),
            (lambda m, t: int((m.pow(2).mean(0) > t).sum()), "a unit whose code is the same "
             "for every image carries nothing, even far from 0: use the variance over images, "
             "not the mean square"),
            (lambda m, t: int((m.abs().mean(0) > t).sum()), "a unit is active when its code "
             "moves with the image: its variance over images, not its size"),
        ]
        for case, m, t in cases:
            expected = int((m.var(0) > t).sum())
            got = _call(fn, case, m, t)
            _compare(got, torch.tensor(float(expected)), case, mistakes, (m, t))
        return f"{len(cases)} inputs against Cov_x(E_q[z_u]) > threshold (latent_statistics)"
    return _run("active_units", body)


# --- notebook 7: why samples are blobs ----------------------------------------------------------

def check_free_bits_kl(fn) -> Result:
    """fn(kl_per_dim, free_bits) -> the KL with free bits, sum_u max(mean_b KL_bu, free_bits)."""
    def body():
        g = _gen(11)
        rand = torch.rand(4, 6, generator=g, dtype=torch.float64) * torch.tensor(
            [0.05, 0.2, 0.6, 1.5, 3.0, 0.01], dtype=torch.float64)
        uneven = torch.tensor([[2.0, 0.1], [0.0, 0.1], [0.0, 0.1], [0.0, 0.1]], dtype=torch.float64)
        cases = [("random KL per unit (B = 4, 6 units), free_bits 0.5 nats", rand, 0.5),
                 ("free_bits 0: the plain KL, averaged over the batch", rand, 0.0),
                 ("one unit used by one image only, free_bits 0.5", uneven, 0.5),
                 ("one image (B = 1), free_bits 0.25", rand[:1], 0.25),
                 ("every unit above free_bits (0.001)", rand + 0.01, 0.001)]

        def reference(kl, lam):
            out = losses.ELBO(elbo=-kl.sum(1), reconstruction=torch.zeros(len(kl),
                              dtype=kl.dtype), kl=kl.sum(1), kl_per_dim=kl)
            return losses.training_loss(out, kl_weight=1.0, free_bits=lam)

        mistakes = [
            (lambda kl, lam: kl.clamp(min=lam).sum(1).mean(), "clamp each unit's "
             "batch-average KL, not each image's: one image's large KL lifts the unit above "
             "the floor for the whole batch"),
            (lambda kl, lam: kl.sum(1).mean().clamp(min=lam), "free bits apply to each unit "
             "(latent dimension), not to the total KL"),
            (lambda kl, lam: kl.mean(0).clamp(max=lam).sum(), "max(KL, free_bits), not min: "
             "a unit below the floor is charged free_bits, one above it its own KL"),
            (lambda kl, lam: (kl.mean(0) - lam).clamp(min=0).sum(), "the floor is charged, "
             "not subtracted: max(KL, free_bits), which is constant (no gradient) below it"),
            (lambda kl, lam: kl.mean(0).clamp(min=lam * math.log(2)).sum(), "free_bits is in "
             "nats, like the KL: no conversion (nats for bits)"),
            (lambda kl, lam: kl.mean(0).clamp(min=lam / math.log(2)).sum(), "free_bits is in "
             "nats, like the KL: no conversion (nats for bits)"),
            (lambda kl, lam: kl.mean(0).clamp(min=lam).mean(), "sum over the units, do not "
             "average them"),
        ]
        for case, kl, lam in cases:
            got = _call(fn, case, kl, lam)
            _compare(got, reference(kl, lam), case, mistakes, (kl, lam), rtol=1e-9, atol=1e-12,
                     shape_hint="One number for the batch (a 0-d tensor).")
        return f"{len(cases)} inputs against losses.training_loss(..., free_bits=...)"
    return _run("free_bits_kl", body)


def check_aggregate_log_density(fn) -> Result:
    """fn(z, means, log_vars) -> (M,): log q(z) of the mixture (1/N) sum_n N(z; mu_n, s_n^2)."""
    def body():
        g = _gen(12)
        m5, lv5 = (torch.randn(5, 3, generator=g, dtype=torch.float64),
                   torch.randn(5, 3, generator=g, dtype=torch.float64) - 1)
        cases = [
            ("one posterior (N = 1): log N(z; mu, sigma^2)", torch.randn(4, 3, generator=g,
             dtype=torch.float64), m5[:1], lv5[:1]),
            ("N = 5 posteriors in 3 dimensions, 4 points", torch.randn(4, 3, generator=g,
             dtype=torch.float64), m5, lv5),
            ("points far from every posterior (log q around -3e4)",
             torch.full((2, 3), 30.0, dtype=torch.float64) + torch.randn(2, 3, generator=g,
                                                                         dtype=torch.float64),
             m5, lv5 - 3),
        ]

        def comp(z, m, lv):  # (M, N) log-densities of the components
            return torch.distributions.Normal(m[None], (0.5 * lv[None]).exp()).log_prob(
                z[:, None]).sum(-1)

        mistakes = [
            (lambda z, m, lv: torch.logsumexp(comp(z, m, lv), 1), "divide by N: the "
             "mixture's weights are 1/N, i.e. - math.log(N)"),
            (lambda z, m, lv: comp(z, m, lv).mean(1), "the log of a mean is not the mean of "
             "the logs: torch.logsumexp(log_q, dim=1) - math.log(N)"),
            (lambda z, m, lv: (torch.logsumexp(torch.distributions.Normal(
                m[None], (0.5 * lv[None]).exp()).log_prob(z[:, None]), 1)
                - math.log(len(m))).sum(-1), "each component is one image's whole posterior: "
             "sum the log-densities over dimensions first, then logsumexp over images"),
            (lambda z, m, lv: torch.logsumexp(torch.distributions.Normal(
                m[None], lv[None].exp()).log_prob(z[:, None]).sum(-1), 1) - math.log(len(m)),
             "exp(log_var) is the variance: the standard deviation is exp(0.5 * log_var)"),
        ]
        for case, z, m, lv in cases:
            got = _call(fn, case, z, m, lv)
            _compare(got, analysis.aggregate_log_density(z, m, lv), case, mistakes, (z, m, lv),
                     rtol=1e-9, atol=1e-9, shape_hint="One log-density per row of z.",
                     nonfinite_hint="the densities underflow to 0 far from the posteriors: "
                     "stay in logs, torch.logsumexp(log_q, dim=1) - math.log(N)")
        return f"{len(cases)} inputs against analysis.aggregate_log_density"
    return _run("aggregate_log_density", body)


# --- notebook 8: the hierarchical VAE -----------------------------------------------------------

def check_soft_clamp(fn) -> Result:
    """fn(x, bound) -> bound * tanh(x / bound), differentiable everywhere."""
    def body():
        cases = [("x from -40 to 40, bound 10", torch.linspace(-40, 40, 9, dtype=torch.float64),
                  10.0),
                 ("small x (-0.5 to 0.5), bound 10", torch.linspace(-0.5, 0.5, 5,
                                                                    dtype=torch.float64), 10.0),
                 ("x from -9 to 9, bound 3", torch.linspace(-9, 9, 7, dtype=torch.float64), 3.0)]
        mistakes = [
            (lambda x, b: x.clamp(-b, b), "a hard clamp: its gradient is exactly zero beyond "
             "the bound, so a saturated log-variance never recovers. Use bound * tanh(x / bound)"),
            (lambda x, b: b * torch.tanh(x), "near 0 it must be the identity: divide by bound "
             "inside the tanh, bound * tanh(x / bound)"),
            (lambda x, b: torch.tanh(x / b), "scale back by bound: bound * tanh(x / bound)"),
            (lambda x, b: b * torch.sigmoid(x / b), "tanh, not sigmoid: the bound is "
             "symmetric, (-bound, bound)"),
        ]
        for case, x, b in cases:
            got = _call(fn, case, x, b)
            _compare(got, b * torch.tanh(x / b), case, mistakes, (x, b), rtol=1e-9, atol=1e-12)
        x = torch.tensor([30.0], dtype=torch.float64, requires_grad=True)
        out = _call(fn, "the gradient at x = 30", x, 10.0)
        if not isinstance(out, torch.Tensor) or not out.requires_grad or not torch.autograd.grad(
                out.sum(), x)[0].abs().item() > 0:
            raise _Failed("the gradient at x = 30, bound 10", "the gradient must pass: use "
                          "torch operations on x (no .item(), no torch.no_grad())")
        return f"{len(cases)} inputs against bound * tanh(x / bound), gradient beyond the bound"
    return _run("soft_clamp", body)


def _group_kl_reference(qm, qlv, pm, plv):
    q = torch.distributions.Normal(qm, (0.5 * qlv).exp())
    p = torch.distributions.Normal(pm, (0.5 * plv).exp())
    return torch.distributions.kl_divergence(q, p).flatten(1).sum(1)


def check_group_kl(fn) -> Result:
    """fn(q_mean, q_log_var, p_mean, p_log_var) -> (B,): KL(q(z_i|x, z<i) || p(z_i|z<i))."""
    def body():
        g = _gen(13)

        def r(*shape, scale=1.0, shift=0.0):
            return shift + scale * torch.randn(*shape, generator=g, dtype=torch.float64)

        same_m, same_lv = r(2, 3, 4, 4), r(2, 3, 4, 4, scale=0.5)
        cases = [
            ("a group of 3 x 4 x 4 latents, B = 2",
             r(2, 3, 4, 4), r(2, 3, 4, 4, scale=0.5, shift=-1), r(2, 3, 4, 4, scale=0.5),
             r(2, 3, 4, 4, scale=0.5)),
            ("posterior equal to the prior: KL = 0", same_m, same_lv, same_m.clone(),
             same_lv.clone()),
            ("a prior N(0, I): the KL of notebook 4", r(2, 2, 2, 2), r(2, 2, 2, 2, scale=0.3),
             torch.zeros(2, 2, 2, 2, dtype=torch.float64), torch.zeros(2, 2, 2, 2,
                                                                        dtype=torch.float64)),
            ("one image, 2 x 8 x 8 latents, narrow prior", r(1, 2, 8, 8), r(1, 2, 8, 8,
             shift=-2), r(1, 2, 8, 8), r(1, 2, 8, 8, scale=0.3, shift=-3)),
        ]
        mistakes = [
            (lambda qm, qlv, pm, plv: losses.gaussian_kl(qm.flatten(1), qlv.flatten(1)),
             "the prior of a group is N(mu_p, sigma_p^2), computed from the groups above, not "
             "N(0, I)"),
            (lambda qm, qlv, pm, plv: _group_kl_reference(pm, plv, qm, qlv),
             "KL(q || p), not KL(p || q): the expectation is under the posterior q"),
            (lambda qm, qlv, pm, plv: _group_kl_reference(qm, qlv, pm, plv) / qm[0].numel(),
             "sum over every latent variable of the group (C x H x W), do not average"),
            (lambda qm, qlv, pm, plv: _group_kl_reference(qm, 2 * qlv, pm, 2 * plv),
             "log_var is the log-variance: sigma = exp(0.5 * log_var)"),
            (lambda qm, qlv, pm, plv: 2 * _group_kl_reference(qm, qlv, pm, plv),
             "a factor of 2 too large: the closed form has 0.5 in front"),
            (lambda qm, qlv, pm, plv: _group_kl_reference(qm, qlv, pm, plv).sum(),
             "one value per image, (B,)"),
        ]
        for case, *args in cases:
            got = _call(fn, case, *args)
            _compare(got, _group_kl_reference(*args), case, mistakes, args, rtol=1e-9,
                     atol=1e-10, shape_hint="Sum over channels and positions, one value per "
                     "image.")
        return f"{len(cases)} inputs against torch.distributions.kl_divergence of the two " \
               "Gaussians"
    return _run("group_kl", body)


# --- the registry and the command line ------------------------------------------------------------

EXERCISES: dict[str, tuple[int, Callable]] = {  # function name -> (notebook, check)
    "log_mean_exp": (1, check_log_mean_exp),
    "iwae_bounds": (1, check_iwae_bounds),
    "exact_elbo": (1, check_exact_elbo),
    "conv_output_size": (2, check_conv_output_size),
    "conv_parameters": (2, check_conv_parameters),
    "make_encoder": (2, check_make_encoder),
    "reparameterize": (3, check_reparameterize),
    "score_function": (3, check_score_function),
    "gaussian_kl": (4, check_gaussian_kl),
    "bits_per_dim": (4, check_bits_per_dim),
    "discretized_logistic": (4, check_discretized_logistic),
    "batch_sizes": (5, check_batch_sizes),
    "training_step": (5, check_training_step),
    "interpolate": (6, check_interpolate),
    "active_units": (6, check_active_units),
    "slerp": (6, check_slerp),
    "free_bits_kl": (7, check_free_bits_kl),
    "aggregate_log_density": (7, check_aggregate_log_density),
    "soft_clamp": (8, check_soft_clamp),
    "group_kl": (8, check_group_kl),
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


if __name__ == "__main__":
    sys.exit(main())
