"""A linear-Gaussian VAE, the one latent-variable model whose log p(x) is known exactly.

    p(z) = N(0, I_d),   p(x|z) = N(W z + b, sigma^2 I_D)
    =>  p(x) = N(b, W W^T + sigma^2 I_D)
        p(z|x) = N(S W^T (x - b) / sigma^2, S),   S = (I_d + W^T W / sigma^2)^-1

Its encoder q(z|x) = N(A x + c, diag(exp(log_var))) is linear too, so the ELBO, the IWAE
bound and the gap KL(q || p(z|x)) can all be checked against closed forms.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import losses
from .model import VAE


class LinearGaussianVAE(VAE):
    """Follows the package's model protocol (forward, log_weights, sample) on flat data x of
    shape (B, D), in float64."""

    def __init__(self, data_dim: int = 4, latent_dim: int = 2, sigma: float = 0.5,
                 seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.W = nn.Parameter(torch.randn(data_dim, latent_dim, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(data_dim, generator=g, dtype=torch.float64))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma), dtype=torch.float64))
        self.A = nn.Parameter(0.1 * torch.randn(latent_dim, data_dim, generator=g,
                                                dtype=torch.float64))
        self.c = nn.Parameter(torch.zeros(latent_dim, dtype=torch.float64))
        self.q_log_var = nn.Parameter(torch.zeros(latent_dim, dtype=torch.float64))

    # --- closed forms ---------------------------------------------------------------------
    def marginal(self) -> torch.distributions.MultivariateNormal:
        """p(x) = N(b, W W^T + sigma^2 I)."""
        cov = self.W @ self.W.T + self.log_sigma.exp() ** 2 * torch.eye(
            self.data_dim, dtype=self.W.dtype)
        return torch.distributions.MultivariateNormal(self.b, covariance_matrix=cov)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x), (B,)."""
        return self.marginal().log_prob(x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (B, d) and covariance (d, d) of the exact posterior p(z|x)."""
        s2 = self.log_sigma.exp() ** 2
        cov = torch.linalg.inv(torch.eye(self.latent_dim, dtype=x.dtype) + self.W.T @ self.W / s2)
        mean = (x - self.b) @ self.W @ cov / s2  # cov is symmetric
        return mean, cov

    def set_encoder_to_posterior(self) -> None:
        """Make q(z|x) the exact posterior (possible when S is diagonal: W^T W diagonal)."""
        s2 = self.log_sigma.exp() ** 2
        with torch.no_grad():
            cov = torch.linalg.inv(torch.eye(self.latent_dim, dtype=self.W.dtype)
                                   + self.W.T @ self.W / s2)
            if not torch.allclose(cov, torch.diag(torch.diagonal(cov)), atol=1e-10):
                raise ValueError("the exact posterior is not diagonal; orthogonalize W first")
            self.A.copy_(cov @ self.W.T / s2)
            self.c.copy_(-(cov @ self.W.T @ self.b) / s2)
            self.q_log_var.copy_(torch.diagonal(cov).log())

    def orthogonalize(self) -> None:
        """Give W orthogonal columns, so that p(z|x) has a diagonal covariance."""
        with torch.no_grad():
            q, r = torch.linalg.qr(self.W)
            self.W.copy_(q * torch.diagonal(r).abs())

    # --- the protocol -----------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = x @ self.A.T + self.c
        return mean, self.q_log_var.expand_as(mean)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W.T + self.b

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return losses.gaussian_log_likelihood(x, self.decode(z), self.log_sigma)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        z = temperature * torch.randn(n, self.latent_dim, dtype=self.W.dtype)
        x = self.decode(z)
        return x + self.log_sigma.exp() * torch.randn_like(x)

    def exact_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """E_q[log p(x|z)] - KL(q || p(z)) in closed form (no sampling), (B,)."""
        mean, log_var = self.encode(x)
        s2 = self.log_sigma.exp() ** 2
        resid = x - self.decode(mean)
        trace = (self.W.pow(2) * log_var.exp()[:1]).sum()  # tr(W diag(v) W^T)
        rec = (-0.5 * (resid.pow(2).sum(1) + trace) / s2
               - self.data_dim * (self.log_sigma + 0.5 * math.log(2 * math.pi)))
        return rec - losses.gaussian_kl(mean, log_var)

    def posterior_gap(self, x: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || p(z|x)) in closed form, (B,): log p(x) - ELBO."""
        mean_q, log_var = self.encode(x)
        q = torch.distributions.MultivariateNormal(mean_q, torch.diag_embed(log_var.exp()))
        mean_p, cov_p = self.posterior(x)
        p = torch.distributions.MultivariateNormal(mean_p, covariance_matrix=cov_p)
        return torch.distributions.kl_divergence(q, p)
