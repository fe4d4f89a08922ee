"""The precision policy: eligibility, the probe's decision and its cache, overrides, CUDA's rule.

Timings are injected (no speed is asserted); one test runs the real probe, tiny, and checks only
that its figures are positive and finite."""

import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vae_tutorial import precision, runtime

CPU = torch.device("cpu")


@pytest.fixture
def auto(monkeypatch, tmp_path):
    """The policy as a user gets it (no override, not fast mode), a native-bf16 CPU, a fresh
    cache file, and a probe that returns what the test sets (and counts its calls)."""
    monkeypatch.setenv(runtime.PRECISION_ENV, "auto")
    monkeypatch.delenv(runtime.FAST_ENV, raising=False)
    monkeypatch.setenv(runtime.PRECISION_CACHE_ENV, str(tmp_path / "cache.json"))
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: True)
    monkeypatch.setattr(runtime, "cpu_name", lambda: "Test CPU 9000")
    precision.clear_memo()
    calls = []

    def fake_probe(*args, **kwargs):
        calls.append(1)
        jitter = auto.jitter  # each precision's repeats: median * (1 - jitter, 1, 1 + jitter)
        return {"fp32_gflops": auto.fp32, "bf16_gflops": auto.bf16, "seconds": 0.1,
                "fp32_repeats": [auto.fp32 * (1 + j) for j in (-jitter, 0, jitter)],
                "bf16_repeats": [auto.bf16 * (1 + j) for j in (-jitter, 0, jitter)],
                "probe": precision.probe_name()}

    auto.fp32, auto.bf16, auto.jitter, auto.calls = 300.0, 200.0, 0.01, calls
    monkeypatch.setattr(precision, "probe", fake_probe)
    yield auto
    precision.clear_memo()


@pytest.mark.parametrize("fp32,bf16,expected", [
    (289.0, 165.0, "fp32"),  # the Intel Xeon of issue 19: bf16 slower
    (200.0, 280.0, "bf16"),  # the AMD EPYC: bf16 faster
    (300.0, 305.0, "fp32"),  # within the margin: a tie goes to fp32
])
def test_the_faster_eligible_precision_wins(auto, fp32, bf16, expected):
    auto.fp32, auto.bf16 = fp32, bf16
    d = precision.decide(CPU)
    assert (d.precision, d.source, d.eligible) == (expected, "probe", ("fp32", "bf16"))
    assert d.dtype == (torch.bfloat16 if expected == "bf16" else None)
    assert precision.autocast_dtype(CPU) == d.dtype
    assert d.figures["fp32_gflops"] == fp32 and f"{bf16:.0f}" in d.reason


def test_overlapping_ranges_keep_fp32_even_when_the_median_says_bf16(auto):
    """Medians 10% apart, but repeats spread by +-10%: the probe cannot tell them apart."""
    auto.fp32, auto.bf16, auto.jitter = 200.0, 220.0, 0.10
    d = precision.decide(CPU)
    assert d.precision == "fp32" and "could not tell" in d.reason
    assert "220 (198-242)" in d.reason and "200 (180-220)" in d.reason
    assert precision.pick({"fp32_gflops": 200.0, "bf16_gflops": 220.0,
                           "fp32_repeats": [199, 200, 201], "bf16_repeats": [219, 220, 221]},
                          ("fp32", "bf16")) == "bf16"  # the same medians, separated: bf16


def test_a_probe_on_a_loaded_machine_is_not_cached(auto, tmp_path):
    """Repeats spread by 60% (another process took the cores): decided, measured again next run."""
    auto.fp32, auto.bf16, auto.jitter = 100.0, 300.0, 0.30
    first = precision.decide(CPU)
    assert first.source == "probe, not cached" and "too widely to cache" in first.reason
    assert first.precision == "bf16"  # separated all the same
    assert not (tmp_path / "cache.json").exists()
    precision.clear_memo()
    auto.jitter = 0.01  # quiet again: measured, and now cached
    assert precision.decide(CPU).source == "probe" and len(auto.calls) == 2
    assert precision.cache_key() in json.loads((tmp_path / "cache.json").read_text())
    assert precision.spread([90.0, 100.0, 130.0]) == pytest.approx(0.4)
    stored = json.loads((tmp_path / "cache.json").read_text())  # an unsteady entry, as older
    stored[precision.cache_key()]["figures"]["fp32_repeats"] = [50.0, 100.0, 150.0]  # code wrote
    (tmp_path / "cache.json").write_text(json.dumps(stored))
    precision.clear_memo()
    assert precision.decide(CPU).source == "probe" and len(auto.calls) == 3  # measured again


def test_an_ineligible_precision_is_never_chosen(auto, monkeypatch):
    """Without native bf16 the probe does not even run, however fast bf16 would be."""
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: False)
    auto.bf16 = 1e6
    d = precision.decide(CPU)
    assert d.precision == "fp32" and d.source == "not eligible" and d.eligible == ("fp32",)
    assert not auto.calls
    assert precision.pick({"fp32_gflops": 1.0, "bf16_gflops": 1e6}, ("fp32",)) == "fp32"
    assert precision.pick({"fp32_gflops": 1.0, "bf16_gflops": math.nan}, ("fp32", "bf16")) \
        == "fp32"
    monkeypatch.setenv(runtime.PRECISION_ENV, "bf16")  # an override cannot make it eligible
    assert precision.decide(CPU).precision == "fp32"


def test_the_cache_avoids_probing_again(auto, tmp_path):
    auto.fp32, auto.bf16 = 100.0, 200.0
    first = precision.decide(CPU)
    assert first.source == "probe" and len(auto.calls) == 1
    precision.clear_memo()  # a new process: the file answers
    auto.fp32 = 1e6  # would flip the decision, were it measured again
    again = precision.decide(CPU)
    assert again.source == "cache" and again.precision == "bf16" and len(auto.calls) == 1
    assert "cached probe" in again.reason
    stored = json.loads((tmp_path / "cache.json").read_text())
    assert list(stored) == [precision.cache_key()]
    assert stored[precision.cache_key()]["figures"]["bf16_gflops"] == 200.0
    fresh = precision.decide(CPU, refresh=True)  # bench measures again, and updates the cache
    assert fresh.source == "probe" and fresh.precision == "fp32" and len(auto.calls) == 2


def test_the_cache_is_keyed_by_cpu_model_and_torch_version(auto, monkeypatch):
    precision.decide(CPU)
    key = precision.cache_key()
    assert "Test CPU 9000" in key and torch.__version__ in key
    monkeypatch.setattr(runtime, "cpu_name", lambda: "Other CPU 1")
    precision.clear_memo()
    assert precision.decide(CPU).source == "probe" and len(auto.calls) == 2
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    precision.clear_memo()
    assert precision.decide(CPU).source == "probe" and len(auto.calls) == 3
    monkeypatch.setattr(runtime, "cpu_name", lambda: "Test CPU 9000")
    monkeypatch.setattr(torch, "__version__", key.split("torch ")[1].split(" |")[0])
    precision.clear_memo()
    assert precision.decide(CPU).source == "cache" and len(auto.calls) == 3


def test_a_broken_cache_file_is_measured_again(auto, tmp_path):
    (tmp_path / "cache.json").write_text("{not json")
    assert precision.decide(CPU).source == "probe"
    assert precision.cache_key() in json.loads((tmp_path / "cache.json").read_text())


def test_overrides_amp_false_and_fast_mode_need_no_probe(auto, monkeypatch):
    auto.fp32, auto.bf16 = 100.0, 1000.0
    d = precision.decide(CPU, amp=False)
    assert d.precision == "fp32" and d.source == "amp=false"
    monkeypatch.setenv(runtime.PRECISION_ENV, "fp32")
    assert precision.decide(CPU).precision == "fp32"
    monkeypatch.setenv(runtime.PRECISION_ENV, "bf16")
    auto.bf16 = 1.0
    d = precision.decide(CPU)
    assert d.precision == "bf16" and d.source == "override"
    assert runtime.PRECISION_ENV in d.reason
    monkeypatch.setenv(runtime.PRECISION_ENV, "auto")
    monkeypatch.setenv(runtime.FAST_ENV, "1")  # fast mode: bf16 where eligible, as recorded
    assert precision.decide(CPU).source == "fast mode"
    assert not auto.calls
    monkeypatch.setenv(runtime.PRECISION_ENV, "fp16")
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        precision.decide(CPU)


def test_cuda_keeps_its_rule_without_a_probe(auto, monkeypatch):
    cuda = torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr(runtime, "cuda_bf16_native", lambda native=native: native)
        d = precision.decide(cuda)
        assert d.precision == ("bf16" if native else "fp32")
        assert precision.autocast_dtype(cuda) == (torch.bfloat16 if native else None)
    assert precision.autocast_dtype(cuda, amp=False) is None
    assert not auto.calls
    assert precision.decide(torch.device("mps")).precision == "fp32"


def test_the_cache_file_is_under_the_users_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(runtime.PRECISION_CACHE_ENV)
    monkeypatch.setenv(runtime.XDG_CACHE_ENV, str(tmp_path / "xdg"))
    assert runtime.precision_cache() == tmp_path / "xdg" / "vae-tutorial" / "precision.json"
    monkeypatch.setenv(runtime.PRECISION_CACHE_ENV, str(tmp_path / "p.json"))
    assert runtime.precision_cache() == tmp_path / "p.json"


def test_the_probe_returns_positive_finite_figures_and_keeps_the_random_state():
    before = torch.random.get_rng_state()
    spec = dict(channels=8, size=4, batch=2, steps=1, repeats=2)
    figures = precision.probe(spec=spec)
    assert torch.equal(torch.random.get_rng_state(), before)
    for p in ("fp32", "bf16"):
        assert figures[f"{p}_gflops"] > 0 and math.isfinite(figures[f"{p}_gflops"])
        assert len(figures[f"{p}_repeats"]) == 2
    assert figures["seconds"] > 0 and "8->8 @4x4, batch 2" in figures["probe"]


@pytest.mark.parametrize("cin,cout,size,batch", [(8, 8, 4, 2), (3, 16, 8, 1)])
def test_the_flop_counter_agrees_with_the_closed_form_of_a_convolution(cin, cout, size, batch):
    """2 Cin Cout k^2 H W per image forward; backward twice that (input and weight grads)."""
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    x = torch.randn(batch, cin, size, size, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        conv(x).sum().backward()
    forward = 2 * cin * cout * 9 * size * size * batch
    assert counter.get_total_flops() == 3 * forward
    if cin == cout:
        assert precision.conv_flop(cin, size, batch) == 3 * forward


def test_the_run_history_records_the_decision_and_its_figures(auto, subset_root, tmp_path):
    """The trainer follows the probe (here: bf16 slower, so fp32) and says why in its history."""
    from vae_tutorial.config import preset
    from vae_tutorial.train import train

    auto.fp32, auto.bf16 = 300.0, 165.0
    cfg = preset("fast", data=str(subset_root), allow_partial=True, train_limit=64,
                 test_limit=32, batch_size=32, epochs=1, out_dir=str(tmp_path / "run"),
                 progress=False, device="cpu", width=8, latent_dim=8)
    last = train(cfg)[-1]
    assert last["precision"] == last["precision_probe"]["precision"] == "fp32"
    assert last["precision_probe"]["source"] == "probe"
    assert last["precision_probe"]["figures"]["bf16_gflops"] == 165.0
    stored = json.loads((tmp_path / "run" / "history.json").read_text())
    assert stored[-1]["precision_probe"] == last["precision_probe"]
    assert len(auto.calls) == 1  # one probe per process, not one per epoch
