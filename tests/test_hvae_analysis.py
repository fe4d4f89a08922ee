"""Notebook 8's measurements of a hierarchical VAE: the per-variable KL maps against the model's
own per-group KL, the KL's mean term against its definition, collapse counts, prior draws."""

import torch

from vae_tutorial import hvae_analysis
from vae_tutorial.model import build_model


def small(**over):
    cfg = dict(kind="hvae", width=8, res_blocks=1, groups=(1, 2, 1), zdims=(3, 2, 2), mixtures=2)
    model = build_model(**{**cfg, **over}).eval()
    torch.manual_seed(3)
    with torch.no_grad():  # priors that are not N(0, I), so that every term is non-trivial
        for g in model.groups:
            g.prior.conv.weight.normal_(0, 0.2)
    return model


def test_kl_maps_sum_to_the_models_group_kls_for_the_same_draws():
    model = small()
    x = torch.rand(4, 3, 32, 32)
    torch.manual_seed(7)
    terms = hvae_analysis.group_terms(model, x)
    torch.manual_seed(7)
    with torch.no_grad():
        kl_groups = model(x).kl_per_dim  # (B, G)
    assert [t["kl"].shape for t in terms] == [(4, 3, 4, 4), (4, 2, 8, 8), (4, 2, 8, 8),
                                               (4, 2, 16, 16)]
    sums = torch.stack([t["kl"].flatten(1).sum(1) for t in terms], 1)
    torch.testing.assert_close(sums, kl_groups, rtol=1e-5, atol=1e-4)


def test_mean_term_is_the_kls_squared_distance_part():
    """KL = 0.5 (log s_p^2 - log s_q^2 + s_q^2 / s_p^2 - 1) + (m_q - m_p)^2 / (2 s_p^2): what is
    left after the mean term is the KL of two Gaussians with equal means, >= 0."""
    model = small()
    torch.manual_seed(0)
    terms = hvae_analysis.group_terms(model, torch.rand(3, 3, 32, 32))
    for t in terms:
        plv, qlv = t["prior_logvar"].double(), t["posterior_logvar"].double()
        rest = 0.5 * (plv - qlv + torch.exp(qlv - plv) - 1)
        torch.testing.assert_close(t["mean_term"].double() + rest, t["kl"].double(),
                                   rtol=1e-4, atol=1e-5)
        assert (t["mean_term"] >= 0).all() and (rest >= -1e-6).all()


def test_prior_draws_are_images_and_their_means():
    model = small()
    torch.manual_seed(0)
    samples, means = hvae_analysis.prior_draws(model, 3, temperature=0.5)
    assert samples.shape == means.shape == (3, 3, 32, 32)
    assert samples.min() >= 0 and samples.max() <= 1 and means.min() >= 0 and means.max() <= 1
    assert torch.allclose(samples * 255, (samples * 255).round(), atol=1e-4)  # 8-bit draws


def test_kl_statistics_average_channels_over_images_and_count_collapse():
    model = small()
    x = torch.rand(6, 3, 32, 32)
    torch.manual_seed(1)
    stats = hvae_analysis.kl_statistics(model, [(x[:4], None), (x[4:], None)])
    torch.manual_seed(1)
    first = hvae_analysis.group_terms(model, x[:4])
    second = hvae_analysis.group_terms(model, x[4:])
    for i, ch in enumerate(stats["kl_channel"]):
        both = torch.cat([first[i]["kl"], second[i]["kl"]]).double()
        torch.testing.assert_close(ch, both.sum((2, 3)).mean(0))
        assert stats["prior_logvar_min"][i] == min(first[i]["prior_logvar"].min(),
                                                   second[i]["prior_logvar"].min())
    kl = torch.tensor([0.0, 0.1, 10.0, 100.0])  # nats per image, over 16 positions
    assert hvae_analysis.collapsed(kl, 16) == 2  # 0 and 0.006 nats per variable, below 0.01
    assert hvae_analysis.collapsed(kl, 16, threshold=1.0) == 3
