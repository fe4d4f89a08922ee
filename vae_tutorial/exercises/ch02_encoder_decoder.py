"""The exercise checks of notebook 2, encoder and decoder (notebooks/02_encoder_decoder.ipynb)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..demos import (
    superposition_error,
)
from ..model import count_parameters
from .verdict import Result, _call, _compare, _Failed, _gen, _run


def check_conv_output_size(fn) -> Result:
    """fn(size, kernel, stride, padding) -> int: the output size of nn.Conv2d."""
    def body():
        cases = [(16, 5, 1, 2), (32, 4, 2, 1), (32, 3, 1, 1), (5, 4, 2, 1), (7, 3, 2, 0),
                 (1, 3, 1, 1), (8, 5, 3, 2), (33, 4, 2, 1)]
        mistakes = [
            (lambda s, k, st, p: (s + 2 * p - k) // st, "add 1: a kernel that fits once "
             "gives one output, floor((size + 2 padding - kernel) / stride) + 1"),
            (lambda s, k, st, p: -(-(s + 2 * p - k) // st) + 1, "round down, not up: "
             "a stride that does not fit in the last step is dropped (use //)"),
            (lambda s, k, st, p: (s + 2 * p - k) / st + 1, "use floor division //: sizes "
             "are whole numbers"),
            (lambda s, k, st, p: (s + p - k) // st + 1, "padding is added on both sides: "
             "size + 2 * padding"),
        ]
        for s, k, st, p in cases:
            case = f"size={s}, kernel={k}, stride={st}, padding={p}"
            expected = nn.Conv2d(1, 1, k, stride=st, padding=p)(torch.zeros(1, 1, s, s)).shape[-1]
            got = _call(fn, case, s, k, st, p)
            if isinstance(got, float) and got != int(got):
                raise _Failed(case, mistakes[2][1], expected, got)
            _compare(got, torch.tensor(float(expected)), case, mistakes, (s, k, st, p))
        return f"{len(cases)} layers against nn.Conv2d's own output"
    return _run("conv_output_size", body)


def check_conv_parameters(fn) -> Result:
    """fn(c_in, c_out, kernel, bias) -> int: the parameters of nn.Conv2d (square kernel)."""
    def body():
        cases = [(3, 64, 4, True), (64, 128, 4, False), (16, 32, 3, True), (1, 1, 1, True),
                 (128, 30, 4, True), (5, 7, 3, False)]
        mistakes = [
            (lambda i, o, k, b: o * i * k * k, "add the biases: one per output channel"),
            (lambda i, o, k, b: o * i * k * k + o, "bias=False: such a layer has no biases"),
            (lambda i, o, k, b: o * i * k + o * b, "a k x k kernel has k * k weights per pair "
             "of channels"),
            (lambda i, o, k, b: o * i * k * k + i * b, "one bias per output channel, not per "
             "input channel"),
            (lambda i, o, k, b: o * k * k + o * b, "every output channel sees every input "
             "channel: c_in * c_out kernels"),
        ]
        for i, o, k, b in cases:
            case = f"c_in={i}, c_out={o}, kernel={k}, bias={b}"
            expected = count_parameters(nn.Conv2d(i, o, k, bias=b))
            got = _call(fn, case, i, o, k, b)
            _compare(got, torch.tensor(float(expected)), case, mistakes, (i, o, k, b))
        return f"{len(cases)} layers against count_parameters(nn.Conv2d(...))"
    return _run("conv_parameters", body)


def _spec_encoder(latent_dim: int, width: int) -> nn.Module:
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 4, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),
        nn.Flatten(), nn.Linear(2 * w * 16, 2 * latent_dim))


def check_make_encoder(fn) -> Result:
    """fn(latent_dim, width) -> nn.Module mapping (B, 3, 32, 32) to (B, 2 latent_dim)."""
    def body():
        for latent_dim, width in ((8, 4), (5, 3)):
            spec = f"make_encoder(latent_dim={latent_dim}, width={width})"
            torch.manual_seed(0)
            enc = _call(fn, spec, latent_dim, width)
            if not isinstance(enc, nn.Module):
                raise _Failed(spec, f"return an nn.Module (e.g. nn.Sequential), not "
                              f"{type(enc).__name__}")
            sizes = []
            hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
                     for m in enc.modules() if isinstance(m, nn.Conv2d)]
            for b in (2, 3, 1):
                case = f"{spec} on a batch of {b} images"
                sizes.clear()
                try:
                    with torch.no_grad():
                        out = enc(torch.rand(b, 3, 32, 32) - 0.5)
                except Exception as err:
                    hint = (f"it raised {type(err).__name__}: {err}. "
                            + ("It fails on a batch of {b} only: do not build the batch size "
                               "into the network (nn.Flatten() keeps any batch)".format(b=b)
                               if b != 2 else ""))
                    raise _Failed(case, hint.strip()) from None
                if tuple(out.shape) != (b, 2 * latent_dim):
                    raise _Failed(case, "the output holds mean and log-variance side by side: "
                                  "(B, 2 * latent_dim)", (b, 2 * latent_dim), tuple(out.shape))
                if sizes != [16, 8, 4]:
                    raise _Failed(case, "three convolutions with kernel 4, stride 2, padding "
                                  "1 halve the resolution: 32 -> 16 -> 8 -> 4", [16, 8, 4], sizes)
            for h in hooks:
                h.remove()
            g = _gen(3)
            xa, xb = (0.5 * torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
                      for _ in range(2))
            f = copy.deepcopy(enc).double().eval()
            with torch.no_grad():
                err = superposition_error(f, xa, xb) / max(f(xa).abs().max().item(), 1e-12)
            if err < 1e-9:
                raise _Failed(f"{spec}: the superposition test of notebook 2", "your encoder is "
                              "affine: its activations do nothing. nn.LeakyReLU(True) sets "
                              "negative_slope = 1.0 (the identity); use nn.LeakyReLU(0.01) or "
                              "nn.SiLU()", "> 1e-9 (non-linear)", f"{err:.2g}")
            n, want = count_parameters(enc), count_parameters(_spec_encoder(latent_dim, width))
            if n != want:
                norm = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
                no_bias = sum(m.out_channels for m in enc.modules()
                              if isinstance(m, nn.Conv2d) and m.bias is None)
                own = [m for m in enc.modules() if not isinstance(m, (nn.Conv2d, nn.Linear, *norm))
                       and any(True for _ in m.parameters(recurse=False))]
                if no_bias and want - n == no_bias and not any(
                        isinstance(m, norm) for m in enc.modules()):
                    raise _Failed(f"{spec}: the parameter count", f"{no_bias} parameters short, "
                                  "exactly the biases of your convolutions with bias=False: the "
                                  "specification's convolutions have biases (nn.Conv2d's "
                                  "default)", want, n)
                if own and not any(isinstance(m, norm) for m in enc.modules()):
                    raise _Failed(f"{spec}: the parameter count", f"{n - want:+d} parameters: "
                                  f"your {type(own[0]).__name__} has parameters of its own; the "
                                  "specification asks for a parameter-free non-linearity "
                                  "(nn.SiLU(), nn.LeakyReLU(0.01), ...)", want, n)
                raise _Failed(f"{spec}: the parameter count", "the specified layers (three "
                              "convolutions with biases, widths width, 2 width, 2 width, then "
                              "one Linear, no normalisation) have exactly this many parameters",
                              want, n)
        return "2 specifications: output shape on batches of 1, 2 and 3, resolutions " \
               "16 -> 8 -> 4, non-linear, parameter count"
    return _run("make_encoder", body)


def _spec_decoder(latent_dim: int, width: int, out_channels: int) -> nn.Module:
    w = width
    return nn.Sequential(
        nn.Linear(latent_dim, 2 * w * 16), nn.Unflatten(1, (2 * w, 4, 4)), nn.SiLU(),
        nn.ConvTranspose2d(2 * w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),
        nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.SiLU(),
        nn.ConvTranspose2d(w, out_channels, 4, stride=2, padding=1))


def check_make_decoder(fn) -> Result:
    """fn(latent_dim, width, out_channels) -> nn.Module mapping (B, latent_dim) to
    (B, out_channels, 32, 32): the mirror of make_encoder."""
    def body():
        for latent_dim, width, out_channels in ((8, 4, 6), (5, 3, 30)):
            spec = (f"make_decoder(latent_dim={latent_dim}, width={width}, "
                    f"out_channels={out_channels})")
            torch.manual_seed(0)
            dec = _call(fn, spec, latent_dim, width, out_channels)
            if not isinstance(dec, nn.Module):
                raise _Failed(spec, f"return an nn.Module (e.g. nn.Sequential), not "
                              f"{type(dec).__name__}")
            ups = [m for m in dec.modules() if isinstance(m, nn.ConvTranspose2d)]
            if not ups:
                raise _Failed(spec, "the specification up-samples with nn.ConvTranspose2d "
                              "(kernel 4, stride 2, padding 1): your module has none")
            sizes = []
            hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
                     for m in ups]
            for b in (2, 3, 1):
                case = f"{spec} on a batch of {b} codes"
                sizes.clear()
                try:
                    with torch.no_grad():
                        out = dec(torch.randn(b, latent_dim))
                except Exception as err:
                    hint = (f"it raised {type(err).__name__}: {err}. "
                            + ("It fails on a batch of {b} only: do not build the batch size "
                               "into the network (nn.Unflatten(1, (2 * width, 4, 4)) keeps "
                               "any batch)".format(b=b) if b != 2 else ""))
                    raise _Failed(case, hint.strip()) from None
                want = (b, out_channels, 32, 32)
                if out.dim() == 4 and out.shape[1] != out_channels:
                    raise _Failed(case, "the last transposed convolution outputs the "
                                  "likelihood's parameters: out_channels channels per pixel",
                                  want, tuple(out.shape))
                if sizes != [8, 16, 32]:
                    raise _Failed(case, "three transposed convolutions with kernel 4, stride "
                                  "2 and padding 1 double the resolution, (in - 1) * 2 - 2 + 4 "
                                  "= 2 in: 4 -> 8 -> 16 -> 32", [8, 16, 32], sizes)
                if tuple(out.shape) != want:
                    raise _Failed(case, "the output is one map of parameters per channel: "
                                  "(B, out_channels, 32, 32)", want, tuple(out.shape))
            for h in hooks:
                h.remove()
            seen = []
            hook = ups[-1].register_forward_hook(lambda m, i, o: seen.append(o))
            with torch.no_grad():
                out = dec(torch.randn(2, latent_dim))
            hook.remove()
            if not (seen and seen[-1].shape == out.shape and torch.equal(seen[-1], out)):
                raise _Failed(f"{spec}: its last layer", "put nothing after the last "
                              "transposed convolution: its outputs are the likelihood's "
                              "parameters (means, log-scales), any real numbers, and an "
                              "activation there squashes them")
            g = _gen(4)
            za, zb = (torch.randn(2, latent_dim, generator=g, dtype=torch.float64)
                      for _ in range(2))
            f = copy.deepcopy(dec).double().eval()
            with torch.no_grad():
                err = superposition_error(f, za, zb) / max(f(za).abs().max().item(), 1e-12)
            if err < 1e-9:
                raise _Failed(f"{spec}: the superposition test of this notebook", "your "
                              "decoder is affine: its activations do nothing. "
                              "nn.LeakyReLU(True) sets negative_slope = 1.0 (the identity); "
                              "use nn.LeakyReLU(0.01) or nn.SiLU()", "> 1e-9 (non-linear)",
                              f"{err:.2g}")
            n = count_parameters(dec)
            want = count_parameters(_spec_decoder(latent_dim, width, out_channels))
            if n != want:
                norm = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
                no_bias = sum(m.out_channels for m in ups if m.bias is None)
                own = [m for m in dec.modules()
                       if not isinstance(m, (nn.ConvTranspose2d, nn.Conv2d, nn.Linear, *norm))
                       and any(True for _ in m.parameters(recurse=False))]
                has_norm = any(isinstance(m, norm) for m in dec.modules())
                if no_bias and want - n == no_bias and not has_norm:
                    raise _Failed(f"{spec}: the parameter count", f"{no_bias} parameters short, "
                                  "exactly the biases of your transposed convolutions with "
                                  "bias=False: the specification's layers have biases "
                                  "(nn.ConvTranspose2d's default)", want, n)
                if own and not has_norm:
                    raise _Failed(f"{spec}: the parameter count", f"{n - want:+d} parameters: "
                                  f"your {type(own[0]).__name__} has parameters of its own; the "
                                  "specification asks for a parameter-free non-linearity "
                                  "(nn.SiLU(), nn.LeakyReLU(0.01), ...)", want, n)
                raise _Failed(f"{spec}: the parameter count", "the specified layers (one Linear "
                              "to 2 width x 4 x 4, then transposed convolutions with biases to "
                              "2 width, width and out_channels channels, no normalisation) "
                              "have exactly this many parameters", want, n)
        return ("2 specifications: output shape on batches of 1, 2 and 3, resolutions "
                "8 -> 16 -> 32, nothing after the last layer, non-linear, parameter count")
    return _run("make_decoder", body)
