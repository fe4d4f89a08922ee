"""The fused likelihood (torch.compile of the logistic mixture's log-probability) against the
eager reference and against the hand-computed mixture of test_losses; the trainer's switch."""

import pytest
import torch
from test_losses import mix_params, pixels, random_mix, ref_mix_prob

from vae_tutorial import likelihoods, losses, train
from vae_tutorial.config import TrainConfig, preset
from vae_tutorial.likelihoods import Fused, LogisticMixture

REFERENCE = losses.discretized_mix_logistic_log_likelihood


def decoder_output(b: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit images (edges included) and (B, 10K, H, W) decoder output as training sees them."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, 3, 8, 8), generator=gen).float() / 255
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0  # the two edge bins, which take the tails' mass
    params = torch.randn(b, 10 * k, 8, 8, generator=gen)
    params[:, k:4 * k] *= 0.3  # the red means near mid-grey, as a trained decoder's
    return x, params


def value_and_grad(fn, x, params):
    params = params.clone().requires_grad_()
    out = fn(x, params)
    (grad,) = torch.autograd.grad(out.sum(), params)
    return out, grad


def test_fused_matches_the_reference_in_value_and_gradient():
    """fp32, two batch sizes (the second compiles again): the same log p(x|z) per image to
    a relative 1e-6 and the same gradient to float rounding."""
    fused = Fused(REFERENCE)
    for b in (4, 6):
        x, params = decoder_output(b, k=3, seed=b)
        out, grad = value_and_grad(fused, x, params)
        ref, ref_grad = value_and_grad(REFERENCE, x, params)
        assert not fused.failed
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=0)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


def test_fused_float64_matches_the_mixture_computed_by_hand():
    """The compiled function itself, in float64: each pixel's probability as
    sum_k pi_k p_k(R) p_k(G|R) p_k(B|R,G), computed component by component."""
    mix = random_mix(3, seed=1)
    rgb = [(0, 0, 0), (255, 255, 255), (0, 128, 255), (100, 120, 140), (200, 50, 7)]
    params = mix_params(*mix).expand(len(rgb), -1, -1, -1)
    out = Fused(REFERENCE)(pixels(rgb), params)
    ref = torch.stack([ref_mix_prob(*v, *mix) for v in rgb]).log()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-8)


def test_fused_extreme_params_are_finite():
    """Huge logits, scales and coefficients: finite values and gradients, fused too."""
    x, _ = decoder_output(2, k=3, seed=0)
    out, grad = value_and_grad(Fused(REFERENCE), x, 300 * torch.randn(2, 30, 8, 8))
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()


def test_a_failed_compile_warns_once_and_falls_back(monkeypatch):
    calls = []

    def broken(fn, **kwargs):
        def run(*args):
            calls.append(1)
            raise RuntimeError("no C++ compiler\nsecond line")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    fused = Fused(REFERENCE)
    x, params = decoder_output(2, k=1, seed=0)
    with pytest.warns(UserWarning, match=r"unfused.*\(RuntimeError: no C\+\+ compiler\)$"):
        out = fused(x, params)
    assert fused.failed and len(calls) == 1
    torch.testing.assert_close(out, REFERENCE(x, params), rtol=0, atol=0)
    fused(x, params)  # no second attempt, no second warning
    assert len(calls) == 1


def test_logistic_mixture_switch(monkeypatch):
    """LogisticMixture.log_prob goes through the fused function only when asked."""
    seen = []
    monkeypatch.setattr(likelihoods, "fused_mix_logistic_log_likelihood",
                        lambda x, p: seen.append(p.dtype) or REFERENCE(x, p))
    lik = LogisticMixture(1)
    x, params = decoder_output(2, k=1, seed=0)
    lik.log_prob(x, params.bfloat16())
    assert seen == []
    lik.fused = True
    lik.log_prob(x, params.bfloat16())
    assert seen == [torch.float32]  # the cast to fp32 comes first


def test_the_trainer_fuses_outside_the_fast_mode(monkeypatch):
    monkeypatch.setenv("VAE_TUTORIAL_FAST", "1")
    assert not train.fuse_likelihood(TrainConfig())
    assert train.fuse_likelihood(TrainConfig(fuse_likelihood=True))
    monkeypatch.delenv("VAE_TUTORIAL_FAST")
    assert train.fuse_likelihood(TrainConfig())
    assert train.fuse_likelihood(preset("cpu", kind="hvae"))
    assert not train.fuse_likelihood(preset("fast"))
    assert not train.fuse_likelihood(TrainConfig(fuse_likelihood=False))
    assert not train.fuse_likelihood(TrainConfig(compile=True))  # the whole model is compiled
