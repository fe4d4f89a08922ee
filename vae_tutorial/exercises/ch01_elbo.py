"""The exercise checks of notebook 1, the ELBO (notebooks/01_elbo.ipynb)."""

from __future__ import annotations

import math

import torch

from .. import losses
from ..evaluate import log_mean_exp
from ..linear_gaussian import LinearGaussianVAE
from .verdict import Result, _as_tensor, _call, _compare, _Failed, _gen, _run


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
            ("log-weights of a linear-Gaussian VAE (W not orthogonalized, 8 points), K = 1024",
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


class _NoShortcuts(LinearGaussianVAE):
    """The linear-Gaussian VAE with the ELBO's ready-made estimators switched off: an exercise
    that asks for the Monte Carlo ELBO must build it from encode and log_likelihood."""

    def _shortcut(self, *args, **kwargs):
        raise RuntimeError("write the estimate from model.encode and model.log_likelihood; "
                           "model(x), model.exact_elbo and model.log_weights are what this "
                           "exercise rebuilds")

    forward = exact_elbo = log_weights = _shortcut


def _expected_reconstruction(model, x, m, v):
    """E_{z ~ N(m, diag v)}[log p(x|z)] of a LinearGaussianVAE in closed form, (B,)."""
    s2 = model.log_sigma.exp() ** 2
    sq = (x - model.decode(m)).pow(2).sum(1)
    trace = (model.W.pow(2).unsqueeze(0) * v.unsqueeze(1)).sum((1, 2))  # tr(W diag(v) W^T)
    return -0.5 * (sq + trace) / s2 - model.data_dim * (model.log_sigma
                                                        + 0.5 * math.log(2 * math.pi))


def check_mc_elbo(fn) -> Result:
    """fn(model, x, num_samples) -> (B,): the Monte Carlo ELBO of a LinearGaussianVAE, the mean
    over num_samples draws z ~ q(z|x) of log p(x|z) - KL(q(z|x) || p(z))."""
    def body():
        # points near the decoder's mean and a confident encoder away from the prior: the
        # terms a mistake drops or distorts are many standard errors of the estimate wide
        setups = [("a linear-Gaussian VAE (D = 4, d = 2, sigma = 1), 5 points",
                   dict(data_dim=4, latent_dim=2, sigma=1.0, seed=0), 5),
                  ("another (D = 6, d = 3, sigma = 1.5), 3 points",
                   dict(data_dim=6, latent_dim=3, sigma=1.5, seed=1), 3)]
        draws = 2000
        for case, kw, n in setups:
            model = _NoShortcuts(**kw)
            with torch.no_grad():
                d = model.latent_dim
                model.q_log_var.copy_(torch.linspace(-2.0, 0.5, d, dtype=torch.float64))
                model.c.copy_(torch.linspace(2.5, -2.0, d, dtype=torch.float64))
                model.A.mul_(0.02)
                x = model.decode(model.c).expand(n, -1) + 0.1 * torch.randn(
                    n, model.data_dim, dtype=torch.float64)
                # the exact ELBO, independent of its formula: log p(x) - KL(q(z|x) || p(z|x))
                exact = (model.log_marginal(x) - model.posterior_gap(x)).detach()
                m, lv = model.encode(x)
                v, kl = lv.exp(), losses.gaussian_kl(m, lv)
                rec = _expected_reconstruction(model, x, m, v)
                # the reference estimator's spread: one-draw ELBOs of every point
                eps = torch.randn(draws, *m.shape, dtype=m.dtype)
                z = (m + v.sqrt() * eps).reshape(-1, m.shape[1])
                one = (model.log_likelihood(x.repeat(draws, 1), z).view(draws, n) - kl)
                sd = one.std(0)  # (B,) standard deviation of a one-draw estimate
                at_mean = model.log_likelihood(x, m) - kl
            se = sd / math.sqrt(draws)
            mistakes = [  # what typical mistakes converge to, and how near counts as there
                (at_mean, 1e-6, "you scored x at the mean m only: draw z = m + sqrt(v) * eps, "
                 "eps ~ N(0, I), a new eps for every draw"),
                (_expected_reconstruction(model, x, m, v * v) - kl, 6 * se, "the standard "
                 "deviation is exp(log_var / 2) = sqrt(v): exp(log_var) is the variance"),
                (rec, 6 * se, "subtract the KL term KL(q(z|x) || p(z)) = 0.5 * sum(m^2 + v - 1 "
                 "- log v)"),
                (rec + kl, 6 * se, "the KL term is subtracted, not added"),
                (rec - 2 * kl, 6 * se, "the KL of N(m, diag v) from N(0, I) has a factor 0.5"),
                (draws * (rec - kl), 6 * draws * se, "average over the draws, do not sum them"),
            ]
            mc_case = f"{case}, num_samples = {draws}"
            got = _call(fn, mc_case, model, x, draws)
            g = _as_tensor(got)
            if g is None or g.shape != exact.shape:
                _compare(got, exact, mc_case, shape_hint="One ELBO per data point, averaged "
                         "over the draws. model.log_likelihood(x, z) takes z of shape (B, d): "
                         "repeat x to match a batch of draws, or loop over the draws.")
            if not torch.isfinite(g).all():
                raise _Failed(mc_case, "your estimate is not finite", exact, got)
            if not ((g - exact).abs() <= 5 * se).all():
                for target, near, hint in mistakes:
                    if ((g - target).abs() <= near).all():
                        raise _Failed(mc_case, hint, exact, got)
                zmax = ((g - exact).abs() / se).max().item()
                raise _Failed(mc_case, f"your estimate is {zmax:.0f} standard errors from the "
                              "exact ELBO, too far for sampling noise: compare each term with "
                              "the statement", exact, got)
            # one draw, as in training: a random number of the right size
            one_case = f"{case}, num_samples = 1"
            a = _as_tensor(_call(fn, one_case, model, x, 1))
            b = _as_tensor(_call(fn, one_case, model, x, 1))
            if a is None or a.shape != exact.shape or b.shape != exact.shape:
                _compare(a, exact, one_case, shape_hint="One ELBO per data point, also for a "
                         "single draw.")
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                raise _Failed(one_case, "with a single draw your estimate is not finite: "
                              "a standard error needs two draws, the estimate does not",
                              exact, a)
            if torch.equal(a, b):
                raise _Failed(one_case, "two calls with one draw gave the same numbers: draw "
                              "a fresh eps with torch.randn_like(m) on every call", exact, a)
            if ((a - exact).abs() > 8 * sd + 1e-9).any():
                raise _Failed(one_case, "a single draw lands too far from the exact ELBO: "
                              "is num_samples used as the number of draws?", exact, a)
        return (f"2 models: {draws} draws within 5 standard errors of the exact ELBO, single "
                "draws random and of the right size")
    return _run("mc_elbo", body)
