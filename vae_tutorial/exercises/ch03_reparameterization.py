"""The exercise checks of notebook 3, reparameterization (notebooks/03_reparameterization.ipynb)."""

from __future__ import annotations

import math

import torch

from ..demos import (
    quadratic_gradient,
    reparam_gradients,
    score_function_gradients,
)
from .verdict import Result, _as_tensor, _call, _compare, _Failed, _fmt, _gen, _run


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
