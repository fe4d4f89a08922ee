"""The hierarchical VAE: per-group KL against Monte Carlo, the ELBO identity, the IWAE bound,
the protocol (odd batches, sampling, checkpoints, resume), and a fast preset for notebooks."""

import math

import pytest
import torch

from vae_tutorial import hvae, losses
from vae_tutorial.checkpoint import load_checkpoint, load_model
from vae_tutorial.config import preset
from vae_tutorial.evaluate import iwae_log_likelihood
from vae_tutorial.model import build_model
from vae_tutorial.train import StopTraining, train


def small(**over):
    cfg = dict(kind="hvae", width=8, res_blocks=1, groups=(1, 2, 1), zdims=(3, 2, 2), mixtures=2)
    return build_model(**{**cfg, **over})


@pytest.fixture
def images(subset_test):
    return subset_test[0][:5].float() / 255


def test_group_kl_matches_its_monte_carlo_estimate():
    """For one group at a fixed state h and features, the closed-form KL(q || p) equals the
    average of log q(z) - log p(z) over 20,000 draws z ~ q, within 5 standard errors; and it
    is 0 when q equals p."""
    torch.manual_seed(0)
    group = hvae.LatentGroup(width=6, zdim=3, scale=1.0)
    with torch.no_grad():
        group.prior.conv.weight.normal_(0, 0.3)  # a prior that is not N(0, I)
    h, feat = torch.randn(1, 6, 4, 4), torch.randn(1, 6, 4, 4)
    with torch.no_grad():
        _, kl, _ = group(h, feat)
        draws = torch.stack([group(h, feat)[2] for _ in range(2000)]).squeeze(1)  # (2000,)
    mean, se = draws.mean(), draws.std() / math.sqrt(len(draws))
    assert kl.shape == (1,) and kl.item() > 0.5
    assert abs(mean - kl.item()) < 5 * se
    # q = p: the posterior's layer copies the prior's output for (mu, log_var)
    m, lv = torch.randn(3), torch.randn(3)
    assert losses.normal_kl(m, lv, m, lv).abs().max() < 1e-6


def test_elbo_is_reconstruction_minus_the_sum_of_group_kls(images):
    model = small().eval()
    out = model(images)
    assert out.kl_per_dim.shape == (5, 4)  # one KL per group: 1 + 2 + 1
    torch.testing.assert_close(out.kl, out.kl_per_dim.sum(1))
    torch.testing.assert_close(out.elbo, out.reconstruction - out.kl)
    assert (out.kl_per_dim >= 0).all()


def test_log_weights_average_to_the_elbo_and_iwae_lies_above(images):
    """k = 1 log-weights are unbiased for the ELBO; the k = 32 bound averages above it."""
    torch.manual_seed(1)
    model = small().eval()
    with torch.no_grad():
        model.out.weight.mul_(20)  # make log p(x|z) depend strongly on z
        elbo = torch.stack([model(images).elbo for _ in range(64)])  # (64, 5)
        w1 = model.log_weights(images, 64, chunk=320)  # (64, 5)
        k32 = torch.stack([iwae_log_likelihood(model, images, 32) for _ in range(8)])
    e_mean, e_se = elbo.mean(0), elbo.std(0) / 8
    w_mean, w_se = w1.mean(0), w1.std(0) / 8
    assert ((e_mean - w_mean).abs() < 4 * (e_se ** 2 + w_se ** 2).sqrt()).all()
    assert float(k32.mean()) > float(e_mean.mean())


def test_log_weights_chunking_does_not_change_them(images):
    model = small().eval()
    torch.manual_seed(2)
    a = model.log_weights(images, 6, chunk=5)  # one sample per chunk
    torch.manual_seed(2)
    b = model.log_weights(images, 6, chunk=1000)
    assert a.shape == b.shape == (6, 5)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()


def test_groups_at_one_resolution_only_and_zero_groups_refused():
    model = small(groups=(0, 0, 2))
    out = model(torch.rand(3, 3, 32, 32))
    assert out.kl_per_dim.shape == (3, 2) and model.group_names() == ["16x16 #1", "16x16 #2"]
    from vae_tutorial.config import ConfigError

    with pytest.raises(ConfigError, match="at least one latent group"):
        small(groups=(0, 0, 0))


def test_reconstruct_uses_posterior_means_deterministically(images):
    model = small().eval()
    a, b = model.reconstruct(images), model.reconstruct(images)
    torch.testing.assert_close(a, b)
    assert a.shape == images.shape and a.min() >= 0 and a.max() <= 1


def test_soft_clamp_bounds_log_variances():
    x = torch.linspace(-1000, 1000, 101)
    y = hvae.soft_clamp(x)
    assert y.abs().max() <= hvae.LOG_VAR_BOUND and torch.all(y[1:] >= y[:-1])  # float32 saturates
    assert abs(hvae.soft_clamp(torch.tensor(0.3)).item() - 0.3) < 1e-3


@pytest.fixture
def fast_cfg(subset_root, tmp_path):
    return preset("fast", kind="hvae", data=str(subset_root), allow_partial=True,
                  train_limit=256, test_limit=64, batch_size=32, epochs=3, progress=False,
                  out_dir=str(tmp_path / "run"), checkpoint_minutes=0.0, log_every=2)


def test_fast_preset_trains_and_improves(fast_cfg):
    history = train(fast_cfg)
    assert history[-1]["test_bpd"] < history[0]["test_bpd"]
    model, ckpt = load_model(f"{fast_cfg.out_dir}/checkpoint.pt")
    assert model.config.kind == "hvae" and tuple(ckpt["model_config"]["groups"]) == (1, 1, 1)


def test_checkpoint_round_trip_and_resume_equal_a_straight_run(fast_cfg, tmp_path):
    straight = train(fast_cfg.replace(out_dir=str(tmp_path / "a")))

    def stop(record, model):
        raise StopTraining

    half = fast_cfg.replace(out_dir=str(tmp_path / "b"))
    train(half, callback=stop)
    resumed = train(half, resume=True)
    assert [h["train_elbo"] for h in resumed] == [h["train_elbo"] for h in straight]
    wa = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    wb = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    model, _ = load_model(tmp_path / "a" / "checkpoint.pt")  # rebuilt from its config
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(0)
    out = model(x)
    assert torch.isfinite(out.elbo).all()


def test_cpu_preset_is_time_limited_to_30_minutes():
    cfg = preset("cpu", kind="hvae")
    assert cfg.time_limit == 30.0 and cfg.grad_skip is not None and cfg.hflip
    assert preset("gpu", kind="hvae").model == cfg.model  # derived: tests/test_report.py


def test_used_parameters_leave_out_layers_the_loss_never_reaches():
    """One group at 16x16 reads only the 16x16 features: the encoder's 8x8 and 4x4 layers get no
    gradient, so they are defined but not used; every parameter of the five groups is used."""
    from vae_tutorial.config import preset
    from vae_tutorial.model import build_model, count_parameters, count_used_parameters

    five = build_model(preset("cpu", kind="hvae").model)
    assert count_used_parameters(five) == count_parameters(five)
    one = build_model(preset("cpu", kind="hvae", groups=(0, 0, 1), zdims=(32, 16, 26)).model)
    unused = sum(p.numel() for name, p in one.named_parameters()
                 if name.startswith(("enc.8.", "enc.4.")))
    assert unused > 0 and count_used_parameters(one) <= count_parameters(one) - unused
    assert all(p.grad is None for p in one.parameters())  # gradients cleared afterwards
