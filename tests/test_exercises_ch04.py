"""Exercise 4.4, the VAE loss: its check passes a correct solution, in float64 and float32, and
rejects each typical mistake with the hint that names it."""

import pytest
from conftest import assert_check_passes

from vae_tutorial import losses
from vae_tutorial.exercises import EXERCISES, NOT_ATTEMPTED, check_elbo_loss


def elbo_loss(log_px, mean, log_var, kl_weight=1.0):
    kl = 0.5 * (mean ** 2 + log_var.exp() - 1 - log_var).sum(1)
    return -(log_px.flatten(1).sum(1) - kl_weight * kl).mean()


def _rec(log_px):
    return log_px.flatten(1).sum(1)


def _kl(mean, log_var):
    return 0.5 * (mean ** 2 + log_var.exp() - 1 - log_var).sum(1)


def test_registered_under_notebook_4():
    assert EXERCISES["elbo_loss"] == (4, check_elbo_loss)


def test_passes_a_correct_solution(capsys):
    assert_check_passes(check_elbo_loss, elbo_loss, capsys, "check_elbo_loss: passed (4 inputs")


@pytest.mark.parametrize("solution", [
    lambda lp, m, lv, kl_weight=1.0: losses.training_loss(
        losses.elbo(lp.flatten(1).sum(1), m, lv), kl_weight),
    lambda lp, m, lv, kl_weight=1.0: (-_rec(lp) + kl_weight * losses.gaussian_kl(m, lv)).mean(),
    lambda lp, m, lv, kl_weight=1.0: -(lp.sum(dim=(1, 2, 3)) - kl_weight * _kl(m, lv)).mean(),
    lambda lp, m, lv, kl_weight=1.0: float(elbo_loss(lp, m, lv, kl_weight)),  # a Python float
])
def test_passes_other_correct_forms(solution):
    assert check_elbo_loss(solution).status == "passed"


def test_stub_is_not_attempted():
    def stub(log_px, mean, log_var, kl_weight=1.0):
        raise NotImplementedError

    assert check_elbo_loss(stub).status == NOT_ATTEMPTED


WRONG = [
    (lambda lp, m, lv, w=1.0: (_rec(lp) - w * _kl(m, lv)).mean(), "NEGATIVE ELBO"),
    (lambda lp, m, lv, w=1.0: -(_rec(lp) + w * _kl(m, lv)).mean(), "minus sign"),
    (lambda lp, m, lv, w=1.0: (_rec(lp) + w * _kl(m, lv)).mean(), "both signs"),
    (lambda lp, m, lv, w=1.0: -(lp.flatten(1).mean(1) - w * _kl(m, lv)).mean(), "sum them"),
    (lambda lp, m, lv, w=1.0: -(lp.mean() - w * _kl(m, lv).mean()), "sum them"),
    (lambda lp, m, lv, w=1.0: -_rec(lp).mean(), "KL term is missing"),
    (lambda lp, m, lv, w=1.0: -(_rec(lp) - _kl(m, lv)).mean(), "left it out"),
    (lambda lp, m, lv, w=1.0: -(w * _rec(lp) - _kl(m, lv)).mean(), "not the reconstruction"),
    (lambda lp, m, lv, w=1.0: -(_rec(lp) - w * _kl(m, lv) / m.shape[1]).mean(),
     "sum over its dimensions"),
    (lambda lp, m, lv, w=1.0: -(_rec(lp) - w * _kl(m, 2 * lv)).mean(), "log-variance"),
    (lambda lp, m, lv, w=1.0: -(_rec(lp) - w * _kl(m, lv)).sum(), "do not sum"),
    (lambda lp, m, lv, w=1.0: -(_rec(lp) - w * _kl(m, lv)), "0-dimensional"),
    (lambda lp, m, lv, w=1.0: -(_rec(lp) - w * _kl(m, lv)).mean() + 1.0, "term by term"),
    (lambda lp, m, lv: -(_rec(lp) - _kl(m, lv)).mean(), "TypeError"),  # no kl_weight argument
]


@pytest.mark.parametrize("wrong,words", WRONG, ids=[w for _, w in WRONG])
def test_rejects_a_typical_mistake_with_its_hint(wrong, words):
    result = check_elbo_loss(wrong)
    assert result.status == "failed", "check_elbo_loss accepted a wrong solution"
    assert words in result.hint, result.hint
    assert "FAILED on" in result.message
