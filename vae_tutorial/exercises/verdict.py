"""The verdict every exercise check returns and prints, and the helpers the checks share:
running a check, calling the learner's function, comparing its output and naming the mistake."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

NOT_ATTEMPTED = "not attempted yet"


@dataclass
class Result:
    """The verdict of one check; true when passed. `hint` names the mistake recognised."""

    name: str
    status: str  # "passed", "failed" or NOT_ATTEMPTED
    message: str  # the whole printed verdict
    hint: str = ""

    def __bool__(self) -> bool:
        return self.status == "passed"

    def _ipython_display_(self) -> None:
        """Show nothing in a notebook: the check has printed the verdict already."""


class _Failed(Exception):
    """Raised inside a check: the case that failed, expected, got and the hint."""

    def __init__(self, case: str, hint: str, expected=None, got=None):
        super().__init__(case)
        self.case, self.hint, self.expected, self.got = case, hint, expected, got


class _NotAttempted(Exception):
    """The learner's function raised NotImplementedError."""


def _fmt(v, digits: int = 6) -> str:
    """A short, readable rendering of a number, tensor or list (at most 8 values)."""
    if isinstance(v, torch.Tensor):
        v = v.detach()
        if v.is_floating_point():
            v = v.double()
        if v.numel() == 1:
            return f"{v.item():.{digits}g}" if v.is_floating_point() else str(v.item())
        flat = v.flatten().tolist()
        shown = ", ".join(f"{a:.{digits - 1}g}" if isinstance(a, float) else str(a)
                          for a in flat[:8])
        return f"[{shown}{', ...' if len(flat) > 8 else ''}] (shape {tuple(v.shape)})"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return f"[{', '.join(map(str, v[:8]))}, ...] ({len(v)} values)"
    return str(v)


def _run(name: str, body: Callable[[], str]) -> Result:
    """Run a check's body with torch's random state saved and restored; print the verdict."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            detail = body()
            result = Result(name, "passed", f"check_{name}: passed ({detail})")
        except _NotAttempted:
            result = Result(name, NOT_ATTEMPTED, f"check_{name}: {NOT_ATTEMPTED} (your function "
                            "still raises NotImplementedError: replace it with your code)")
        except _Failed as f:
            lines = [f"check_{name}: FAILED on {f.case}"]
            if f.expected is not None or f.got is not None:
                digits = next((d for d in (6, 10, 17) if _fmt(f.expected, d) != _fmt(f.got, d)),
                              17)  # enough digits to show where they differ
                lines += [f"  expected: {_fmt(f.expected, digits)}",
                          f"  got:      {_fmt(f.got, digits)}"]
            lines.append(f"  hint: {f.hint}")
            result = Result(name, "failed", "\n".join(lines), f.hint)
    print(result.message)
    return result


def _call(fn, case: str, *args, **kwargs):
    """fn(*args) on copies of tensor arguments; NotImplementedError and errors reported."""
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise _NotAttempted from None
    except Exception as err:  # the learner's bug: report it as a failure, not a crash
        raise _Failed(case, f"your function raised {type(err).__name__}: {err}") from None


def _as_tensor(v) -> torch.Tensor | None:
    try:
        t = torch.as_tensor(v.detach() if isinstance(v, torch.Tensor) else v)
        return t.double() if t.dtype != torch.bool else t
    except Exception:
        return None


def _close(got, expected: torch.Tensor, rtol: float, atol: float) -> bool:
    """Same shape and values within tolerance; matching infinities count as equal."""
    g = _as_tensor(got)
    e = expected.double()
    if g is None or g.shape != e.shape:
        return False
    return bool(torch.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True)) or bool(
        torch.isinf(e).any() and torch.equal(torch.isinf(g), torch.isinf(e))
        and torch.allclose(g[~torch.isinf(e)], e[~torch.isinf(e)], rtol=rtol, atol=atol))


def _compare(got, expected: torch.Tensor, case: str, mistakes=(), args=(), *,
             rtol: float = 1e-5, atol: float = 1e-8, shape_hint: str = "",
             nonfinite_hint: str = "", nan_hint: str = "", fallback: str = "") -> None:
    """Raise _Failed unless got matches expected; the hint comes from the first mistake
    (a function of the same args) whose output got matches, else the shape, NaN, non-finite
    or fallback hint."""
    if _close(got, expected, rtol, atol):
        return
    g = _as_tensor(got)
    for wrong, hint in mistakes:
        try:
            w = torch.as_tensor(wrong(*args)).double()
            if torch.isfinite(w).any() and _close(got, w, rtol, atol):
                raise _Failed(case, hint, expected, got)
        except _Failed:
            raise
        except Exception:  # a mistake that cannot be computed on these inputs
            continue
    if g is None:
        hint = f"return a tensor (or a number), not {type(got).__name__}"
    elif g.shape != expected.shape:
        hint = (f"expected shape {tuple(expected.shape)}, got {tuple(g.shape)}. "
                + shape_hint).strip()
    elif nan_hint and torch.isfinite(expected).all() and torch.isnan(g).any():
        hint = nan_hint
    elif nonfinite_hint and torch.isfinite(expected).all() and not torch.isfinite(g).all():
        hint = nonfinite_hint
    elif rtol < 1e-4 and _close(got, expected, 1e-4, max(atol, 1e-6)):
        hint = (f"right to about 4 digits but not to the check's relative {rtol:g}: an error "
                "this small is usually float32 rounding. A constant such as torch.tensor(2.0) or "
                "torch.log(torch.tensor(k)) is float32: use math.log(...) or build it with "
                "dtype=torch.float64 (the inputs' dtype)")
    else:
        hint = fallback or "compare your formula with the statement, term by term"
    raise _Failed(case, hint, expected, got)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
