"""The exercise checks of notebook 5, training (notebooks/05_training.ipynb)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..data import CifarLoader
from ..model import build_model
from .verdict import Result, _as_tensor, _call, _close, _Failed, _gen, _run


def check_batch_sizes(fn) -> Result:
    """fn(n, batch_size, drop_last) -> list of the batch sizes of one epoch."""
    def body():
        cases = [(1000, 128, False), (1000, 128, True), (50_000, 128, False), (500, 100, False),
                 (80, 128, False), (80, 128, True), (50_000, 100, True)]
        mistakes = [
            (lambda n, b, d: [b] * (n // b) + ([n % b] if n % b else []),
             "drop_last=True drops the short last batch"),
            (lambda n, b, d: [b] * (n // b), "keep the short last batch "
             "(drop_last=False): its n % batch_size images are part of the epoch"),
            (lambda n, b, d: [b] * (n // b) + ([] if d else [n % b]), "no empty batch when "
             "batch_size divides n (n % batch_size == 0)"),
            (lambda n, b, d: [b] * -(-n // b), "the last batch holds only the images left, "
             "n - (batches - 1) * batch_size"),
        ]
        for n, b, d in cases:
            case = f"n={n:,}, batch_size={b}, drop_last={d}"
            images = torch.zeros(n, 1, 1, 1, dtype=torch.uint8)
            expected = [len(x) for x, _ in CifarLoader(images, batch_size=b, shuffle=False,
                                                        drop_last=d)]
            got = _call(fn, case, n, b, d)
            try:
                got_list = [int(v) for v in got]
            except Exception:
                raise _Failed(case, "return a list of integers", expected, got) from None
            if got_list != expected:
                hint = next((h for w, h in mistakes if w(n, b, d) == got_list),
                            "one batch of batch_size images after another; what is left over "
                            "forms the last batch")
                raise _Failed(case, hint, expected, got_list)
        return f"{len(cases)} epochs against the batches CifarLoader yields"
    return _run("batch_sizes", body)


def _reference_step(model, opt, x, kl_weight, max_norm, amp_dtype, *, kl=True, mean=True,
                    zero=True, clip="before", autocast=True):
    """One training step as train.train_step takes it; keyword switches make known mistakes."""
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32,
                        enabled=autocast and amp_dtype is not None):
        out = model(x)
    w = kl_weight if kl else 1.0
    per_image = -(out.reconstruction - w * out.kl)
    loss = per_image.mean() if mean else per_image.sum()
    if zero:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    params = list(model.parameters())
    if clip == "before":
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    elif clip == "after-norm":  # the norm after clipping returned
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
    opt.step()
    return loss.detach(), norm


class _AutocastProbe(nn.Module):
    """Wraps a model; records whether each forward pass ran under autocast, and its dtype."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        dev = x.device.type
        self.seen.append(torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev)
                         else None)
        return self.model(x)


def _trajectory(step_fn, base, x, kl_weight, max_norm, amp_dtype, steps=2, **kw):
    """(losses, norms, final parameters, autocast dtypes seen) of `steps` steps from `base`."""
    model = _AutocastProbe(copy.deepcopy(base))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = []
    for s in range(steps):
        torch.manual_seed(100 + s)  # the same noise z for every trajectory
        out.append(step_fn(model, opt, x, kl_weight, max_norm, amp_dtype, **kw))
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    return out, params, model.seen


def check_training_step(fn) -> Result:
    """fn(model, optimizer, x, kl_weight, max_norm, amp_dtype) -> (loss, gradient norm)."""
    def body():
        torch.manual_seed(0)
        base = build_model(ModelConfig(width=4, latent_dim=4, res_blocks=0,
                                       likelihood="logistic"))
        g = _gen(7)
        x = torch.randint(0, 256, (6, 3, 32, 32), generator=g).float() / 255
        cases = [("fp32, kl_weight 0.5, max_norm 1e9 (no clipping)", 0.5, 1e9, None),
                 ("fp32, kl_weight 1.0, max_norm 5 (clipping active)", 1.0, 5.0, None),
                 ("bf16 autocast, kl_weight 0.3, max_norm 5", 0.3, 5.0, torch.bfloat16)]
        mistakes = [
            (dict(zero=False), "call optimizer.zero_grad() before backward(): the second "
             "step's gradient included the first step's"),
            (dict(clip="none"), "clip the gradient with torch.nn.utils.clip_grad_norm_(params, "
             "max_norm) between backward() and step() (clipping after the step does nothing)"),
            (dict(clip="after-norm"), "return the norm clip_grad_norm_ returns: the norm "
             "before clipping (it is what tells you clipping happened)"),
            (dict(mean=False), "sum where a mean belongs: average the per-image loss over "
             "the batch (the gradient was batch-size times too large)"),
            (dict(kl=False), "weight the KL term by kl_weight: "
             "losses.training_loss(out, kl_weight)"),
        ]
        for case, w, max_norm, amp in cases:
            ref, ref_params, _ = _trajectory(_reference_step, base, x, w, max_norm, amp)

            def learner(model, opt, x, w, max_norm, amp, case=case):
                return _call(fn, case, model, opt, x, w, max_norm, amp)

            got, got_params, seen = _trajectory(learner, base, x, w, max_norm, amp)
            if amp is not None and any(d != amp for d in seen):
                raise _Failed(case, "run the forward pass under torch.autocast(x.device.type, "
                              "dtype=amp_dtype) when amp_dtype is given", amp, seen[-1])
            if amp is None and any(d is not None for d in seen):
                raise _Failed(case, "amp_dtype None means fp32: no autocast "
                              "(enabled=amp_dtype is not None)", None, seen[-1])
            for s, ((rl, rn), gv) in enumerate(zip(ref, got)):
                what = f"{case}, step {s + 1}"
                if not (isinstance(gv, (tuple, list)) and len(gv) == 2):
                    raise _Failed(what, "return (loss, gradient norm)")
                got_all = torch.cat([_as_tensor(v).reshape(1) for v in gv]
                                    + [got_params.double()])
                exp_all = torch.cat([_as_tensor(rl).reshape(1), _as_tensor(rn).reshape(1),
                                     ref_params.double()])
                if _close(got_all, exp_all, rtol=1e-4, atol=1e-6):
                    continue
                for kw, hint in mistakes:
                    m, m_params, _ = _trajectory(_reference_step, base, x, w, max_norm, amp,
                                                 **kw)
                    ml, mn = m[s]
                    mut = torch.cat([_as_tensor(ml).reshape(1), _as_tensor(mn).reshape(1),
                                     m_params.double()])
                    if _close(got_all, mut, rtol=1e-4, atol=1e-6):
                        raise _Failed(what, hint, f"loss {float(rl):.6g}, norm {float(rn):.6g}",
                                      f"loss {float(gv[0]):.6g}, norm {float(gv[1]):.6g}")
                raise _Failed(what, "the loss is -(reconstruction - kl_weight * kl).mean(); "
                              "zero_grad, backward, clip_grad_norm_, step, in that order",
                              f"loss {float(rl):.6g}, norm {float(rn):.6g}",
                              f"loss {float(gv[0]):.6g}, norm {float(gv[1]):.6g}")
        return "2 steps in each of 3 settings against train.train_step's sequence: loss, " \
               "gradient norm, parameters and autocast"
    return _run("training_step", body)
