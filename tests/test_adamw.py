"""AdamW fused or a loop: the probe's verdict, its cache, the overrides, the trainer's record.

Timings are injected (no speed is asserted); one test runs the real probe, tiny, and checks only
its shape. The switch is safe because both updates are the same AdamW: checked against
torch's loop, the reference."""

import json

import pytest
import torch

from vae_tutorial import adamw, runtime

CPU = torch.device("cpu")


def params(n=3):
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, 5)) for _ in range(n)]


@pytest.fixture
def auto(monkeypatch, tmp_path):
    """The policy as a user gets it (no override, not fast mode), a fresh cache file, and a
    probe that returns what the test sets (and counts its calls)."""
    monkeypatch.setenv(runtime.ADAMW_ENV, "auto")
    monkeypatch.delenv(runtime.FAST_ENV, raising=False)
    monkeypatch.setenv(runtime.PRECISION_CACHE_ENV, str(tmp_path / "cache.json"))
    monkeypatch.setattr(runtime, "cpu_name", lambda: "Test CPU 9000")
    calls = []

    def fake_probe(ps, *args, **kwargs):
        calls.append(1)
        j = auto.jitter
        return {"fused_ms": auto.fused, "loop_ms": auto.loop, "seconds": 0.1,
                "fused_repeats": [auto.fused * (1 + d) for d in (-j, 0, j)],
                "loop_repeats": [auto.loop * (1 + d) for d in (-j, 0, j)],
                "params": adamw.signature(list(ps))}

    auto.fused, auto.loop, auto.jitter, auto.calls = 2.0, 7.0, 0.01, calls
    monkeypatch.setattr(adamw, "probe", fake_probe)
    return auto


@pytest.mark.parametrize("fused_ms,loop_ms,expected", [
    (1.85, 6.8, True),  # this Intel Xeon, ConvVAE: the fused kernel several times faster
    (9.0, 6.0, False),  # a CPU where the loop wins
    (6.1, 6.0, True),  # within the margin: a tie keeps the fused default
])
def test_the_faster_update_wins_by_the_margin(auto, fused_ms, loop_ms, expected):
    auto.fused, auto.loop = fused_ms, loop_ms
    d = adamw.decide(params(), CPU)
    assert d.fused is expected and d.source == "probe"
    assert "ms per update" in d.reason


def test_overlapping_repeats_keep_the_fused_update():
    figures = {"fused_ms": 9.0, "loop_ms": 6.0, "fused_repeats": [6.5, 9.0, 11.0],
               "loop_repeats": [5.0, 6.0, 7.0]}
    assert adamw.verdict(figures) == (True, "could not tell them apart: fused kept")


def test_the_cache_avoids_probing_again_and_is_keyed_by_the_model(auto, tmp_path):
    first = adamw.decide(params(), CPU)
    again = adamw.decide(params(), CPU)
    assert len(auto.calls) == 1 and again.source == "cache" and again.fused == first.fused
    adamw.decide(params(5), CPU)  # another model shape: its own probe
    assert len(auto.calls) == 2
    stored = json.loads((tmp_path / "cache.json").read_text())
    assert sum(k.startswith("adamw | Test CPU 9000") for k in stored) == 2
    adamw.decide(params(), CPU, refresh=True)  # bench measures again
    assert len(auto.calls) == 3


def test_a_probe_on_a_loaded_machine_is_not_cached(auto, tmp_path):
    auto.jitter = 0.4  # repeats spread by 80%: another process on the cores
    assert adamw.decide(params(), CPU).source == "probe, not cached"
    assert not (tmp_path / "cache.json").exists()
    adamw.decide(params(), CPU)
    assert len(auto.calls) == 2


def test_cuda_fast_mode_and_overrides_need_no_probe(auto, monkeypatch):
    assert adamw.decide(params(), torch.device("cuda")).fused
    monkeypatch.setenv(runtime.ADAMW_ENV, "loop")
    assert adamw.decide(params(), CPU).fused is False
    monkeypatch.setenv(runtime.ADAMW_ENV, "fused")
    assert adamw.decide(params(), CPU).source == "override"
    monkeypatch.setenv(runtime.ADAMW_ENV, "auto")
    monkeypatch.setenv(runtime.FAST_ENV, "1")
    assert adamw.decide(params(), CPU).source == "fast mode"
    assert auto.calls == []
    monkeypatch.setenv(runtime.ADAMW_ENV, "sometimes")
    with pytest.raises(ValueError, match="VAE_TUTORIAL_ADAMW='sometimes': expected one of auto"):
        adamw.decide(params(), CPU)


def test_the_real_probe_times_both_in_turns_and_leaves_params_and_random_state_alone():
    ps = params()
    before = [p.detach().clone() for p in ps]
    state = torch.get_rng_state()
    figures = adamw.probe(ps, steps=2, repeats=3)
    assert len(figures["fused_repeats"]) == len(figures["loop_repeats"]) == 3
    assert figures["fused_ms"] > 0 and figures["loop_ms"] > 0
    assert figures["params"] == "60 parameters in 3 tensors"
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(before, ps))


def test_fused_and_loop_make_the_same_update():
    """The reference: torch's per-tensor loop. The fused kernel agrees to float rounding."""
    runs = {}
    for fused in (True, False):
        ps = params()
        opt = torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01, fused=fused or None,
                                foreach=False)
        for step in range(5):
            torch.manual_seed(step)
            for p in ps:
                p.grad = torch.randn_like(p)
            opt.step()
        runs[fused] = [p.detach() for p in ps]
    for a, b in zip(runs[True], runs[False]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_the_trainer_follows_the_probe_records_it_and_a_resume_keeps_it(auto, subset_root,
                                                                          tmp_path):
    from vae_tutorial.checkpoint import load_checkpoint
    from vae_tutorial.config import preset
    from vae_tutorial.train import train

    auto.fused, auto.loop = 9.0, 6.0  # the loop wins on this (fake) machine
    cfg = preset("fast", data=str(subset_root), allow_partial=True, train_limit=64,
                 test_limit=32, batch_size=32, epochs=1, out_dir=str(tmp_path / "run"),
                 progress=False, device="cpu", width=8, latent_dim=8)
    last = train(cfg)[-1]
    assert last["adamw"]["fused"] is False and last["adamw"]["source"] == "probe"
    assert last["adamw"]["figures"]["loop_ms"] == 6.0
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert not ckpt["optimizer"]["param_groups"][0].get("fused")
    auto.fused, auto.loop = 2.0, 7.0  # the machine now says fused: the resumed run keeps its own
    history = train(cfg.replace(epochs=2), resume=True)
    assert history[-1]["adamw"]["fused"] is False
    assert len(auto.calls) == 1  # no probe on resume
