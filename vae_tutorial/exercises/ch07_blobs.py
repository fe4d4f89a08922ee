"""The exercise checks of notebook 7, why samples are blobs (notebooks/07_blobs.ipynb)."""

from __future__ import annotations

import math

import torch

from .. import analysis, losses
from .verdict import Result, _call, _compare, _gen, _run


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
