"""vae_tutorial.measure: spreads, comparisons against them, turn-taking timings, activation
gradients against an independent hand computation, bit-for-bit equality. No speed is asserted."""

import math
from itertools import combinations

import pytest
import torch
import torch.nn as nn

from vae_tutorial import measure
from vae_tutorial.config import ModelConfig
from vae_tutorial.losses import ELBO
from vae_tutorial.model import build_model


def test_spread_is_min_median_max():
    s = measure.Spread.of([3, 1, 2, 10])
    assert (s.low, s.median, s.high) == (1.0, 2.5, 10.0)
    assert str(measure.Spread.of([1000, 2000, 1500])) == "1,000 / 1,500 / 2,000"
    with pytest.raises(ValueError):
        measure.Spread.of([])


def test_compare_counts_only_disjoint_ranges():
    base = [100, 104, 98]
    within = measure.compare(base, [101, 103, 99])  # overlapping: within the spread
    assert not within.exceeds and within.ratio == pytest.approx(101 / 100)
    assert "within the spread" in within.verdict()
    faster = measure.compare(base, [110, 115, 112])  # every repeat above every base repeat
    assert faster.exceeds and faster.ratio == pytest.approx(112 / 100)
    assert "1.12x the speed, beyond the spread" in faster.verdict()
    assert "1 in 10)" in faster.verdict()  # 2 / C(6, 3)
    slower = measure.compare(base, [90, 97.9, 80])
    assert slower.exceeds and slower.ratio < 1
    touching = measure.compare(base, [104, 110, 111])  # shares the value 104: overlaps
    assert not touching.exceeds


def test_false_alarm_rate_of_disjoint_ranges_is_as_documented():
    # Exchangeable repeats: each of the C(14, 7) ways to split 14 ranks into two groups of 7 is
    # equally likely, and exactly two of them (all lowest, all highest) are disjoint.
    ranks = range(14)
    splits = list(combinations(ranks, 7))
    disjoint = sum(measure.compare(list(a), [r for r in ranks if r not in a]).exceeds
                   for a in splits)
    assert disjoint == 2 and len(splits) == math.comb(14, 7) == 3432  # 1 in 1,716
    assert measure.compare(range(7), range(7, 14)).false_alarm == pytest.approx(disjoint / 3432)
    assert measure.compare([1, 2], [3, 4]).false_alarm == pytest.approx(1 / 3)  # 2 of C(4, 2)


def test_interleaved_takes_turns_and_counts_units():
    order = []

    def make(name, units):
        def fn():
            order.append(name)
            return units
        return fn

    rates = measure.interleaved({"a": make("a", 2), "b": make("b", 5)}, calls=3, repeats=2,
                                device=torch.device("cpu"), warmup=1)
    assert order == ["a", "b"] + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert set(rates) == {"a", "b"} and all(len(r) == 2 for r in rates.values())
    assert all(v > 0 and math.isfinite(v) for r in rates.values() for v in r)


def _tiny():
    torch.manual_seed(0)
    return build_model(ModelConfig(width=8, latent_dim=4, mixtures=1))


def _batches(n=4):
    x = torch.randint(0, 256, (n, 3, 32, 32)).float().div(255)
    while True:
        yield x, torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize("adamw", [{}, {"foreach": False}, {"foreach": True}, {"fused": True}])
def test_training_step_changes_the_weights_like_adamw(adamw):
    model = _tiny()
    before = [p.detach().clone() for p in model.parameters()]
    step = measure.training_step(model, _batches(), torch.device("cpu"), sync_each_step=True,
                                 **adamw)
    assert step() == 4
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("adamw", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_optimizer_step_is_one_adamw_update(adamw):
    model, reference = _tiny(), _tiny()
    step = measure.optimizer_step(model, **adamw)
    grads = [p.grad.clone() for p in model.parameters()]
    assert step() == 1
    # AdamW's first step, by hand: p - lr * (wd * p + g / (|g| + eps)) (bias-corrected m / sqrt(v))
    for p, q, g in zip(model.parameters(), reference.parameters(), grads):
        q = q.detach() * (1 - 1e-4 * 0.01)
        expected = q - 1e-4 * g / (g.abs() + 1e-8)
        assert torch.allclose(p.detach(), expected, atol=1e-7, rtol=1e-5)


class _Affine(nn.Module):
    """z = a * x, reconstruction = -(b * z).sum(): gradients known in closed form."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3, bias=False)
        self.b = nn.Linear(3, 1, bias=False)

    def forward(self, x):
        rec = -self.b(self.a(x)).squeeze(1)
        return ELBO(elbo=rec, reconstruction=rec, kl=torch.zeros_like(rec))


def test_activation_gradients_match_the_chain_rule():
    torch.manual_seed(0)
    model, x = _Affine(), torch.randn(2, 3)
    g = measure.activation_gradients(model, x, scale=10.0)
    # loss = 10 * mean_b(b(a(x_b))): d/d(b output) = 10 / B each; d/d(a output) = 10 / B * w_b
    b_out = torch.full((2,), 10.0 / 2)
    a_out = (10.0 / 2 * model.b.weight).expand(2, 3).flatten()
    assert torch.allclose(g.sort().values, torch.cat([b_out, a_out]).sort().values)
    assert model.a.weight.grad is not None  # the parameters' gradients are left set
    assert not model.a._forward_hooks  # and the hooks removed


def test_saved_activations_are_the_layers_inputs():
    """Closed form: each bias-free Linear keeps its input (B x 3 floats) for the backward pass
    and its weight, which is a parameter and left out; nothing else is kept. So 2 B 3 4 bytes,
    linear in the batch."""
    model = _Affine()
    for batch in (8, 16):
        mib = measure.saved_activation_mib(model, torch.randn(batch, 3))
        assert mib * 2**20 == 2 * batch * 3 * 4


def test_identical_is_bit_for_bit():
    a = {"w": torch.tensor([1.0, -0.0]), "step": torch.tensor(3.0), "n": [1, (2, "x")]}
    assert measure.identical(a, {"w": torch.tensor([1.0, -0.0]), "step": torch.tensor(3.0),
                                 "n": [1, (2, "x")]})
    assert not measure.identical(a, {**a, "w": torch.tensor([1.0, 0.0])})  # -0.0 vs 0.0: bits
    assert not measure.identical(a, {**a, "w": torch.tensor([1.0, -0.0], dtype=torch.float64)})
    assert not measure.identical(a, {**a, "step": torch.tensor(3.0 + 2**-20)})
    assert not measure.identical(a, {**a, "n": [1, (2, "y")]})
    assert not measure.identical(a, {"w": a["w"]})
    nan = torch.tensor([float("nan")])
    assert measure.identical(nan, nan.clone())  # the same bits, though nan != nan
