"""The exercise checks of notebook 4, the loss (notebooks/04_loss.ipynb)."""

from __future__ import annotations

import math

import torch

from .. import losses
from .verdict import Result, _as_tensor, _call, _compare, _gen, _run


def _kl_reference(mean, log_var):
    q = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    return torch.distributions.kl_divergence(q, p).sum(-1)


def check_gaussian_kl(fn) -> Result:
    """fn(mean, log_var) -> (B,): KL(N(mean, exp(log_var)) || N(0, I)), summed over dims."""
    def body():
        g = _gen(5)
        cases = [
            ("random codes, B = 4, d = 8", torch.randn(4, 8, generator=g, dtype=torch.float64),
             torch.randn(4, 8, generator=g, dtype=torch.float64)),
            ("q equal to the prior (mean 0, log_var 0): KL = 0",
             torch.zeros(2, 5, dtype=torch.float64), torch.zeros(2, 5, dtype=torch.float64)),
            ("one image, one dimension", torch.tensor([[1.5]], dtype=torch.float64),
             torch.tensor([[-3.0]], dtype=torch.float64)),
            ("very narrow and very wide posteriors (log_var -12 and 6)",
             torch.tensor([[0.3, -0.2]], dtype=torch.float64),
             torch.tensor([[-12.0, 6.0]], dtype=torch.float64)),
        ]

        def kl_terms(m, lv):
            return 0.5 * (m.pow(2) + lv.exp() - 1 - lv)

        mistakes = [
            (lambda m, lv: kl_terms(m, lv).mean(-1), "you averaged over the latent dimensions:"
             " the KL of a code is the sum over its dimensions"),
            (lambda m, lv: 2 * kl_terms(m, lv).sum(-1), "a factor of 2 too large: the "
             "closed form has 0.5 in front"),
            (lambda m, lv: -kl_terms(m, lv).sum(-1), "the sign is flipped: a KL divergence "
             "is never negative"),
            (lambda m, lv: 0.5 * (m.pow(2) + lv.pow(2) - 1 - lv.pow(2).log()).sum(-1),
             "log_var is the log-variance, not the standard deviation: sigma^2 = exp(log_var)"),
            (lambda m, lv: 0.5 * (m.pow(2) + (2 * lv).exp() - 1 - 2 * lv).sum(-1),
             "exp(log_var) is already the variance: you squared it (log-variance taken for "
             "a log standard deviation)"),
            (lambda m, lv: 0.5 * (m.pow(2) + lv.exp() - lv).sum(-1), "the - 1 in each term "
             "is missing (check: mean 0, log_var 0 must give KL = 0)"),
            (lambda m, lv: kl_terms(m, lv).sum(), "one value per image, (B,): leave the batch "
             "mean to the trainer"),
        ]
        for case, m, lv in cases:
            got = _call(fn, case, m, lv)
            _compare(got, _kl_reference(m, lv), case, mistakes, (m, lv), rtol=1e-6,
                     atol=1e-9, shape_hint="Sum over the latent dimensions, one value per "
                     "image.")
        return f"{len(cases)} inputs against torch.distributions.kl_divergence"
    return _run("gaussian_kl", body)


def check_bits_per_dim(fn) -> Result:
    """fn(log_px, image_shape) -> bits per dimension, -log_px / (C H W ln 2)."""
    def body():
        cases = [
            ("log p(x) = [-7000, -10000] nats, CIFAR-10 images (3, 32, 32)",
             torch.tensor([-7000.0, -10000.0], dtype=torch.float64), (3, 32, 32)),
            ("the uniform model, log p(x) = -3072 ln 256: exactly 8 bits/dim",
             torch.tensor([-3072 * math.log(256)], dtype=torch.float64), (3, 32, 32)),
            ("grey-scale 28 x 28 images (1, 28, 28)",
             torch.tensor([-600.0, -1200.0, -900.0], dtype=torch.float64), (1, 28, 28)),
        ]

        def dims(shape):
            return math.prod(shape)

        mistakes = [
            (lambda lp, s: -lp / dims(s), "nats for bits: divide by ln 2 as well"),
            (lambda lp, s: lp / (dims(s) * math.log(2)), "the sign: bits/dim is the negative "
             "log-likelihood, a positive code length"),
            (lambda lp, s: -lp / (s[-1] * s[-2] * math.log(2)), "count every sub-pixel: "
             "C x H x W dimensions (3 x 32 x 32 = 3072), not the H x W pixels"),
            (lambda lp, s: -lp * math.log(2) / dims(s), "multiply by 1 / ln 2 (= log2(e)), "
             "not by ln 2"),
            (lambda lp, s: -lp / math.log(2), "divide by the number of dimensions too"),
        ]
        for case, lp, shape in cases:
            got = _call(fn, case, lp, shape)
            _compare(got, losses.bits_per_dim(lp, dims(shape)), case, mistakes, (lp, shape),
                     rtol=1e-6, atol=1e-9, shape_hint="One value per image.")
        return f"{len(cases)} inputs against losses.bits_per_dim; the uniform model gives 8"
    return _run("bits_per_dim", body)


def _logistic_mass(x, mean, log_scale, half=losses.HALF_BIN, low_edge=True, high_edge=True,
                   shift=0.0, scale=None):
    """The bin masses, with switches that make known mistakes (float64 inputs)."""
    s = log_scale.exp() if scale is None else scale
    up = torch.sigmoid((x + shift + half - mean) / s)
    down = torch.sigmoid((x + shift - half - mean) / s)
    mass = up - down
    if low_edge:
        mass = torch.where(x < losses.HALF_BIN, up, mass)
    if high_edge:
        mass = torch.where(x > 1 - losses.HALF_BIN, 1 - down, mass)
    return mass.log()


def _pixelcnn_shortcut(x, mean, log_scale, bins_per_unit):
    """PixelCNN++'s code: where a bin's mass is below 1e-5, the density at its centre over
    bins_per_unit (its width); edge bins exact."""
    u = (x - mean) / log_scale.exp()
    approx = -u - log_scale - 2 * torch.nn.functional.softplus(-u) - math.log(bins_per_unit)
    mid = _logistic_mass(x, mean, log_scale, low_edge=False, high_edge=False)
    exact = _logistic_mass(x, mean, log_scale)
    inner = torch.where(mid.exp() > 1e-5, mid, approx)
    return torch.where((x < losses.HALF_BIN) | (x > 1 - losses.HALF_BIN), exact, inner)


def check_discretized_logistic(fn) -> Result:
    """fn(x, mean, log_scale) -> log P(x) per sub-pixel, under a logistic discretized to
    256 bins of width 1/255 with the tails in the edge bins."""
    def body():
        g = _gen(6)
        ks = torch.randint(1, 255, (12,), generator=g)
        levels = torch.arange(256, dtype=torch.float64) / 255
        scales = torch.empty(12, dtype=torch.float64).uniform_(0.01, 0.2, generator=g)
        cases = [
            ("interior pixel values (0 < k < 255)", ks.double() / 255,
             ks.double() / 255 + scales * torch.randn(12, generator=g, dtype=torch.float64),
             scales.log()),
            ("a very wide logistic (scale 1000)", levels[[0, 100, 255]],
             torch.tensor(0.5, dtype=torch.float64), torch.tensor(math.log(1000.0),
                                                                  dtype=torch.float64)),
            ("all 256 values at mean 0.3, scale 0.05 (the masses must sum to 1)", levels,
             torch.tensor(0.3, dtype=torch.float64), torch.tensor(math.log(0.05),
                                                                  dtype=torch.float64)),
            ("the edge bins k = 0 and k = 255 at means near the edges",
             torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64),
             torch.tensor([0.02, 0.4, 0.97, 0.6], dtype=torch.float64),
             torch.tensor([math.log(0.03), math.log(0.1), math.log(0.03), math.log(0.1)],
                          dtype=torch.float64)),
            ("float32, far in the tails (pixels 200 to 220 scales from the mean)",
             torch.tensor([10 / 255, 250 / 255, 0.5]), torch.tensor([0.9, 0.1, 0.1]),
             torch.tensor([math.log(0.004), math.log(0.004), math.log(0.002)])),
        ]
        mistakes = [
            (lambda x, m, ls: _logistic_mass(x, m, ls, low_edge=False, high_edge=False),
             "a missing edge bin: k = 0 takes all the mass below it, "
             "P = sigmoid((x + 0.5/255 - mean) / s), and k = 255 all the mass above, "
             "P = 1 - sigmoid((x - 0.5/255 - mean) / s)"),
            (lambda x, m, ls: _logistic_mass(x, m, ls, low_edge=False),
             "the lowest bin k = 0 must take all the mass below it: "
             "P = sigmoid((x + 0.5/255 - mean) / s)"),
            (lambda x, m, ls: _logistic_mass(x, m, ls, high_edge=False),
             "the highest bin k = 255 must take all the mass above it: "
             "P = 1 - sigmoid((x - 0.5/255 - mean) / s)"),
            (lambda x, m, ls: _logistic_mass(x, m, ls, half=0.5 / 256),
             "a bin is 1/255 wide here (x = k / 255): its edges are x -+ 0.5 / 255"),
            (lambda x, m, ls: _logistic_mass(x, m, ls, half=1 / 255),
             "the bin edges are x -+ 0.5 / 255 (half a bin each side), not x -+ 1 / 255"),
            (lambda x, m, ls: _logistic_mass(x, m, ls, shift=0.5 / 255),
             "the bin of x runs from x - 0.5/255 to x + 0.5/255: you forgot the - 0.5 "
             "(your bin starts at x)"),
            (lambda x, m, ls: _logistic_mass(x, m, ls, scale=ls),
             "log_scale is log s: use s = exp(log_scale)"),
            (lambda x, m, ls: _pixelcnn_shortcut(x, m, ls, 127.5),
             "a bin is 1/255 wide here: PixelCNN++'s code scores x in "
             "[-1, 1], where bins are 2/255 wide and log(127.5) appears; on [0, 1] it is "
             "log(255)"),
            (lambda x, m, ls: _pixelcnn_shortcut(x, m, ls, 255.0),
             "the mass must be exact where it is small too: the density "
             "at the bin's centre times its width (PixelCNN++'s shortcut) is off there. Use "
             "sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(b - a)), in logs"),
            (lambda x, m, ls: -(x - m) / ls.exp() - ls - 2 * torch.nn.functional.softplus(
                -(x - m) / ls.exp()) - math.log(255),
             "a density times the bin width is not the mass of the bin: integrate, "
             "sigmoid(upper edge) - sigmoid(lower edge)"),
        ]
        for case, x, m, ls in cases:
            got = _call(fn, case, x, m, ls)
            expected = losses._log_bin_mass(x.double(), m.double(), ls.double())
            if x.dtype == torch.float32:
                expected = losses._log_bin_mass(x, m, ls).double()
            tails = x.dtype == torch.float32
            _compare(got, expected, case, mistakes, (x, m, ls),
                     rtol=1e-4 if tails else 1e-7, atol=1e-7,
                     fallback="far in the tails the mass must still be exact: an approximation "
                     "(such as the density at the bin's centre times its width) is off there. "
                     "Use sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(b - a)), "
                     "in logs" if tails else "",
                     shape_hint="One log-probability per sub-pixel: the shape of x.",
                     nan_hint="a NaN is the log of a negative number: the mass "
                     "sigmoid(upper) - sigmoid(lower) needs s = exp(log_scale) > 0 and the "
                     "upper edge above the lower",
                     nonfinite_hint="log(sigmoid(a) - sigmoid(b)) is log 0 far in the tails, "
                     "where both sigmoids round to the same number. Use sigmoid(a) - sigmoid(b)"
                     " = sigmoid(a) * sigmoid(-b) * (1 - exp(b - a)): log it term by term with "
                     "F.logsigmoid and torch.log(-torch.expm1(b - a))")
        total = float(_as_tensor(_call(fn, "", levels, torch.tensor(0.3, dtype=torch.float64),
                                       torch.tensor(math.log(0.05), dtype=torch.float64)))
                      .exp().sum())
        return (f"{len(cases)} inputs against losses.discretized_logistic_log_likelihood's "
                f"bin masses, edge bins and far tails included; the 256 masses sum to "
                f"{total:.12f}")
    return _run("discretized_logistic", body)


def _elbo_loss_reference(log_px, mean, log_var, kl_weight=1.0):
    """The package's training loss: -(sum log p(x|z) - kl_weight KL), batch mean."""
    out = losses.elbo(log_px.flatten(1).sum(1), mean, log_var)
    return losses.training_loss(out, kl_weight)


def check_elbo_loss(fn) -> Result:
    """fn(log_px, mean, log_var, kl_weight=1.0) -> the batch loss: the mean over the images of
    -(log p(x|z) - kl_weight * KL(q(z|x) || N(0, I))), with log p(x|z) the sum of log_px over
    each image's dimensions (log_px: (B, ...), one log-probability per sub-pixel)."""
    def body():
        g = _gen(7)

        def inputs(b, shape, d):
            log_px = -3 * torch.rand(b, *shape, generator=g, dtype=torch.float64)
            mean = torch.randn(b, d, generator=g, dtype=torch.float64)
            log_var = 0.5 * torch.randn(b, d, generator=g, dtype=torch.float64)
            return log_px, mean, log_var

        cases = [
            ("4 images of shape (3, 8, 8), d = 6, the default kl_weight (1)",
             *inputs(4, (3, 8, 8), 6), None),
            ("3 images of shape (3, 4, 4), d = 5, kl_weight = 0.3 (a KL warm-up)",
             *inputs(3, (3, 4, 4), 5), 0.3),
            ("one CIFAR-10-sized image (3, 32, 32), d = 128, kl_weight = 1",
             *inputs(1, (3, 32, 32), 128), 1.0),
            ("2 images, kl_weight = 0: the reconstruction term alone",
             *inputs(2, (3, 4, 4), 4), 0.0),
        ]

        def rec(lp):
            return lp.flatten(1).sum(1)

        def kl(m, lv):
            return 0.5 * (m.pow(2) + lv.exp() - 1 - lv).sum(1)

        mistakes = [
            (lambda lp, m, lv, w: (rec(lp) - w * kl(m, lv)).mean(), "the sign: the loss is the "
             "NEGATIVE ELBO, -(log p(x|z) - KL). You returned the ELBO, which minimising "
             "would push down"),
            (lambda lp, m, lv, w: -(rec(lp) + w * kl(m, lv)).mean(), "the KL enters the ELBO "
             "with a minus sign, ELBO = log p(x|z) - KL: so the loss is -log p(x|z) + KL"),
            (lambda lp, m, lv, w: (rec(lp) + w * kl(m, lv)).mean(), "both signs: the loss is "
             "-log p(x|z) + KL, the negative of ELBO = log p(x|z) - KL"),
            (lambda lp, m, lv, w: -(lp.flatten(1).mean(1) - w * kl(m, lv)).mean(),
             "you averaged log p(x|z) over the image's dimensions: sum them. A mean over the "
             "D = C x H x W sub-pixels weights the KL D times too much (a beta-VAE with "
             "beta = D)"),
            (lambda lp, m, lv, w: -rec(lp).mean(), "the KL term is missing: "
             "loss = -(log p(x|z) - kl_weight * KL), with KL = 0.5 sum(mean^2 + exp(log_var) "
             "- 1 - log_var)"),
            (lambda lp, m, lv, w: -(rec(lp) - kl(m, lv)).mean(), "kl_weight multiplies the "
             "KL term: you left it out"),
            (lambda lp, m, lv, w: -(w * rec(lp) - kl(m, lv)).mean(), "kl_weight multiplies "
             "the KL term, not the reconstruction term"),
            (lambda lp, m, lv, w: -(rec(lp) - w * kl(m, lv) / m.shape[1]).mean(),
             "you averaged the KL over the latent dimensions: the KL of a code is the sum over "
             "its dimensions"),
            (lambda lp, m, lv, w: -(rec(lp) - w * 0.5 * (m.pow(2) + (2 * lv).exp() - 1
                                                         - 2 * lv).sum(1)).mean(),
             "log_var is the log-variance: sigma^2 = exp(log_var), not exp(2 log_var)"),
            (lambda lp, m, lv, w: -(rec(lp) - w * kl(m, lv)).sum(), "average over the batch, "
             "do not sum: the loss is the batch mean of every image's negative ELBO (so that "
             "the learning rate does not depend on the batch size)"),
        ]
        for case, lp, m, lv, w in cases:
            args = (lp, m, lv) if w is None else (lp, m, lv, w)
            got = _call(fn, case, *args)
            weight = 1.0 if w is None else w
            _compare(got, _elbo_loss_reference(lp, m, lv, weight), case, mistakes,
                     (lp, m, lv, weight), rtol=1e-7, atol=1e-9,
                     shape_hint="Return one number (a 0-dimensional tensor): the mean over "
                     "the batch of each image's negative ELBO.")
        return (f"{len(cases)} inputs against losses.training_loss, KL weights 1, 0.3 and 0 "
                "included")
    return _run("elbo_loss", body)
