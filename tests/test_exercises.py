"""The exercise checks: each passes a correct solution, and rejects wrong ones with the right hint.

The wrong solutions below are written independently of the checks' own list of known mistakes:
each is a mistake a learner makes, and the test asserts the words of the hint it must get.
"""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_exercises_ch00 import vae_loss  # noqa: F401 (a solution SOLUTIONS looks up)
from test_exercises_ch01_ch02 import mc_elbo_loop as mc_elbo  # noqa: F401 (the same)

from vae_tutorial import exercises as ex
from vae_tutorial import losses

# --- correct solutions (the notebooks' solution cells hold the same code) -----------------------


def log_mean_exp(log_w):
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def iwae_bounds(log_w, ks):
    out = []
    for k in ks:
        n = log_w.shape[0] // k
        blocks = log_w[:n * k].reshape(n, k, -1)
        out.append((torch.logsumexp(blocks, dim=1) - math.log(k)).mean())
    return torch.stack(out)


def exact_elbo(model, x):
    m, log_v = model.encode(x)
    s2 = torch.exp(2 * model.log_sigma)
    sq = (x - m @ model.W.T - model.b).pow(2).sum(1)
    trace = (model.W.pow(2) * log_v.exp()[:1]).sum()
    d = x.shape[1]
    rec = -(sq + trace) / (2 * s2) - d * model.log_sigma - 0.5 * d * math.log(2 * math.pi)
    kl = 0.5 * (m.pow(2) + log_v.exp() - 1 - log_v).sum(1)
    return rec - kl


def conv_output_size(size, kernel, stride=1, padding=0):
    return (size + 2 * padding - kernel) // stride + 1


def conv_parameters(c_in, c_out, kernel, bias=True):
    return c_out * c_in * kernel * kernel + (c_out if bias else 0)


def make_encoder(latent_dim, width):
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 4, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),
        nn.Flatten(), nn.Linear(2 * w * 4 * 4, 2 * latent_dim))


def make_decoder(latent_dim, width, out_channels):
    w = width
    return nn.Sequential(
        nn.Linear(latent_dim, 2 * w * 4 * 4), nn.Unflatten(1, (2 * w, 4, 4)), nn.SiLU(),
        nn.ConvTranspose2d(2 * w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),
        nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.SiLU(),
        nn.ConvTranspose2d(w, out_channels, 4, stride=2, padding=1))


def reparameterize(mean, log_var):
    return mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)


def score_function(f, mu, sigma, eps, baseline=0.0):
    z = mu + sigma * eps
    fz = f(z) - baseline
    return torch.stack([fz * eps / sigma, fz * (eps ** 2 - 1) / sigma], dim=1)


def gaussian_kl(mean, log_var):
    return 0.5 * (mean ** 2 + log_var.exp() - 1 - log_var).sum(dim=1)


def bits_per_dim(log_px, image_shape=(3, 32, 32)):
    return -log_px / (math.prod(image_shape) * math.log(2))


def discretized_logistic(x, mean, log_scale):
    inv_s = torch.exp(-log_scale)
    a = (x + 0.5 / 255 - mean) * inv_s  # upper edge of the bin, standardised
    b = (x - 0.5 / 255 - mean) * inv_s  # lower edge
    log_mid = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(b - a))
    return torch.where(x < 0.5 / 255, F.logsigmoid(a),
                       torch.where(x > 1 - 0.5 / 255, F.logsigmoid(-b), log_mid))


def elbo_loss(log_px, mean, log_var, kl_weight=1.0):
    kl = 0.5 * (mean ** 2 + log_var.exp() - 1 - log_var).sum(1)
    return -(log_px.flatten(1).sum(1) - kl_weight * kl).mean()


def batch_sizes(n, batch_size, drop_last):
    sizes = [batch_size] * (n // batch_size)
    if n % batch_size and not drop_last:
        sizes.append(n % batch_size)
    return sizes


def training_step(model, optimizer, x, kl_weight, max_norm, amp_dtype):
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None):
        out = model(x)
    loss = -(out.reconstruction - kl_weight * out.kl).mean()
    optimizer.zero_grad()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.detach(), norm


def interpolate(z_a, z_b, steps):
    t = torch.linspace(0, 1, steps, dtype=z_a.dtype)[:, None]
    return (1 - t) * z_a + t * z_b


def slerp(z_a, z_b, steps):
    t = torch.linspace(0, 1, steps, dtype=z_a.dtype)[:, None]
    cos = torch.dot(z_a, z_b) / (z_a.norm() * z_b.norm())
    omega = torch.arccos(cos.clamp(-1, 1))
    if torch.sin(omega) < 1e-6:
        return (1 - t) * z_a + t * z_b
    return (torch.sin((1 - t) * omega) * z_a + torch.sin(t * omega) * z_b) / torch.sin(omega)


def active_units(means, threshold=0.01):
    return int((means.var(dim=0) > threshold).sum())


def free_bits_kl(kl_per_dim, free_bits):
    return kl_per_dim.mean(dim=0).clamp(min=free_bits).sum()


def aggregate_log_density(z, means, log_vars):
    log_q = -0.5 * (math.log(2 * math.pi) + log_vars[None]
                    + (z[:, None] - means[None]) ** 2 / log_vars[None].exp()).sum(-1)
    return torch.logsumexp(log_q, dim=1) - math.log(len(means))


def soft_clamp(x, bound=10.0):
    return bound * torch.tanh(x / bound)


def group_kl(q_mean, q_log_var, p_mean, p_log_var):
    kl = 0.5 * (p_log_var - q_log_var
                + (q_log_var.exp() + (q_mean - p_mean) ** 2) / p_log_var.exp() - 1)
    return kl.flatten(1).sum(1)


def group_step(group, h, feat):
    d = group.zdim
    p = group.prior(h)
    p_mean, p_log_var, dh = p[:, :d], soft_clamp(p[:, d:2 * d]), p[:, 2 * d:]
    h = h + dh
    q = group.posterior(torch.cat([h, feat], 1))
    q_mean, q_log_var = q[:, :d], soft_clamp(q[:, d:])
    z = q_mean + torch.exp(0.5 * q_log_var) * torch.randn_like(q_mean)
    kl = group_kl(q_mean, q_log_var, p_mean, p_log_var)  # the independent one above
    return group.cell(h + group.z_proj(z)), kl


def _group_step_wrong(update_first=True, clamp=True, from_prior=False, proj=True, cell=True,
                      kl_to=None):
    """group_step with one typical mistake."""
    def step(group, h, feat):
        d = group.zdim
        c = soft_clamp if clamp else (lambda t: t)
        p = group.prior(h)
        pm, plv, dh = p[:, :d], c(p[:, d:2 * d]), p[:, 2 * d:]
        q = group.posterior(torch.cat([h + dh if update_first else h, feat], 1))
        qm, qlv = q[:, :d], c(q[:, d:])
        m, lv = (pm, plv) if from_prior else (qm, qlv)
        z = m + torch.exp(0.5 * lv) * torch.randn_like(m)
        kl = group_kl(qm, qlv, *(kl_to(qm) if kl_to else (pm, plv)))
        out = h + dh + (group.z_proj(z) if proj else 0)
        return (group.cell(out) if cell else out), kl
    return step


SOLUTIONS = {name: globals()[name] for name in ex.EXERCISES}


def check(name):
    return ex.EXERCISES[name][1]


# --- every check passes its solution, and reports a stub as not attempted ----------------------

@pytest.mark.parametrize("name", list(ex.EXERCISES))
def test_check_passes_the_solution(name, capsys):
    state = torch.random.get_rng_state()
    result = check(name)(SOLUTIONS[name])
    out = capsys.readouterr().out
    assert result and result.status == "passed", result.message
    assert out.strip() == result.message and out.startswith(f"check_{name}: passed (")
    assert torch.equal(torch.random.get_rng_state(), state)  # the notebook's stream untouched


@pytest.mark.parametrize("name", list(ex.EXERCISES))
def test_stub_is_not_attempted(name, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    result = check(name)(stub)
    assert not result and result.status == ex.NOT_ATTEMPTED
    assert capsys.readouterr().out.strip() == (
        f"check_{name}: not attempted yet (your function still raises NotImplementedError: "
        "replace it with your code)")


def test_a_crash_is_a_failure_not_an_exception():
    def buggy(log_w):
        return log_w.logsumexp(dim=7)

    result = ex.check_log_mean_exp(buggy)
    assert result.status == "failed" and "your function raised IndexError" in result.hint


# --- the wrong solutions each check must reject, with the hint it must give ---------------------

def expect(name, wrong, *words):
    result = check(name)(wrong)
    assert result.status == "failed", f"check_{name} accepted a wrong solution"
    for w in words:
        assert w in result.hint, f"hint {result.hint!r} lacks {w!r}"
    assert "expected" in result.message or "hint" in result.message
    return result


WRONG = {
    "log_mean_exp": [
        (lambda lw: lw.mean(0), "ELBO"),
        (lambda lw: torch.logsumexp(lw, 0), "off by log k"),
        (lambda lw: torch.logsumexp(lw, 0) - math.log(lw.shape[-1]), "not by the batch size"),
        (lambda lw: lw.exp().mean(0).log(), "torch.logsumexp"),  # underflow at -7000
        (lambda lw: torch.logsumexp(lw, 1) - math.log(lw.shape[1]), "first dimension"),
    ],
    "iwae_bounds": [
        (lambda lw, ks: torch.stack([log_mean_exp(lw[:k]).mean() for k in ks]), "only the first"),
        (lambda lw, ks: torch.stack([log_mean_exp(lw[:len(lw) // k * k].view(
            k, len(lw) // k, -1)).mean() for k in ks]), "consecutive"),
        (lambda lw, ks: torch.stack([torch.cat([log_mean_exp(lw[i:i + k])
                                                for i in range(0, len(lw), k)]).mean()
                                     for k in ks]), "K % k"),
        (lambda lw, ks: torch.stack([torch.logsumexp(lw[:len(lw) // k * k].view(
            len(lw) // k, k, -1), 1).mean() for k in ks]), "off by log k"),
        (lambda lw, ks: torch.stack([lw.mean() for k in ks]), "ELBO"),
        (lambda lw, ks: iwae_bounds(lw, ks)[0], "One number per k"),
    ],
    "exact_elbo": [
        (lambda model, x: exact_elbo(model, x) + (model.W.pow(2) * model.encode(x)[1].exp()[:1])
         .sum() / (2 * torch.exp(2 * model.log_sigma)), "trace term"),
        (lambda model, x: exact_elbo(model, x) + gaussian_kl(*model.encode(x)), "subtract the KL"),
        (lambda model, x: exact_elbo(model, x) + 2 * gaussian_kl(*model.encode(x)),
         "not added"),
        (lambda model, x: exact_elbo(model, x) + 0.5 * x.shape[1] * math.log(2 * math.pi),
         "log(2 pi)"),
        (lambda model, x: exact_elbo(model, x) + 1.0, "compare your formula"),
    ],
    "conv_output_size": [
        (lambda s, k, st=1, p=0: (s + 2 * p - k) // st, "add 1"),
        (lambda s, k, st=1, p=0: math.ceil((s + 2 * p - k) / st) + 1, "round down"),
        (lambda s, k, st=1, p=0: (s + 2 * p - k) / st + 1, "floor division"),
        (lambda s, k, st=1, p=0: (s + p - k) // st + 1, "both sides"),
    ],
    "conv_parameters": [
        (lambda i, o, k, b=True: o * i * k * k, "biases"),
        (lambda i, o, k, b=True: o * i * k * k + o, "bias=False"),
        (lambda i, o, k, b=True: o * i * k + (o if b else 0), "k * k"),
        (lambda i, o, k, b=True: o * i * k * k + (i if b else 0), "per output channel"),
    ],
    "reparameterize": [
        (lambda m, lv: torch.normal(m, torch.exp(0.5 * lv)), "no gradient reaches"),
        (lambda m, lv: torch.distributions.Normal(m, torch.exp(0.5 * lv)).sample(),
         "no gradient reaches"),
        (lambda m, lv: m + torch.exp(0.5 * lv).detach() * torch.randn_like(m),
         "no gradient reaches log_var"),
        (lambda m, lv: m + torch.exp(lv) * torch.randn_like(m), "exp(log_var) is the variance"),
        (lambda m, lv: m + lv * torch.randn_like(m), "not the standard deviation"),
        (lambda m, lv: m + torch.exp(0.5 * lv) * torch.randn(m.shape[-1], dtype=m.dtype),
         "same z"),
        (lambda m, lv: m + torch.exp(0.5 * lv) * torch.randn(*m.shape[:-1], 1, dtype=m.dtype),
         "shared"),
        (lambda m, lv: m + torch.exp(0.5 * lv) * torch.rand_like(m), "not uniform"),
        (lambda m, lv: torch.exp(0.5 * lv) * torch.randn_like(m) + m.detach(),
         "no gradient reaches mean"),
        (lambda m, lv: (m + torch.exp(0.5 * lv) * torch.randn_like(m))[:1], "shape of mean"),
    ],
    "score_function": [
        (lambda f, mu, s, eps, b=0.0: torch.stack([(f(mu + s * eps) - b) * eps,
                                                   (f(mu + s * eps) - b) * (eps ** 2 - 1)], 1),
         "divide by sigma"),
        (lambda f, mu, s, eps, b=0.0: torch.stack([(f(mu + s * eps) - b) * eps / s,
                                                   (f(mu + s * eps) - b) * eps ** 2 / s], 1),
         "- 1"),
        (lambda f, mu, s, eps, b=0.0: score_function(f, mu, s, eps, -b), "do not add"),
        (lambda f, mu, s, eps, b=0.0: score_function(f, mu, s, eps), "baseline is ignored"),
        (lambda f, mu, s, eps, b=0.0: torch.stack([2 * (mu + s * eps - 2),
                                                   2 * (mu + s * eps - 2) * eps], 1),
         "reparameterization estimator"),
        (lambda f, mu, s, eps, b=0.0: score_function(f, mu, s, eps, b)[:, [1, 0]],
         "d/dmu first"),
    ],
    "gaussian_kl": [
        (lambda m, lv: 0.5 * (m ** 2 + lv.exp() - 1 - lv).mean(1), "averaged over the latent"),
        (lambda m, lv: (m ** 2 + lv.exp() - 1 - lv).sum(1), "0.5"),
        (lambda m, lv: -0.5 * (m ** 2 + lv.exp() - 1 - lv).sum(1), "never negative"),
        (lambda m, lv: 0.5 * (m ** 2 + lv ** 2 - 1 - torch.log(lv ** 2)).sum(1),
         "not the standard deviation"),
        (lambda m, lv: 0.5 * (m ** 2 + torch.exp(2 * lv) - 1 - 2 * lv).sum(1), "squared it"),
        (lambda m, lv: 0.5 * (m ** 2 + lv.exp() - lv).sum(1), "- 1"),
        (lambda m, lv: 0.5 * (m ** 2 + lv.exp() - 1 - lv).sum(), "one value per image"),
        (lambda m, lv: 0.5 * (m ** 2 + lv.exp() - 1 - lv), "Sum over the latent"),
    ],
    "bits_per_dim": [
        (lambda lp, shape=(3, 32, 32): -lp / math.prod(shape), "nats for bits"),
        (lambda lp, shape=(3, 32, 32): lp / (math.prod(shape) * math.log(2)), "sign"),
        (lambda lp, shape=(3, 32, 32): -lp / (1024 * math.log(2)), "every sub-pixel"),
        (lambda lp, shape=(3, 32, 32): -lp * math.log(2) / math.prod(shape), "not by ln 2"),
        (lambda lp, shape=(3, 32, 32): -lp / (3072 * math.log(2)), "compare your formula"),
    ],
    "batch_sizes": [
        (lambda n, b, d: [b] * (n // b), "short last batch"),
        (lambda n, b, d: [b] * (n // b) + ([] if d else [n % b]), "no empty batch"),
        (lambda n, b, d: [b] * (n // b) + ([n % b] if n % b else []), "drop_last=True drops"),
        (lambda n, b, d: [b] * math.ceil(n / b), "images left"),
    ],
    "interpolate": [
        (lambda a, b, n: torch.stack([a + (b - a) * i / n for i in range(n)]), "end at z_b"),
        (lambda a, b, n: interpolate(b, a, n), "starts at z_a"),
        (lambda a, b, n: interpolate(a, b, n + 1), "exactly `steps`"),
        (lambda a, b, n: interpolate(a, b, n)[:, :1], "One row per step"),
    ],
    "slerp": [
        (interpolate, "linear interpolation"),
        (lambda a, b, n: (lambda t, om: (torch.sin((1 - t) * om) * a + torch.sin(t * om) * b)
                          / torch.sin(om))(torch.linspace(0, 1, n, dtype=a.dtype)[:, None],
                                           torch.arccos(a @ b)), "lengths"),
        (lambda a, b, n: (lambda t, om: (torch.sin((1 - t) * om) * a + torch.sin(t * om) * b)
                          / torch.sin(om))(torch.linspace(0, 1, n, dtype=a.dtype)[:, None],
                                           torch.arccos((a @ b / (a.norm() * b.norm()))
                                                        .clamp(-1, 1))), "parallel"),
        (lambda a, b, n: (lambda t, om: (1 - t) * a + t * b if torch.sin(om) < 1e-6 else
                          (torch.sin((1 - t) * om) * a + torch.sin(t * om) * b) / torch.sin(om))(
            torch.linspace(0, 1, n, dtype=a.dtype)[:, None],
            torch.arccos(a @ b / (a.norm() * b.norm()))), "clamp cos W"),
    ],
    "active_units": [
        (lambda m, t=0.01: int((m.var(1) > t).sum()), "over images"),
        (lambda m, t=0.01: int((m.std(0) > t).sum()), "not the standard deviation"),
        (lambda m, t=0.01: int(((m ** 2).mean(0) > t).sum()), "mean square"),
        (lambda m, t=0.01: int((m.abs().mean(0) > t).sum()), "not its size"),
    ],
    "free_bits_kl": [
        (lambda kl, lam: kl.clamp(min=lam).sum(1).mean(), "not each image's"),
        (lambda kl, lam: torch.clamp(kl.sum(1).mean(), min=lam), "not to the total"),
        (lambda kl, lam: kl.mean(0).clamp(max=lam).sum(), "not min"),
        (lambda kl, lam: F.relu(kl.mean(0) - lam).sum(), "not subtracted"),
        (lambda kl, lam: kl.mean(0).clamp(min=lam / math.log(2)).sum(), "nats for bits"),
        (lambda kl, lam: kl.mean(0).clamp(min=lam).mean(), "do not average"),
        (lambda kl, lam: kl.clamp(min=lam).sum(1), "One number for the batch"),
    ],
    "aggregate_log_density": [
        (lambda z, m, lv: aggregate_log_density(z, m, lv) + math.log(len(m)), "divide by N"),
        (lambda z, m, lv: torch.distributions.Normal(m[None], (0.5 * lv[None]).exp()).log_prob(
            z[:, None]).sum(-1).mean(1), "log of a mean"),
        (lambda z, m, lv: (torch.logsumexp(torch.distributions.Normal(
            m[None], (0.5 * lv[None]).exp()).log_prob(z[:, None]), 1) - math.log(len(m)))
         .sum(-1), "sum the log-densities over dimensions first"),
        (lambda z, m, lv: aggregate_log_density(z, m, 2 * lv), "exp(0.5 * log_var)"),
        (lambda z, m, lv: (torch.distributions.Normal(m[None], (0.5 * lv[None]).exp())
                           .log_prob(z[:, None]).sum(-1).exp().mean(1)).log(), "logsumexp"),
    ],
    "soft_clamp": [
        (lambda x, bound=10.0: torch.clamp(x, -bound, bound), "hard clamp"),
        (lambda x, bound=10.0: bound * torch.tanh(x), "identity"),
        (lambda x, bound=10.0: torch.tanh(x / bound), "scale back"),
        (lambda x, bound=10.0: bound * torch.sigmoid(x / bound), "tanh, not sigmoid"),
        (lambda x, bound=10.0: torch.tensor(bound * math.tanh(x.detach()[0].item() / bound))
         if x.numel() == 1 else soft_clamp(x, bound), "gradient must pass"),
    ],
    "group_kl": [
        (lambda qm, qlv, pm, plv: gaussian_kl(qm.flatten(1), qlv.flatten(1)), "not N(0, I)"),
        (lambda qm, qlv, pm, plv: group_kl(pm, plv, qm, qlv), "not KL(p || q)"),
        (lambda qm, qlv, pm, plv: group_kl(qm, qlv, pm, plv) / qm[0].numel(), "do not average"),
        (lambda qm, qlv, pm, plv: group_kl(qm, 2 * qlv, pm, 2 * plv), "log-variance"),
        (lambda qm, qlv, pm, plv: 2 * group_kl(qm, qlv, pm, plv), "0.5"),
        (lambda qm, qlv, pm, plv: group_kl(qm, qlv, pm, plv).sum(), "one value per image"),
    ],
    "group_step": [
        (_group_step_wrong(update_first=False), "after the prior cell's update"),
        (_group_step_wrong(from_prior=True), "drawn from the posterior"),
        (_group_step_wrong(clamp=False), "soft-clamp both"),
        (_group_step_wrong(proj=False), "z_proj"),
        (_group_step_wrong(cell=False), "residual cell"),
        (_group_step_wrong(kl_to=lambda qm: (torch.zeros_like(qm), torch.zeros_like(qm))),
         "not against N(0, I)"),
        (lambda group, h, feat: group_step(group, h, feat)[0], "return a pair"),
        (lambda group, h, feat: (group_step(group, h, feat)[0],
                                 group_step(group, h, feat)[1].sum()), "one value per image"),
    ],
}

CASES = [(name, i) for name, wrongs in WRONG.items() for i in range(len(wrongs))]


@pytest.mark.parametrize("name,i", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_check_rejects_a_wrong_solution_with_its_hint(name, i):
    wrong, words = WRONG[name][i][0], WRONG[name][i][1:]
    expect(name, wrong, *words)


# the discretized logistic: each wrong bin computed from one (wrong) pair of edges

def _mass(x, mean, log_scale, lo, hi, low_edge=True, high_edge=True, scale=None):
    s = log_scale.exp() if scale is None else scale
    up, down = torch.sigmoid((x + hi - mean) / s), torch.sigmoid((x - lo - mean) / s)
    p = up - down
    if low_edge:
        p = torch.where(x == 0, up, p)
    if high_edge:
        p = torch.where(x == 1, 1 - down, p)
    return p.log()


H = 0.5 / 255


def _pixelcnn(x, mean, log_scale, half_range):
    """PixelCNN++'s discretized_logistic_loss, ported: its shortcut where a mass is < 1e-5."""
    centred, inv_s = x - mean, torch.exp(-log_scale)
    cdf_plus, cdf_min = torch.sigmoid(inv_s * (centred + H)), torch.sigmoid(inv_s * (centred - H))
    log_pdf_mid = inv_s * centred - log_scale - 2 * F.softplus(inv_s * centred)
    cdf_delta = cdf_plus - cdf_min
    inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)),
                        log_pdf_mid - math.log(half_range))
    return torch.where(x < 0.001, torch.log(cdf_plus.clamp(min=1e-12)),
                       torch.where(x > 0.999, torch.log((1 - cdf_min).clamp(min=1e-12)), inner))


@pytest.mark.parametrize("wrong,words", [
    (lambda x, m, ls: _mass(x, m, ls, H, H, False, False), ("missing edge bin",)),
    (lambda x, m, ls: _mass(x, m, ls, H, H, low_edge=False), ("lowest bin",)),
    (lambda x, m, ls: _mass(x, m, ls, H, H, high_edge=False), ("highest bin",)),
    (lambda x, m, ls: _mass(x, m, ls, 0.5 / 256, 0.5 / 256), ("1/255 wide",)),
    (lambda x, m, ls: _mass(x, m, ls, 0.0, 1 / 255), ("forgot the - 0.5",)),
    (lambda x, m, ls: _mass(x, m, ls, 1 / 255, 1 / 255), ("half a bin",)),
    (lambda x, m, ls: _mass(x, m, ls, H, H, scale=ls), ("s = exp(log_scale)",)),
    (lambda x, m, ls: torch.distributions.TransformedDistribution(
        torch.distributions.Uniform(torch.zeros_like(m), torch.ones_like(m)),
        [torch.distributions.transforms.SigmoidTransform().inv,
         torch.distributions.transforms.AffineTransform(m, ls.exp())]).log_prob(x)
     - math.log(255), ("density times the bin width",)),
    (lambda x, m, ls: _mass(x, m, ls, H, H), ("F.logsigmoid", "tails")),  # naive, float32 tails
    (lambda x, m, ls: _pixelcnn(x, m, ls, 127.5), ("log(255)",)),  # ported from x in [-1, 1]
    (lambda x, m, ls: _pixelcnn(x, m, ls, 255.0), ("exact where it is small",)),
])
def test_discretized_logistic_rejects(wrong, words):
    expect("discretized_logistic", wrong, *words)


# the encoder: wrong architectures

class _FixedBatchFlatten(nn.Module):
    def forward(self, h):
        return h.view(2, -1)  # the seed's view(batch_size, ...)


def _encoder(latent_dim, width, act=nn.SiLU, padding=1, flatten=nn.Flatten, bias=True,
             extra=()):
    w, p = width, padding
    return nn.Sequential(
        nn.Conv2d(3, w, 4, stride=2, padding=p, bias=bias), act(),
        nn.Conv2d(w, 2 * w, 4, stride=2, padding=p), *extra, act(),
        nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=p), act(),
        flatten(), nn.LazyLinear(2 * latent_dim))


@pytest.mark.parametrize("wrong,words", [
    (lambda d, w: _encoder(d, w, act=lambda: nn.LeakyReLU(True)), ("LeakyReLU(True)",)),
    (lambda d, w: _encoder(d, w, flatten=_FixedBatchFlatten), ("batch of 3",)),
    (lambda d, w: _encoder(d, w, padding=0), ("32 -> 16 -> 8 -> 4",)),
    (lambda d, w: _encoder(d, w, bias=False), ("parameters",)),
    (lambda d, w: _encoder(d, w, extra=(nn.BatchNorm2d(2 * w),)), ("no normalisation",)),
    (lambda d, w: nn.Sequential(_encoder(d, w), nn.Linear(2 * d, d)), ("(B, 2 * latent_dim)",)),
    (lambda d, w: [_encoder(d, w)], ("nn.Module",)),
])
def test_encoder_rejects(wrong, words):
    expect("make_encoder", wrong, *words)


def _encoder_without_biases(latent_dim, width):
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 4, stride=2, padding=1, bias=False), nn.SiLU(),
        nn.Conv2d(w, 2 * w, 4, stride=2, padding=1, bias=False), nn.SiLU(),
        nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1, bias=False), nn.SiLU(),
        nn.Flatten(), nn.Linear(2 * w * 4 * 4, 2 * latent_dim))


@pytest.mark.parametrize("wrong,words,not_words", [
    (_encoder_without_biases, ("20 parameters short", "biases"), ("PReLU",)),
    (lambda d, w: _encoder(d, w, act=nn.PReLU), ("+3 parameters", "PReLU", "parameter-free"),
     ("bias",)),
])
def test_encoder_parameter_count_hint_names_the_cause(wrong, words, not_words):
    result = expect("make_encoder", wrong, *words)
    assert not any(w in result.hint for w in not_words), result.hint


# correct answers that build a constant in float32 (torch.tensor(2.0) is float32): the
# printed numbers match the reference, so the checks must accept them
def _iwae_bounds_f32(log_w, ks):
    return torch.stack([(torch.logsumexp(log_w[:len(log_w) // k * k].reshape(
        len(log_w) // k, k, -1), 1) - torch.log(torch.tensor(float(k)))).mean() for k in ks])


def _exact_elbo_f32(model, x):
    d = x.shape[1]
    return (exact_elbo(model, x) + 0.5 * d * math.log(2 * math.pi)
            - 0.5 * d * torch.log(torch.tensor(2 * math.pi)))


@pytest.mark.parametrize("name,solution", [
    ("log_mean_exp", lambda lw: torch.logsumexp(lw, 0) - torch.log(torch.tensor(lw.shape[0]))),
    ("iwae_bounds", _iwae_bounds_f32),
    ("exact_elbo", _exact_elbo_f32),
    ("gaussian_kl", lambda m, lv: 0.5 * (m ** 2 + torch.tensor(math.e) ** lv - 1 - lv).sum(1)),
    ("bits_per_dim", lambda lp, s=(3, 32, 32): -lp / (math.prod(s) * torch.log(torch.tensor(2.)))),
])
def test_a_float32_constant_passes(name, solution):
    assert check(name)(solution).status == "passed"


def test_float32_level_error_gets_the_float32_hint():
    result = expect("log_mean_exp", lambda lw: log_mean_exp(lw) * (1 + 3e-6), "float32")
    lines = result.message.splitlines()
    assert lines[1].split(":")[1].strip() != lines[2].split(":")[1].strip()  # digits differ


# the training step: a mistake in each place of the sequence

def _step(model, optimizer, x, kl_weight, max_norm, amp_dtype, *, autocast=True, zero=True,
          clip="before", reduce="mean", weight=True, norm_after=False):
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32,
                        enabled=autocast and amp_dtype is not None):
        out = model(x)
    per_image = -(out.reconstruction - (kl_weight if weight else 1.0) * out.kl)
    loss = per_image.mean() if reduce == "mean" else per_image.sum()
    if zero:
        optimizer.zero_grad()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                          max_norm if clip == "before" else float("inf"))
    if norm_after:
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()
                              if p.grad is not None))
    optimizer.step()
    if clip == "after":
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return loss.detach(), norm


@pytest.mark.parametrize("kw,words", [
    (dict(zero=False), ("zero_grad",)),
    (dict(clip="none"), ("clip the gradient",)),
    (dict(clip="after"), ("between backward() and step()",)),
    (dict(norm_after=True), ("before clipping",)),
    (dict(reduce="sum"), ("sum where a mean belongs",)),
    (dict(weight=False), ("kl_weight",)),
    (dict(autocast=False), ("torch.autocast",)),
])
def test_training_step_rejects(kw, words):
    def wrong(*args):
        return _step(*args, **kw)

    expect("training_step", wrong, *words)


def test_training_step_solution_matches_the_packages_train_step():
    """The check's reference sequence is train.train_step's: same loss and parameters."""
    from types import SimpleNamespace

    from vae_tutorial import train
    from vae_tutorial.config import ModelConfig
    from vae_tutorial.model import build_model

    torch.manual_seed(0)
    base = build_model(ModelConfig(width=4, latent_dim=4, res_blocks=0, likelihood="logistic"))
    x = torch.randint(0, 256, (4, 3, 32, 32)).float() / 255
    finals = []
    for use_package in (True, False):
        model = __import__("copy").deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        torch.manual_seed(5)
        if use_package:
            run = SimpleNamespace(cfg=SimpleNamespace(free_bits=0.0, grad_clip=5.0,
                                                      grad_skip=None),
                                  opt=opt, net=model, model=model, device=x.device,
                                  amp_dtype=None, pos=None)
            _, norm = train.train_step(run, x, lr=0.01, kl_weight=0.7)
        else:
            _, norm = training_step(model, opt, x, 0.7, 5.0, None)
        finals.append((float(norm), torch.cat([p.detach().flatten()
                                               for p in model.parameters()])))
    assert finals[0][0] == pytest.approx(finals[1][0], rel=1e-6)
    assert torch.allclose(finals[0][1], finals[1][1], atol=1e-7)


def test_result_is_silent_in_a_notebook_and_true_only_when_passed(capsys):
    result = ex.check_soft_clamp(soft_clamp)
    assert bool(result) and result._ipython_display_() is None
    assert not ex.check_soft_clamp(lambda x, bound=10.0: x)


def test_command_line_checks_the_functions_a_file_defines(tmp_path, capsys):
    answers = tmp_path / "answers.py"
    answers.write_text("import torch\n\n"
                       "def soft_clamp(x, bound=10.0):\n"
                       "    return bound * torch.tanh(x / bound)\n\n"
                       "def gaussian_kl(mean, log_var):\n    raise NotImplementedError\n\n"
                       "def bits_per_dim(log_px, image_shape):\n    return -log_px\n")
    assert ex.main([str(answers)]) == 1  # bits_per_dim is wrong
    out = capsys.readouterr().out
    assert "check_soft_clamp: passed" in out and "check_gaussian_kl: not attempted yet" in out
    assert "check_bits_per_dim: FAILED" in out
    assert ex.main(["--list"]) == 0 and "notebook 8: group_kl" in capsys.readouterr().out


def test_known_mistakes_are_really_wrong():
    """Every mutant in the table differs from the reference on some input (a sanity check
    of the tests themselves): the hint-matching cannot hide a correct answer."""
    x = torch.tensor([0.0, 0.2, 1.0], dtype=torch.float64)
    m = torch.tensor([0.1, 0.3, 0.9], dtype=torch.float64)
    ls = torch.tensor([-3.0, -2.0, -3.0], dtype=torch.float64)
    ref = losses._log_bin_mass(x, m, ls)
    assert torch.allclose(discretized_logistic(x, m, ls), ref, atol=1e-12)
    assert not torch.allclose(_mass(x, m, ls, H, H, False, False), ref)


# --- the notebooks: every one ends with its exercises, each with a stub and a hidden solution ---

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("0*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_ends_with_its_exercises(path):
    number = int(path.name[:2])
    cells = json.loads(path.read_text())["cells"]
    start = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
                 and "".join(c["source"]).startswith("## Exercises"))
    names = [n for n, (nb, _) in ex.EXERCISES.items() if nb == number]
    assert (1 if number == 0 else 2) <= len(names) <= 4  # notebook 0: one exercise
    tail = cells[start + 1:]
    assert len(tail) == 3 * len(names)  # statement, stub, solution: nothing after them
    for name, (statement, stub, solution) in zip(names, zip(*[iter(tail)] * 3)):
        assert statement["cell_type"] == "markdown"
        assert "".join(statement["source"]).startswith("### Exercise")
        stub_src, sol_src = "".join(stub["source"]), "".join(solution["source"])
        assert f"def {name}(" in stub_src and "raise NotImplementedError" in stub_src
        assert stub_src.rstrip().endswith(f"check_{name}({name})")
        assert f"def {name}(" in sol_src and "NotImplementedError" not in sol_src
        assert sol_src.rstrip().endswith(f"check_{name}({name})")
        assert solution["metadata"] == {"jupyter": {"source_hidden": True}}
        assert not stub["metadata"].get("jupyter")
        # stored outputs: the verdicts nbval compares (the same in fast and full mode)
        assert "".join(stub["outputs"][0]["text"]).startswith(f"check_{name}: not attempted yet")
        assert "".join(solution["outputs"][0]["text"]).startswith(f"check_{name}: passed")
