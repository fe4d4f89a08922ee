"""Notebook 8's measurements of a hierarchical VAE: the per-variable KL maps against the model's
own per-group KL, the KL's mean term against its definition, collapse counts, prior draws."""

import pytest
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


def test_mixed_top_down_with_every_group_from_the_posterior_mean_is_the_reconstruction():
    model = small()
    x = torch.rand(3, 3, 32, 32)
    params, zs = hvae_analysis.mixed_top_down(model, x, from_posterior=range(len(model.groups)))
    torch.testing.assert_close(model.likelihood.mean(params), model.reconstruct(x))
    assert [z.shape for z in zs] == [(3, 3, 4, 4), (3, 2, 8, 8), (3, 2, 8, 8), (3, 2, 16, 16)]
    torch.manual_seed(5)  # no group from the posterior: the model's own prior sampling
    prior_params, _ = hvae_analysis.mixed_top_down(model, n=3, temperature=0.7)
    torch.manual_seed(5)
    own, _, _ = model.top_down(None, 3, temperature=0.7)
    torch.testing.assert_close(prior_params, own)
    with pytest.raises(ValueError):
        hvae_analysis.mixed_top_down(model, n=3, from_posterior=[0])


def test_swap_decodes_keep_the_posterior_groups_and_draw_the_others():
    model = small()
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(0)
    out = hvae_analysis.swap_decodes(model, x, draws=3)
    assert list(out) == ["posterior (all groups)", "4x4 posterior, finer prior",
                         "4x4 prior, finer posterior", "prior (all groups)"]
    assert all(v.shape == (3, 2, 3, 32, 32) for v in out.values())
    recon = out["posterior (all groups)"]
    torch.testing.assert_close(recon[0], model.reconstruct(x))  # no randomness: all means
    torch.testing.assert_close(recon[1], recon[0])
    assert not torch.allclose(out["prior (all groups)"][0], out["prior (all groups)"][1])


def test_layout_error_pools_before_comparing():
    target = torch.rand(4, 3, 32, 32)
    assert torch.all(hvae_analysis.layout_error(target[None], target) == 0)
    # a change that averages out within every 8x8 block: invisible in the layout, not per pixel
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None]) % 2 * 0.2 - 0.1
    moved = target + checker
    assert hvae_analysis.layout_error(moved, target, block=8).abs().max() < 1e-10
    torch.testing.assert_close(hvae_analysis.layout_error(moved, target, block=1),
                               torch.full((4,), 0.01))
    assert hvae_analysis.layout_error(torch.stack([moved, target]), target).shape == (2, 4)


def test_all_group_codes_and_prior_draws_concatenate_every_group():
    model = small()
    x = torch.rand(5, 3, 32, 32)
    codes, images = hvae_analysis.all_group_codes(model, [(x[:3], None), (x[3:], None)], draws=2)
    assert codes.shape == (10, model.latent_dim) and images.tolist() == [0, 0, 1, 1, 2, 2, 3, 3,
                                                                         4, 4]
    assert not torch.allclose(codes[0], codes[1])  # two draws of one image's posterior
    prior = hvae_analysis.all_group_prior(model, 7, batch=3)
    assert prior.shape == (7, model.latent_dim) and torch.isfinite(prior).all()


def test_top_down_diagram_draws_every_group(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    fig = hvae_analysis.top_down_diagram(group_res=(4, 8, 16), zdims=(4, 3, 2))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sum("$z_i$:" in t for t in texts) == 3 and any("learned start" in t for t in texts)
    assert any("16x16" in t for t in texts) and any("proj" in t for t in texts)
    fig.savefig(tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 10_000
