"""Why VAE samples look like blobs: the computations of notebook 7, each tested.

    the prior hole        encode_dataset, aggregate_log_density, aggregate_kl, hole_scores
    rate and distortion   rate_distortion (from an evaluation), equal_elbo_lines
    the amortization gap  refine_posterior, gaussian_elbo, gaps

All of them work on single-latent models (z ~ N(0, I), q(z|x) a diagonal Gaussian): ConvVAE,
SeedVAE and the linear-Gaussian reference model.
"""

from __future__ import annotations

import math

import torch

from . import losses
from .evaluate import log_mean_exp
from .model import eval_mode, reparameterize


@torch.no_grad()
def encode_dataset(model, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """(means, log_vars) of q(z|x) for every image of an iterable of (x, label) batches, (N, D)
    each, on the CPU; the model is put in eval mode and restored."""
    with eval_mode(model):
        out = [model.encode(x) for x, _ in batches]
    return (torch.cat([m for m, _ in out]).cpu(), torch.cat([lv for _, lv in out]).cpu())


@torch.no_grad()
def aggregate_log_density(z: torch.Tensor, means: torch.Tensor, log_vars: torch.Tensor,
                          chunk: int = 256) -> torch.Tensor:
    """log q(z) of the aggregate posterior q(z) = (1/N) sum_n q(z | x_n), a mixture of the N
    encoder Gaussians, at each row of z: (M, D) -> (M,). Computed in float64, in chunks of z."""
    means, log_vars = means.double(), log_vars.double()
    out = []
    for start in range(0, len(z), chunk):
        zc = z[start:start + chunk].double()[:, None]  # (m, 1, D)
        log_q = losses.normal_log_prob(zc, means[None], log_vars[None]).sum(-1)  # (m, N)
        out.append(torch.logsumexp(log_q, dim=1) - math.log(len(means)))
    return torch.cat(out)


def sample_aggregate(means: torch.Tensor, log_vars: torch.Tensor, n: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """n draws from the aggregate posterior: pick an image, then z ~ q(z | that image)."""
    pick = torch.randint(len(means), (n,), generator=generator)
    eps = torch.randn(n, means.shape[1], generator=generator, dtype=means.dtype)
    return means[pick] + torch.exp(0.5 * log_vars[pick]) * eps


@torch.no_grad()
def aggregate_kl(means: torch.Tensor, log_vars: torch.Tensor, num_samples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Monte Carlo KL(q(z) || p(z)) of the aggregate posterior against N(0, I), in nats, with
    its standard error: the mean of log q(z) - log p(z) over draws z ~ q(z)."""
    g = torch.Generator().manual_seed(seed)
    z = sample_aggregate(means.double(), log_vars.double(), num_samples, g)
    terms = aggregate_log_density(z, means, log_vars) - \
        losses.standard_normal_log_prob(z).sum(-1)
    return float(terms.mean()), float(terms.std() / math.sqrt(num_samples))


@torch.no_grad()
def hole_scores(z: torch.Tensor, means: torch.Tensor, log_vars: torch.Tensor) -> torch.Tensor:
    """log q(z) - log p(z) at each row of z, (M,): very negative where the prior puts mass
    that no image's posterior covers (a hole), positive where the posteriors crowd."""
    return aggregate_log_density(z, means, log_vars) - \
        losses.standard_normal_log_prob(z.double()).sum(-1)


def rate_distortion(evaluation: dict) -> dict:
    """Rate (KL, nats), distortion (-E log p(x|z), nats) and their sum -ELBO, from an
    `evaluate` result or its JSON."""
    rate, distortion = evaluation["kl"], -evaluation["reconstruction"]
    return {"rate": rate, "distortion": distortion, "negative_elbo": -evaluation["elbo"]}


def gaussian_elbo(model, x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor,
                  num_samples: int = 1) -> torch.Tensor:
    """The ELBO of each image under a given diagonal Gaussian q = N(mean, exp(log_var)):
    E_q[log p(x|z)] from num_samples reparameterized draws, minus the closed-form KL. (B,)."""
    rec = 0.0
    for _ in range(num_samples):
        rec = rec + model.log_likelihood(x, reparameterize(mean, log_var))
    return rec / num_samples - losses.gaussian_kl(mean, log_var)


def refine_posterior(model, x: torch.Tensor, steps: int = 100, lr: float = 0.05,
                     num_samples: int = 4, init: tuple | None = None):
    """Each image's own Gaussian q, optimised for its ELBO by Adam from the encoder's output
    (or `init`): returns (mean, log_var), detached. The learning rate decays along a cosine,
    so the last steps average out the Monte Carlo noise of the gradient. The model's weights
    are not changed (their gradients are not even computed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with eval_mode(model):
            with torch.no_grad():
                m0, lv0 = init if init is not None else model.encode(x)
            mean = m0.detach().clone().requires_grad_(True)
            log_var = lv0.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([mean, log_var], lr=lr)
            for step in range(steps):
                for g in opt.param_groups:
                    g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                loss = -gaussian_elbo(model, x, mean, log_var, num_samples).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        for p in params:
            p.requires_grad_(True)
    return mean.detach(), log_var.detach()


@torch.no_grad()
def gaps(model, x: torch.Tensor, refined: tuple, num_samples: int = 1000,
         elbo_samples: int = 100, chunk: int = 256) -> dict:
    """Split log p(x) - ELBO (Cremer, Li & Duvenaud, 2018), in nats per image, averaged:
        log p(x)          IWAE with num_samples draws from the refined q (the best proposal)
        ELBO of the refined q, of the encoder's q (each from elbo_samples draws)
        approximation gap = log p(x) - ELBO(refined): the best Gaussian's shortfall
        amortization gap  = ELBO(refined) - ELBO(encoder): the encoder's shortfall."""
    with eval_mode(model):
        enc = model.encode(x)
        elbo_enc = gaussian_elbo(model, x, *enc, num_samples=elbo_samples)
        elbo_ref = gaussian_elbo(model, x, *refined, num_samples=elbo_samples)
        log_px = log_mean_exp(model.log_weights(x, num_samples, chunk, posterior=refined))
    out = {"log_px": log_px, "elbo_refined": elbo_ref, "elbo_encoder": elbo_enc}
    out = {k: float(v.double().mean()) for k, v in out.items()}
    out["approximation_gap"] = out["log_px"] - out["elbo_refined"]
    out["amortization_gap"] = out["elbo_refined"] - out["elbo_encoder"]
    return out
