"""The exercise checks of notebook 8, the hierarchical VAE (notebooks/08_hierarchical.ipynb)."""

from __future__ import annotations

import torch

from .. import losses
from .verdict import Result, _call, _compare, _Failed, _gen, _run


def check_soft_clamp(fn) -> Result:
    """fn(x, bound) -> bound * tanh(x / bound), differentiable everywhere."""
    def body():
        cases = [("x from -40 to 40, bound 10", torch.linspace(-40, 40, 9, dtype=torch.float64),
                  10.0),
                 ("small x (-0.5 to 0.5), bound 10", torch.linspace(-0.5, 0.5, 5,
                                                                    dtype=torch.float64), 10.0),
                 ("x from -9 to 9, bound 3", torch.linspace(-9, 9, 7, dtype=torch.float64), 3.0)]
        mistakes = [
            (lambda x, b: x.clamp(-b, b), "a hard clamp: its gradient is exactly zero beyond "
             "the bound, so a saturated log-variance never recovers. Use bound * tanh(x / bound)"),
            (lambda x, b: b * torch.tanh(x), "near 0 it must be the identity: divide by bound "
             "inside the tanh, bound * tanh(x / bound)"),
            (lambda x, b: torch.tanh(x / b), "scale back by bound: bound * tanh(x / bound)"),
            (lambda x, b: b * torch.sigmoid(x / b), "tanh, not sigmoid: the bound is "
             "symmetric, (-bound, bound)"),
        ]
        for case, x, b in cases:
            got = _call(fn, case, x, b)
            _compare(got, b * torch.tanh(x / b), case, mistakes, (x, b), rtol=1e-9, atol=1e-12)
        x = torch.tensor([30.0], dtype=torch.float64, requires_grad=True)
        out = _call(fn, "the gradient at x = 30", x, 10.0)
        if not isinstance(out, torch.Tensor) or not out.requires_grad or not torch.autograd.grad(
                out.sum(), x)[0].abs().item() > 0:
            raise _Failed("the gradient at x = 30, bound 10", "the gradient must pass: use "
                          "torch operations on x (no .item(), no torch.no_grad())")
        return f"{len(cases)} inputs against bound * tanh(x / bound), gradient beyond the bound"
    return _run("soft_clamp", body)


def _group_kl_reference(qm, qlv, pm, plv):
    q = torch.distributions.Normal(qm, (0.5 * qlv).exp())
    p = torch.distributions.Normal(pm, (0.5 * plv).exp())
    return torch.distributions.kl_divergence(q, p).flatten(1).sum(1)


def check_group_kl(fn) -> Result:
    """fn(q_mean, q_log_var, p_mean, p_log_var) -> (B,): KL(q(z_i|x, z<i) || p(z_i|z<i))."""
    def body():
        g = _gen(13)

        def r(*shape, scale=1.0, shift=0.0):
            return shift + scale * torch.randn(*shape, generator=g, dtype=torch.float64)

        same_m, same_lv = r(2, 3, 4, 4), r(2, 3, 4, 4, scale=0.5)
        cases = [
            ("a group of 3 x 4 x 4 latents, B = 2",
             r(2, 3, 4, 4), r(2, 3, 4, 4, scale=0.5, shift=-1), r(2, 3, 4, 4, scale=0.5),
             r(2, 3, 4, 4, scale=0.5)),
            ("posterior equal to the prior: KL = 0", same_m, same_lv, same_m.clone(),
             same_lv.clone()),
            ("a prior N(0, I): the KL of notebook 4", r(2, 2, 2, 2), r(2, 2, 2, 2, scale=0.3),
             torch.zeros(2, 2, 2, 2, dtype=torch.float64), torch.zeros(2, 2, 2, 2,
                                                                        dtype=torch.float64)),
            ("one image, 2 x 8 x 8 latents, narrow prior", r(1, 2, 8, 8), r(1, 2, 8, 8,
             shift=-2), r(1, 2, 8, 8), r(1, 2, 8, 8, scale=0.3, shift=-3)),
        ]
        mistakes = [
            (lambda qm, qlv, pm, plv: losses.gaussian_kl(qm.flatten(1), qlv.flatten(1)),
             "the prior of a group is N(mu_p, sigma_p^2), computed from the groups above, not "
             "N(0, I)"),
            (lambda qm, qlv, pm, plv: _group_kl_reference(pm, plv, qm, qlv),
             "KL(q || p), not KL(p || q): the expectation is under the posterior q"),
            (lambda qm, qlv, pm, plv: _group_kl_reference(qm, qlv, pm, plv) / qm[0].numel(),
             "sum over every latent variable of the group (C x H x W), do not average"),
            (lambda qm, qlv, pm, plv: _group_kl_reference(qm, 2 * qlv, pm, 2 * plv),
             "log_var is the log-variance: sigma = exp(0.5 * log_var)"),
            (lambda qm, qlv, pm, plv: 2 * _group_kl_reference(qm, qlv, pm, plv),
             "a factor of 2 too large: the closed form has 0.5 in front"),
            (lambda qm, qlv, pm, plv: _group_kl_reference(qm, qlv, pm, plv).sum(),
             "one value per image, (B,)"),
        ]
        for case, *args in cases:
            got = _call(fn, case, *args)
            _compare(got, _group_kl_reference(*args), case, mistakes, args, rtol=1e-9,
                     atol=1e-10, shape_hint="Sum over channels and positions, one value per "
                     "image.")
        return f"{len(cases)} inputs against torch.distributions.kl_divergence of the two " \
               "Gaussians"
    return _run("group_kl", body)


def _group_and_inputs(g: torch.Generator, width: int = 8, zdim: int = 3, res: int = 4, b: int = 2):
    """A LatentGroup with a prior that is not yet N(0, I), and a state h and features."""
    from ..hvae import LatentGroup

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        group = LatentGroup(width, zdim, scale=0.5)
    with torch.no_grad():  # a trained prior: its weights no longer zero
        group.prior.conv.weight.normal_(0, 0.2, generator=g)
        group.prior.conv.bias.normal_(0, 0.2, generator=g)
    h = torch.randn(b, width, res, res, generator=g)
    feat = torch.randn(b, width, res, res, generator=g)
    return group, h, feat


def check_group_step(fn) -> Result:
    """fn(group, h, feat) -> (new h, KL (B,)): one latent group's step of the top-down pass in
    training, compared with the model's own LatentGroup.forward on the same noise."""
    from ..hvae import soft_clamp

    def variant(group, h, feat, *, update_first=True, clamp=True, from_prior=False,
                proj=True, cell=True, prior_kl=True):
        """The step, or one of its typical mistakes."""
        d = group.zdim
        p = group.prior(h)
        pm, plv, dh = p[:, :d], p[:, d:2 * d], p[:, 2 * d:]
        plv = soft_clamp(plv) if clamp else plv
        h_new = h + dh
        q = group.posterior(torch.cat([h_new if update_first else h, feat], 1))
        qm, qlv = q[:, :d], soft_clamp(q[:, d:]) if clamp else q[:, d:]
        m, lv = (pm, plv) if from_prior else (qm, qlv)
        z = m + torch.exp(0.5 * lv) * torch.randn_like(m)
        kl = (losses.normal_kl(qm, qlv, pm, plv) if prior_kl
              else losses.normal_kl(qm, qlv, torch.zeros_like(qm), torch.zeros_like(qlv)))
        out = h_new + group.z_proj(z) if proj else h_new
        return (group.cell(out) if cell else out), kl.flatten(1).sum(1)

    mistakes = [
        (dict(update_first=False), "the posterior reads the state after the prior cell's "
         "update, h + delta_h: add delta_h to h first, then compute the posterior"),
        (dict(from_prior=True), "in training, z is drawn from the posterior q (mu_q, sigma_q), "
         "not from the prior"),
        (dict(clamp=False), "soft-clamp both log-variances (the prior's and the posterior's) "
         "with hvae.soft_clamp before using them"),
        (dict(proj=False), "add proj(z) to the state: h + group.z_proj(z), then the cell"),
        (dict(cell=False), "finish with the residual cell: group.cell(h + group.z_proj(z))"),
        (dict(prior_kl=False), "the KL is against the group's prior N(mu_p, sigma_p^2), "
         "computed from h, not against N(0, I)"),
    ]

    def body():
        g = _gen(17)
        cases = [("a group of 3 channels at 4x4, width 8, B = 2", *_group_and_inputs(g)),
                 ("a group of 2 channels at 8x8, width 6, B = 3",
                  *_group_and_inputs(g, width=6, zdim=2, res=8, b=3))]
        for case, group, h, feat in cases:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))

            def run(f):
                with torch.random.fork_rng(devices=[]), torch.no_grad():
                    torch.manual_seed(seed)  # the same noise for z in every call
                    return f(group, h.clone(), feat.clone())

            ref_h, ref_kl, _ = run(lambda gr, hh, ff: gr(hh, ff))  # the model's own step
            got = _call(lambda *a: run(fn), case)
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise _Failed(case, "return a pair: (the new state h, the KL per image)")
            for part, value, expected, shape_hint in (
                    ("the KL per image", got[1], ref_kl, "Sum over channels and positions: "
                     "one value per image."),
                    ("the new state h", got[0], ref_h, "The state keeps its shape (B, W, r, r).")):
                wrong = [(lambda *_, kw=kw: run(lambda gr, hh, ff: variant(gr, hh, ff, **kw))[
                    0 if part == "the new state h" else 1], hint) for kw, hint in mistakes]
                _compare(value, expected, f"{case}: {part}", wrong, (), rtol=1e-5, atol=1e-5,
                         shape_hint=shape_hint, fallback="follow the four lines of section 1 in "
                         "order: prior cell, posterior, z from the posterior, proj and cell")
        return f"{len(cases)} groups against the model's own LatentGroup.forward, same noise"
    return _run("group_step", body)
