"""Notebook 6's helpers against independent references: the IWAE bound by k against a loop
and against the exact log p(x) of the linear-Gaussian model, the nearest-class-mean rule
against a hand-made case and a loop, the two parts of the KL against the closed form."""

import math

import pytest
import torch

from vae_tutorial import analysis, losses
from vae_tutorial.linear_gaussian import LinearGaussianVAE

D64 = torch.float64


def test_iwae_by_k_matches_a_loop_over_groups():
    """Each L_k estimate is the mean over disjoint groups of log (1/k) sum exp(log w)."""
    log_w = torch.randn(100, 7, dtype=D64, generator=torch.Generator().manual_seed(0)) * 3
    got = analysis.iwae_by_k(log_w, [1, 10, 100])
    torch.testing.assert_close(got[1], log_w.mean(0))
    for k in (10, 100):
        groups = [log_w[g * k:(g + 1) * k] for g in range(100 // k)]
        loop = torch.tensor([[math.log(sum(math.exp(v) for v in grp[:, j].tolist()) / k)
                              for j in range(7)] for grp in groups], dtype=D64).mean(0)
        torch.testing.assert_close(got[k], loop)
    with pytest.raises(ValueError):
        analysis.iwae_by_k(log_w, [3])


def test_iwae_by_k_is_log_px_at_the_exact_posterior_and_rises_with_k():
    """q = p(z|x): every weight equals p(x), so every L_k is log p(x) exactly. A poor encoder:
    the estimates rise with k towards log p(x) (Burda et al.'s ordering)."""
    model = LinearGaussianVAE(data_dim=4, latent_dim=2, sigma=0.5, seed=0)
    model.orthogonalize()
    torch.manual_seed(0)
    x = model.sample(8)
    exact = model.log_marginal(x).detach()
    with torch.no_grad():
        initial = analysis.iwae_by_k(model.log_weights(x, 1000, 4096), [1, 10, 100, 1000])
        model.set_encoder_to_posterior()
        tight = analysis.iwae_by_k(model.log_weights(x, 100, 4096), [1, 10, 100])
    for k, v in tight.items():
        torch.testing.assert_close(v, exact, atol=1e-9, rtol=0)
    means = [initial[k].mean().item() for k in (1, 10, 100, 1000)]
    assert means == sorted(means) and means[-1] < exact.mean().item() + 0.05


def test_nearest_class_mean_on_separated_and_random_data():
    """Two far-apart clusters are classified perfectly (s.e. 0); on random data the rule agrees
    with a direct loop over test rows and class centres."""
    g = torch.Generator().manual_seed(1)
    train = torch.cat([torch.randn(20, 5, generator=g), torch.randn(20, 5, generator=g) + 50])
    labels = torch.tensor([3] * 20 + [7] * 20)
    test = torch.cat([torch.randn(6, 5, generator=g), torch.randn(4, 5, generator=g) + 50])
    assert analysis.nearest_class_mean(train, labels, test, torch.tensor([3] * 6 + [7] * 4)) \
        == (1.0, 0.0)
    train, test = torch.randn(60, 2, 3, generator=g), torch.randn(40, 2, 3, generator=g)
    y_train, y_test = torch.arange(60) % 4, torch.randint(0, 4, (40,), generator=g)
    centres = {c: train[y_train == c].flatten(1).double().mean(0) for c in range(4)}
    hits = sum(min(centres, key=lambda c: float((row.flatten().double() - centres[c]).norm()))
               == int(label) for row, label in zip(test, y_test))
    accuracy, se = analysis.nearest_class_mean(train, y_train, test, y_test)
    assert accuracy == pytest.approx(hits / 40, abs=1e-12)
    assert se == pytest.approx(math.sqrt(accuracy * (1 - accuracy) / 40))


def test_kl_parts_add_up_to_the_closed_form():
    """The means' and the variances' parts sum to losses.gaussian_kl; unit variances leave
    only the means' part, zero means only the variances' part."""
    g = torch.Generator().manual_seed(2)
    mean = torch.randn(5, 8, generator=g, dtype=D64)
    log_var = torch.randn(5, 8, generator=g, dtype=D64)
    from_means, from_vars = analysis.kl_parts(mean, log_var)
    torch.testing.assert_close(from_means + from_vars, losses.gaussian_kl(mean, log_var))
    assert (from_vars >= 0).all()
    m0, v0 = analysis.kl_parts(mean, torch.zeros_like(log_var))
    torch.testing.assert_close(m0, 0.5 * (mean ** 2).sum(-1))
    assert v0.abs().max() == 0
    m1, _ = analysis.kl_parts(torch.zeros_like(mean), log_var)
    assert m1.abs().max() == 0
