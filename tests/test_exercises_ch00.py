"""Exercise 0.1, the VAE's loss from its pieces: its check passes correct solutions written in
several ways, and rejects each typical mistake with the hint that names it."""

import pytest
import torch
from conftest import assert_check_passes

from vae_tutorial.exercises import EXERCISES, NOT_ATTEMPTED, check_vae_loss


def vae_loss(x, encoder, decoder, likelihood):
    mean, log_var = encoder(x).chunk(2, dim=1)
    z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
    kl = 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(1)
    elbo = likelihood.log_prob(x, decoder(z)) - kl
    return -elbo.mean(), elbo


def vae_loss_distributions(x, encoder, decoder, likelihood):
    """The same with torch.distributions: rsample draws the same noise as randn_like."""
    mean, log_var = encoder(x).chunk(2, dim=1)
    q = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    z = q.rsample()
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1)
    elbo = likelihood.log_prob(x, decoder(z)) - kl
    return -elbo.mean(), elbo


def vae_loss_split(x, encoder, decoder, likelihood):
    """Indexing instead of chunk, sqrt of the variance, torch.randn of the mean's shape."""
    h = encoder(x)
    d = h.shape[1] // 2
    mean, log_var = h[:, :d], h[:, d:]
    z = mean + log_var.exp().sqrt() * torch.randn(mean.shape)
    rec = likelihood.log_prob(x, decoder(z))
    kl = -0.5 * torch.sum(1 + log_var - mean ** 2 - log_var.exp(), dim=1)
    return (kl - rec).mean(), rec - kl


def test_registered_under_notebook_0():
    assert EXERCISES["vae_loss"] == (0, check_vae_loss)


@pytest.mark.parametrize("solution", [vae_loss, vae_loss_distributions, vae_loss_split])
def test_passes_correct_solutions(solution, capsys):
    assert_check_passes(check_vae_loss, solution, capsys, "check_vae_loss: passed (")


def test_stub_is_not_attempted():
    def stub(x, encoder, decoder, likelihood):
        raise NotImplementedError

    assert check_vae_loss(stub).status == NOT_ATTEMPTED


def _wrong(std=None, kl_factor=0.5, kl_reduce="sum", kl_sign=-1, reduce="mean", sign=-1,
           swap=False, noise=True, detach=False, per_batch=False, item=False):
    def fn(x, encoder, decoder, likelihood):
        mean, log_var = encoder(x).chunk(2, dim=1)
        if swap:
            mean, log_var = log_var, mean
        sigma = std(log_var) if std else torch.exp(0.5 * log_var)
        z = mean + sigma * torch.randn_like(mean) if noise else mean
        if detach:
            z = z.detach()
        rec = likelihood.log_prob(x, decoder(z))
        terms = kl_factor * (mean.pow(2) + log_var.exp() - 1 - log_var)
        kl = terms.sum(1) if kl_reduce == "sum" else terms.mean(1)
        elbo = rec + kl_sign * kl
        loss = sign * (elbo.mean() if reduce == "mean" else elbo.sum())
        if item:
            loss = loss.item()
        return loss, (elbo.mean() if per_batch else elbo)
    return fn


@pytest.mark.parametrize("wrong, words", [
    (_wrong(std=torch.exp), "exp(log_var) is the variance"),
    (_wrong(std=torch.sqrt), "never sqrt(log_var)"),
    (_wrong(swap=True), "first d outputs are the means"),
    (_wrong(noise=False), "torch.randn_like(mean)"),
    (_wrong(kl_factor=1.0), "factor 1/2"),
    (_wrong(kl_reduce="mean"), "sum the KL over the d dimensions"),
    (_wrong(kl_sign=+1), "subtracts the KL"),
    (_wrong(reduce="sum"), "average the loss over the batch"),
    (_wrong(sign=+1), "NEGATIVE ELBO"),
    (_wrong(per_batch=True), "shape (B,)"),
    (_wrong(item=True), "keeps its graph"),
    (_wrong(detach=True), "z was detached"),
])
def test_rejects_a_typical_mistake_with_its_hint(wrong, words):
    result = check_vae_loss(wrong)
    assert not result and result.status == "failed"
    assert words in result.hint, result.message


def test_a_crash_is_reported_as_a_failure():
    def crashes(x, encoder, decoder, likelihood):
        return encoder(x).reshape(5, -1)  # 4 x 6 numbers: no such shape

    result = check_vae_loss(crashes)
    assert result.status == "failed" and "raised RuntimeError" in result.hint
