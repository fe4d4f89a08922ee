"""Computations that notebooks 01-04 show, kept here so that they are tested.

Every function is small and pure (no plotting, no global state; a function that changes a
model says so). The notebooks narrate and plot; tests/test_demos.py checks each function
against an independent reference (closed forms, quadrature, finite differences).

    01 the ELBO              encoder_state, set_encoder, interpolate_states, elbo_path, mc_elbo
    02 encoder and decoder   layer_table, superposition_error
    03 reparameterization    reparam_gradients, score_function_gradients, quadratic_gradient,
                             quadratic_gradient_variance, elbo_gradient_samples, exact_elbo_gradient
    04 the loss              bce_probability_form, bce_floor, discretized_gaussian_log_mass,
                             fit_encoder
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn

from . import losses
from .linear_gaussian import LinearGaussianVAE
from .model import eval_mode

__all__ = [
    "ENCODER_PARAMS",
    "encoder_state",
    "set_encoder",
    "interpolate_states",
    "elbo_path",
    "mc_elbo",
    "layer_table",
    "superposition_error",
    "reparam_gradients",
    "score_function_gradients",
    "quadratic_gradient",
    "quadratic_gradient_variance",
    "ESTIMATORS",
    "elbo_gradient_samples",
    "exact_elbo_gradient",
    "bce_probability_form",
    "bce_floor",
    "discretized_gaussian_log_mass",
    "fit_encoder",
]

# --- 01 the ELBO on the linear-Gaussian VAE ---------------------------------------------------

ENCODER_PARAMS = ("A", "c", "q_log_var")  # q(z|x) = N(A x + c, diag(exp(q_log_var)))


def encoder_state(model: LinearGaussianVAE) -> dict[str, torch.Tensor]:
    """A detached copy of the encoder parameters (A, c, q_log_var) of a LinearGaussianVAE."""
    return {k: getattr(model, k).detach().clone() for k in ENCODER_PARAMS}


@torch.no_grad()
def set_encoder(model: LinearGaussianVAE, state: dict[str, torch.Tensor]) -> None:
    """Copy encoder parameters (as returned by encoder_state) into `model`, in place."""
    for k in ENCODER_PARAMS:
        getattr(model, k).copy_(state[k])


def interpolate_states(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor],
                       t: float) -> dict[str, torch.Tensor]:
    """(1 - t) * start + t * end, parameter by parameter: start at t = 0, end at t = 1."""
    return {k: (1.0 - t) * start[k] + t * end[k] for k in start}


@torch.no_grad()
def elbo_path(model: LinearGaussianVAE, x: torch.Tensor, start: dict[str, torch.Tensor],
              end: dict[str, torch.Tensor], ts: Sequence[float]) -> dict[str, torch.Tensor]:
    """Exact log p(x), ELBO and gap KL(q(z|x) || p(z|x)) along a straight line of encoders.

    For each t the encoder is set to interpolate_states(start, end, t) and the three closed
    forms are averaged over the rows of x. Returns {"t", "log_px", "elbo", "gap"}, each (T,)
    float64. The model's encoder is restored afterwards.
    """
    saved = encoder_state(model)
    rows = []
    try:
        for t in ts:
            set_encoder(model, interpolate_states(start, end, float(t)))
            rows.append(torch.stack([model.log_marginal(x).mean(), model.exact_elbo(x).mean(),
                                     model.posterior_gap(x).mean()]))
    finally:
        set_encoder(model, saved)
    out = torch.stack(rows).double()
    return {"t": torch.as_tensor(list(ts), dtype=torch.float64), "log_px": out[:, 0],
            "elbo": out[:, 1], "gap": out[:, 2]}


@torch.no_grad()
def mc_elbo(model: nn.Module, x: torch.Tensor, num_samples: int) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """Monte Carlo ELBO of each row of x from `num_samples` draws z ~ q(z|x).

    Each draw is the model's own estimator (its forward): log p(x|z) at one reparameterized
    z minus the closed-form KL(q(z|x) || p(z)). Returns (mean, standard error), each (B,).
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 for a standard error, got {num_samples}")
    b = x.shape[0]
    draws = model(x.repeat(num_samples, *[1] * (x.ndim - 1))).elbo.view(num_samples, b)
    return draws.mean(0), draws.std(0) / math.sqrt(num_samples)


# --- 02 encoder and decoder -------------------------------------------------------------------

def _describe(module: nn.Module) -> str:
    """Class name; a Sequential lists its children's class names."""
    if isinstance(module, nn.Sequential):
        return " + ".join(type(m).__name__ for m in module)
    return type(module).__name__


@torch.no_grad()
def layer_table(model: nn.Module, x: torch.Tensor,
                parts: Sequence[str] = ("encoder", "decoder")) -> list[dict]:
    """Output shape and parameter count of every top-level layer of the named parts.

    The parts are nn.Sequential attributes of `model` ("encoder", "decoder"). Forward hooks
    record each child's output shape, in call order, while x runs through model.encode and
    model.decode (the decoder receives the encoder's mean, a (B, latent_dim) code). A module
    used at several positions (SeedVAE shares one activation) gets one row per position.
    Returns one dict per layer: part, index, layer (a description), shape (tuple), params.
    """
    rows, calls, hooks = [], [], []
    for part in parts:
        for i, child in enumerate(getattr(model, part)):
            rows.append({"part": part, "index": i, "layer": _describe(child), "shape": None,
                         "params": sum(p.numel() for p in child.parameters()), "module": child})
    for child in {id(r["module"]): r["module"] for r in rows}.values():  # each module once
        hooks.append(child.register_forward_hook(
            lambda m, _inp, out: calls.append((m, tuple(out.shape)))))
    try:
        with eval_mode(model):
            mean, _ = model.encode(x)
            model.decode(mean)
    finally:
        for h in hooks:
            h.remove()
    if len(calls) != len(rows) or any(m is not r["module"] for (m, _), r in zip(calls, rows)):
        raise RuntimeError("layer_table: the layers were not called once each, in order")
    for row, (_, shape) in zip(rows, calls):
        row["shape"] = shape
        del row["module"]
    return rows


@torch.no_grad()
def superposition_error(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                        y: torch.Tensor) -> float:
    """max |f(x + y) - f(x) - f(y) + f(0)|: zero (up to rounding) iff f is affine on x, y.

    An affine map f(v) = M v + b gives f(x + y) = f(x) + f(y) - f(0) exactly.
    """
    zero = torch.zeros_like(x)
    return float((f(x + y) - f(x) - f(y) + f(zero)).abs().max())


# --- 03 reparameterization: two unbiased gradient estimators ----------------------------------

def reparam_gradients(f: Callable[[torch.Tensor], torch.Tensor], mu: float, sigma: float,
                      eps: torch.Tensor) -> torch.Tensor:
    """Per-draw reparameterization estimates of d/dmu and d/dsigma of E_{z~N(mu,sigma^2)} f(z).

    With z = mu + sigma * eps, the draws are f'(z) and f'(z) * eps (autograd through f).
    eps: (n,) standard-normal draws. Returns (n, 2): columns d/dmu, d/dsigma.
    """
    m = torch.full_like(eps, float(mu), requires_grad=True)  # one copy per draw:
    s = torch.full_like(eps, float(sigma), requires_grad=True)  # per-draw gradients
    g_mu, g_sigma = torch.autograd.grad(f(m + s * eps).sum(), (m, s))
    return torch.stack([g_mu, g_sigma], dim=1)


def score_function_gradients(f: Callable[[torch.Tensor], torch.Tensor], mu: float,
                             sigma: float, eps: torch.Tensor) -> torch.Tensor:
    """Per-draw score-function (REINFORCE) estimates of the same two derivatives.

    f(z) * d/dtheta log N(z; mu, sigma^2) at z = mu + sigma * eps, i.e. f(z) * eps / sigma
    and f(z) * (eps^2 - 1) / sigma. Needs only values of f, never its derivative.
    Returns (n, 2): columns d/dmu, d/dsigma.
    """
    with torch.no_grad():
        fz = f(mu + sigma * eps)
        return torch.stack([fz * eps / sigma, fz * (eps.pow(2) - 1.0) / sigma], dim=1)


def quadratic_gradient(mu: float, sigma: float, a: float = 2.0) -> tuple[float, float]:
    """Exact (d/dmu, d/dsigma) of E[(z - a)^2] = (mu - a)^2 + sigma^2, z ~ N(mu, sigma^2)."""
    return 2.0 * (mu - a), 2.0 * sigma


def quadratic_gradient_variance(mu: float, sigma: float, a: float = 2.0) -> dict[str, tuple]:
    """Exact variance of one draw of each estimator for f(z) = (z - a)^2; d = mu - a.

    reparameterization: d/dmu 2(d + sigma eps)          -> 4 sigma^2
                        d/dsigma 2(d + sigma eps) eps    -> 4 d^2 + 8 sigma^2
    score function:     d/dmu (d + sigma eps)^2 eps / sigma
                            -> d^4 / sigma^2 + 14 d^2 + 15 sigma^2
                        d/dsigma (d + sigma eps)^2 (eps^2 - 1) / sigma
                            -> 2 d^4 / sigma^2 + 60 d^2 + 74 sigma^2
    (from the normal moments E eps^2 = 1, E eps^4 = 3, E eps^6 = 15, E eps^8 = 105).
    Returns {"reparam": (var_mu, var_sigma), "score": (var_mu, var_sigma)}.
    """
    d, s2 = mu - a, sigma * sigma
    return {"reparam": (4.0 * s2, 4.0 * d * d + 8.0 * s2),
            "score": (d ** 4 / s2 + 14.0 * d * d + 15.0 * s2,
                      2.0 * d ** 4 / s2 + 60.0 * d * d + 74.0 * s2)}


ESTIMATORS = ("reparam", "score", "score-baseline", "stl")


def elbo_gradient_samples(model: LinearGaussianVAE, x: torch.Tensor, eps: torch.Tensor,
                          estimator: str, baseline: float = 0.0) -> torch.Tensor:
    """Per-draw estimates of the gradient of ELBO(x) with respect to the encoder's c, q_log_var.

    ELBO(x) = E_q[g(z)], g(z) = log p(x, z) - log q(z|x), q = N(A x + c, diag(exp(q_log_var))).
    "reparam":        grad of g(mean + std * eps), through z.
    "score":          g(z) * grad log q(z|x) at z held fixed (REINFORCE). The other term of the
                      gradient, E_q[grad g] with z fixed = -E_q[grad log q] = 0, is dropped.
    "score-baseline": (g(z) - baseline) * grad log q(z|x): still unbiased, since
                      E_q[grad log q] = 0. With baseline = log p(x) it is exactly zero at
                      q = p(z|x) only: elsewhere g(z) - log p(x) = log p(z|x) - log q(z|x) still
                      varies with z (notebook 3's initial encoder keeps 84-92% of the variance).
    "stl":            "sticking the landing" (Roeder et al., 2017): the reparameterization
                      gradient with log q's own parameters held fixed, so that only the path
                      through z remains; unbiased, and exactly zero at q = p(z|x), but not
                      otherwise (at notebook 3's initial encoder it removes 4-15% of the variance).
    x: (1, D); eps: (n, d). Returns (n, 2d): columns d/dc then d/dq_log_var.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    n = eps.shape[0]
    c = model.c.detach().expand(n, -1).clone().requires_grad_(True)  # one copy per draw
    lv = model.q_log_var.detach().expand(n, -1).clone().requires_grad_(True)
    with torch.no_grad():
        ax = x @ model.A.T  # (1, d)
        w, b, log_sigma = model.W.detach(), model.b.detach(), model.log_sigma.detach()
    mean, std = ax + c, torch.exp(0.5 * lv)
    z = mean + std * eps
    score = estimator.startswith("score")
    if score:
        z = z.detach()
    if estimator == "stl":
        log_q = losses.normal_log_prob(z, mean.detach(), lv.detach()).sum(-1)
    else:
        log_q = losses.normal_log_prob(z, mean, lv).sum(-1)
    log_px_z = losses.gaussian_log_likelihood(x.expand(n, -1), z @ w.T + b, log_sigma)
    g = log_px_z + losses.standard_normal_log_prob(z).sum(-1) - log_q
    if score:
        offset = baseline if estimator == "score-baseline" else 0.0
        objective = (g.detach() - offset) * log_q
    else:
        objective = g
    g_c, g_lv = torch.autograd.grad(objective.sum(), (c, lv))
    return torch.cat([g_c, g_lv], dim=1)


def exact_elbo_gradient(model: LinearGaussianVAE, x: torch.Tensor) -> torch.Tensor:
    """The exact gradient of the closed-form ELBO(x) w.r.t. (c, q_log_var), (2d,); x (1, D)."""
    g_c, g_lv = torch.autograd.grad(model.exact_elbo(x).sum(), (model.c, model.q_log_var))
    return torch.cat([g_c, g_lv])


# --- 04 the loss ------------------------------------------------------------------------------

LOG_CLAMP = -100.0  # torch's binary_cross_entropy clamps each log term at -100


def bce_probability_form(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Elementwise -(y log p + (1 - y) log(1 - p)) with each log clamped at -100.

    This is what F.binary_cross_entropy(p, y, reduction="none") computes for y in [0, 1];
    unlike it, this function accepts any y, as PyTorch versions before the target check
    did (the seed notebook ran on one), so it reproduces the seed's loss on [-1, 1] targets.
    """
    log_p = torch.log(p).clamp(min=LOG_CLAMP)
    log_1mp = torch.log1p(-p).clamp(min=LOG_CLAMP)
    return -(y * log_p + (1.0 - y) * log_1mp)


def bce_floor(y: torch.Tensor) -> torch.Tensor:
    """Elementwise infimum over p in [0, 1] of bce_probability_form(p, y).

    For y in [0, 1]: the binary entropy H(y), at p = y (or a clamped endpoint if lower).
    Outside [0, 1] the loss falls without bound as p -> 0 (y < 0) or p -> 1 (y > 1); only the
    clamp stops it: 100 y at p = 0 and 100 (1 - y) at p = 1.
    """
    inside = (y >= 0) & (y <= 1)
    yc = y.clamp(0.0, 1.0)
    entropy = -(torch.xlogy(yc, yc) + torch.xlogy(1.0 - yc, 1.0 - yc))
    entropy = torch.where(inside, entropy, torch.full_like(y, math.inf))
    return torch.minimum(entropy, torch.minimum(-LOG_CLAMP * y, -LOG_CLAMP * (1.0 - y)))


def discretized_gaussian_log_mass(x: torch.Tensor, mean: torch.Tensor | float,
                                  std: torch.Tensor | float) -> torch.Tensor:
    """log P(bin of x) for N(mean, std^2) discretized to the package's 256 pixel bins.

    Pixel k is stored as k / 255 and owns [k/255 - 0.5/255, k/255 + 0.5/255]; the lowest bin
    also takes the mass below it and the highest the mass above it (as in losses), so the 256
    masses sum to one. Elementwise, no sum over pixels.
    """
    half = losses.HALF_BIN
    mean = torch.as_tensor(mean, dtype=x.dtype)
    std = torch.as_tensor(std, dtype=x.dtype)
    upper = torch.where(x > 1 - half, torch.full_like(x, math.inf), (x + half - mean) / std)
    lower = torch.where(x < half, torch.full_like(x, -math.inf), (x - half - mean) / std)
    # P = Phi(upper) - Phi(lower); use the upper tail when the bin lies above the mean
    flip = lower > 0
    hi = torch.where(flip, -lower, upper)
    lo = torch.where(flip, -upper, lower)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + torch.log1p(-torch.exp(torch.special.log_ndtr(lo) - log_hi))


def fit_encoder(model: LinearGaussianVAE, x: torch.Tensor, beta: float = 1.0,
                steps: int = 300) -> dict[str, float]:
    """Fit the encoder (A, c, q_log_var) of `model` in place to maximise the beta-objective.

    mean over x of E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)), all in closed form, by L-BFGS;
    the decoder is left unchanged. beta = 1 is the ELBO; a reconstruction averaged over the D
    data dimensions while the KL is summed is the same objective, divided by D, with beta = D.
    Returns the final averages: reconstruction, kl, elbo, log_px and gap = log_px - elbo.
    """
    params = [getattr(model, k) for k in ENCODER_PARAMS]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def terms():
        mean, log_var = model.encode(x)
        kl = losses.gaussian_kl(mean, log_var)
        return model.exact_elbo(x) + kl, kl  # E_q[log p(x|z)], KL

    def closure():
        opt.zero_grad()
        rec, kl = terms()
        loss = -(rec - beta * kl).mean()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        rec, kl = terms()
        log_px = model.log_marginal(x)
    return {"reconstruction": float(rec.mean()), "kl": float(kl.mean()),
            "elbo": float((rec - kl).mean()), "log_px": float(log_px.mean()),
            "gap": float((log_px - rec + kl).mean())}
