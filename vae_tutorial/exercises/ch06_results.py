"""The exercise checks of notebook 6, results (notebooks/06_results.ipynb)."""

from __future__ import annotations

import torch

from .verdict import Result, _call, _compare, _gen, _run


def _lerp(a, b, steps):
    t = torch.linspace(0, 1, steps, dtype=a.dtype)[:, None]
    return (1 - t) * a + t * b


def check_interpolate(fn) -> Result:
    """fn(z_a, z_b, steps) -> (steps, D): the straight line from z_a to z_b, both included."""
    def body():
        g = _gen(8)
        cases = [("z_a = [0, 0, 0], z_b = [1, 2, 4], 5 steps", torch.zeros(3, dtype=torch.float64),
                  torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64), 5),
                 ("two random 128-d codes, 10 steps", torch.randn(128, generator=g,
                                                                  dtype=torch.float64),
                  torch.randn(128, generator=g, dtype=torch.float64), 10),
                 ("2 steps: the endpoints alone", torch.tensor([1.0, -1.0], dtype=torch.float64),
                  torch.tensor([3.0, 5.0], dtype=torch.float64), 2)]
        mistakes = [
            (lambda a, b, n: torch.stack([(1 - t) * a + t * b for t in
                                          torch.arange(n, dtype=a.dtype) / n]),
             "the path must end at z_b: t = torch.linspace(0, 1, steps), both ends included"),
            (lambda a, b, n: _lerp(b, a, n), "the path starts at z_a (t = 0) and ends at z_b"),
            (lambda a, b, n: _lerp(a, b, n + 1), "exactly `steps` codes, the endpoints "
             "included"),
        ]
        for case, a, b, n in cases:
            got = _call(fn, case, a, b, n)
            _compare(got, _lerp(a, b, n), case, mistakes, (a, b, n), rtol=1e-9, atol=1e-12,
                     shape_hint="One row per step, (steps, D).")
        return f"{len(cases)} inputs against (1 - t) z_a + t z_b"
    return _run("interpolate", body)


def _slerp(a, b, steps):
    t = torch.linspace(0, 1, steps, dtype=a.dtype)[:, None]
    cos = (a @ b / (a.norm() * b.norm())).clamp(-1, 1)
    omega = torch.arccos(cos)
    if omega.sin() < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / omega.sin()


def check_slerp(fn) -> Result:
    """fn(z_a, z_b, steps) -> (steps, D): spherical interpolation."""
    def body():
        g = _gen(9)
        a128 = torch.randn(128, generator=g, dtype=torch.float64)
        cases = [("orthogonal unit vectors [1, 0] and [0, 1], 3 steps",
                  torch.tensor([1.0, 0.0], dtype=torch.float64),
                  torch.tensor([0.0, 1.0], dtype=torch.float64), 3),
                 ("two random 128-d codes, 7 steps", a128,
                  torch.randn(128, generator=g, dtype=torch.float64), 7),
                 ("codes of different lengths, [3, 0] and [0, 1], 5 steps",
                  torch.tensor([3.0, 0.0], dtype=torch.float64),
                  torch.tensor([0.0, 1.0], dtype=torch.float64), 5),
                 ("z_b = z_a (the angle is 0)", a128, a128.clone(), 4)]

        def unnormalised(a, b, n):
            t = torch.linspace(0, 1, n, dtype=a.dtype)[:, None]
            omega = torch.arccos(a @ b)
            return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / omega.sin()

        mistakes = [
            (_lerp, "that is linear interpolation: its midpoint is shorter than both ends. "
             "Slerp follows the arc, (sin((1-t) W) z_a + sin(t W) z_b) / sin W, with "
             "cos W = z_a . z_b / (|z_a| |z_b|)"),
            (unnormalised, "the angle needs the lengths: cos W = z_a . z_b / (|z_a| |z_b|)"),
        ]
        for case, a, b, n in cases:
            got = _call(fn, case, a, b, n)
            _compare(got, _slerp(a, b, n), case, mistakes, (a, b, n), rtol=1e-7, atol=1e-9,
                     shape_hint="One row per step, (steps, D).",
                     nonfinite_hint="when z_a and z_b are parallel, sin W = 0: fall back to "
                     "linear interpolation there (the two agree as W -> 0), and clamp cos W to "
                     "[-1, 1], which rounding can overshoot" if torch.equal(a, b)
                     else "arccos of a number outside [-1, 1] is NaN: the angle needs the "
                     "lengths, cos W = z_a . z_b / (|z_a| |z_b|)")
        return f"{len(cases)} inputs against the closed form, parallel codes included"
    return _run("slerp", body)


def check_active_units(fn) -> Result:
    """fn(means, threshold) -> int: units u with Var over images of means[:, u] > threshold."""
    def body():
        g = _gen(10)
        stds = torch.tensor([0.0, 0.05, 0.2, 1.0, 3.0, 0.001], dtype=torch.float64)
        offsets = torch.tensor([5.0, 0.0, -1.0, 0.0, 2.0, 0.3], dtype=torch.float64)
        means = offsets + stds * torch.randn(500, 6, generator=g, dtype=torch.float64)
        cases = [("500 codes, 6 units with standard deviations "
                  "[0, 0.05, 0.2, 1, 3, 0.001] around means [5, 0, -1, 0, 2, 0.3]", means, 0.01),
                 ("the same codes, threshold 0.001", means, 0.001),
                 ("the same codes, threshold 100", means, 100.0),
                 ("3 codes of 4 units", torch.randn(3, 4, generator=g, dtype=torch.float64), 0.01)]
        mistakes = [
            (lambda m, t: int((m.var(1) > t).sum()), "take the variance over images "
             "(dim 0), one value per unit, not over the units of each image"),
            (lambda m, t: int((m.std(0) > t).sum()), "compare the variance, not the standard "
             "deviation, with the threshold"),
            (lambda m, t: int((m.pow(2).mean(0) > t).sum()), "a unit whose code is the same "
             "for every image carries nothing, even far from 0: use the variance over images, "
             "not the mean square"),
            (lambda m, t: int((m.abs().mean(0) > t).sum()), "a unit is active when its code "
             "moves with the image: its variance over images, not its size"),
        ]
        for case, m, t in cases:
            expected = int((m.var(0) > t).sum())
            got = _call(fn, case, m, t)
            _compare(got, torch.tensor(float(expected)), case, mistakes, (m, t))
        return f"{len(cases)} inputs against Cov_x(E_q[z_u]) > threshold (latent_statistics)"
    return _run("active_units", body)
