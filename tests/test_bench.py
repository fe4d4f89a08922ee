"""bench's roofline: FLOP per image against closed forms, the rows it derives, the table."""

import json

import pytest
import torch

from vae_tutorial.bench import flop_per_image, profile_rows, roofline
from vae_tutorial.config import preset
from vae_tutorial.measure import OTHER_KIND, op_kind, profile_step, training_step
from vae_tutorial.model import build_model
from vae_tutorial.report import bench_table


def test_flop_per_image_of_the_seed_network_is_its_closed_form():
    """2 m n k per matrix product (a convolution's k = Cin * 9 per output value), forward, and
    twice that backward (input and weight gradients), except the first layer (no input grad)."""
    model = build_model(kind="seed", likelihood="bernoulli")
    hw, d = 32 * 32, model.latent_dim
    conv1 = 2 * 3 * 16 * 9 * hw  # 3 -> 16, its input (the image) needs no gradient
    rest = (2 * 16 * 32 * 9 * hw  # 16 -> 32
            + 2 * 32 * hw * 2 * d  # linear heads, 32768 -> 2d
            + 2 * d * 32 * hw  # decoder linear, d -> 32768
            + 2 * 32 * 16 * 9 * hw + 2 * 16 * 3 * 9 * hw)  # two transposed convolutions
    assert flop_per_image(model) == 2 * conv1 + 3 * rest
    convs = 2 * 16 * 32 * 9 * hw + 2 * 32 * 16 * 9 * hw + 2 * 16 * 3 * 9 * hw  # all but conv1
    assert flop_per_image(model, convolutions=True) == 2 * conv1 + 3 * convs


@pytest.mark.parametrize("kind,mflop", [("conv", 430), ("hvae", 880), ("seed", 160)])
def test_flop_per_image_of_the_cpu_presets(kind, mflop):
    """Issue 19's figures for one training step: ~430, ~880 and ~160 MFLOP per image."""
    model = build_model(preset("cpu", kind=kind).model)
    before = torch.random.get_rng_state()
    flop = flop_per_image(model)
    assert flop / 1e6 == pytest.approx(mflop, rel=0.02)
    assert torch.equal(torch.random.get_rng_state(), before)


ROWS = [
    {"name": "seed pipeline", "unit": "train img/s", "median": 100.0, "precision": "fp32",
     "variant": "seed pipeline"},
    {"name": "a, bf16", "unit": "train img/s", "median": 500.0, "precision": "bf16",
     "picked": True, "model": "conv", "label": "ConvVAE"},
    {"name": "a, fp32", "unit": "train img/s", "median": 400.0, "precision": "fp32",
     "picked": False, "model": "conv", "label": "ConvVAE"},
    {"name": "a, bf16, channels_last", "unit": "train img/s", "median": 450.0,
     "precision": "bf16", "variant": "channels_last", "model": "conv", "label": "ConvVAE"},
]


def test_roofline_rows_are_flop_times_rate_against_the_reference():
    rows = roofline(ROWS, {"conv": 4e8}, {"fp32": 320.0, "bf16": 400.0})
    assert [(r["precision"], r["picked"]) for r in rows] == [("bf16", True), ("fp32", False)]
    assert rows[0]["gflops"] == pytest.approx(4e8 * 500 / 1e9)  # 200 GFLOP/s
    assert rows[0]["fraction_of_reference"] == pytest.approx(0.5)
    assert rows[1]["fraction_of_reference"] == pytest.approx(160 / 320)
    assert rows[0]["mflop_per_image"] == pytest.approx(400)


def test_bench_table_names_the_picked_precision_and_the_roofline(tmp_path):
    bench = {"command": "python -m vae_tutorial bench", "hardware": "CPU Test", "device": "cpu",
             "threads": 2, "torch": "2.x", "data": "d", "batch_size": 128, "repeats": 5,
             "steps": 10, "rows": [dict(r, speedup_vs_seed=r["median"] / 100) for r in ROWS],
             "precision": {"precision": "bf16", "reason": "probe (conv): bf16 faster",
                           "source": "probe", "eligible": ["fp32", "bf16"], "figures": {}},
             "roofline": {"reference": {"probe": "conv3x3 128->128", "fp32_gflops": 320.0,
                                        "bf16_gflops": 400.0},
                          "rows": roofline(ROWS, {"conv": 4e8}, {"fp32": 320.0, "bf16": 400.0})}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    table = bench_table(path)
    assert "**bf16** (probe (conv): bf16 faster; eligible here: fp32, bf16)" in table
    assert "bf16 against fp32: ConvVAE 1.25x." in table
    assert "(fp32 320, bf16 400 GFLOP/s)" in table
    assert "| ConvVAE | bf16 (picked) | 400 | 500 | 200 | 50% |" in table
    assert "| ConvVAE | fp32 | 400 | 400 | 160 | 50% |" in table
    assert "Where each step's time goes" not in table  # not profiled
    bench["profile"] = {"steps": 3, "rows": profile_rows(
        ROWS, {"conv": {"kinds": {"convolutions": 0.5, OTHER_KIND: 0.5}}}, {"conv": 1e8},
        {"fp32": 320.0, "bf16": 400.0})}
    path.write_text(json.dumps(bench))
    table = bench_table(path)
    assert "torch.profiler, 3 steps per model" in table
    assert f"| model | convolutions | {OTHER_KIND} | convolutions alone" in table
    assert "| ConvVAE | 50% | 50% | 100 | 100 | 25% |" in table
    del bench["precision"], bench["roofline"], bench["profile"]  # from before the probe
    path.write_text(json.dumps(bench))
    assert "Roofline" not in bench_table(path) and "picked" not in bench_table(path)


@pytest.mark.parametrize("name,kind", [
    ("aten::mkldnn_convolution", "convolutions"), ("aten::convolution_backward", "convolutions"),
    ("autograd::engine::evaluate_function: ConvolutionBackward0", "convolutions"),
    ("aten::slow_conv_transpose2d", "convolutions"), ("aten::addmm", "matrix products"),
    ("aten::mm", "matrix products"), ("aten::native_batch_norm_backward", "normalisation"),
    ("aten::_fused_adamw_", "optimizer and clipping"), ("aten::_foreach_norm",
                                                       "optimizer and clipping"),
    ("Optimizer.step#AdamW.step", "optimizer and clipping"), ("aten::_to_copy",
                                                             "copies and casts"),
    ("aten::copy_", "copies and casts"), ("aten::silu", OTHER_KIND),
    ("aten::log_softmax", OTHER_KIND), ("aten::sum", OTHER_KIND)])
def test_op_kind_sorts_the_profilers_names(name, kind):
    assert op_kind(name) == kind


def _batches(n=8):
    gen = torch.Generator().manual_seed(0)
    while True:
        yield torch.randint(0, 256, (n, 3, 32, 32), generator=gen).float().div(255), None


def test_profile_step_shares_sum_to_one_and_find_the_convolutions():
    """A ConvVAE step spends time in convolutions; the seed network without its convolutions
    (linear layers only) spends none there, and some in matrix products."""
    model = build_model(preset("fast", kind="conv").model)
    prof = profile_step(training_step(model, _batches(), torch.device("cpu")), 2,
                        torch.device("cpu"))
    assert sum(prof["kinds"].values()) == pytest.approx(1.0) and prof["seconds_per_call"] > 0
    assert prof["kinds"]["convolutions"] > 0.05 and prof["kinds"]["normalisation"] > 0

    seed = build_model(kind="seed", likelihood="bernoulli")
    seed.encoder = torch.nn.Sequential(torch.nn.Flatten(),
                                       torch.nn.Linear(3 * 32 * 32, 2 * seed.latent_dim))
    seed.decoder = torch.nn.Sequential(torch.nn.Linear(seed.latent_dim, 3 * 32 * 32),
                                       torch.nn.Unflatten(1, (3, 32, 32)))
    prof = profile_step(training_step(seed, _batches(), torch.device("cpu")), 2,
                        torch.device("cpu"))
    assert prof["kinds"]["convolutions"] == 0 and prof["kinds"]["matrix products"] > 0


def test_profile_rows_give_the_convolutions_own_rate():
    """conv FLOP per image x images/s / their share of the step: 1e8 x 500 / 0.5 = 100 GFLOP/s,
    a quarter of the 400 GFLOP/s reference; only the picked precision's plain row."""
    kinds = {"convolutions": 0.5, OTHER_KIND: 0.5}
    rows = profile_rows(ROWS, {"conv": {"kinds": kinds, "seconds_per_call": 1.0}},
                        {"conv": 1e8}, {"fp32": 320.0, "bf16": 400.0})
    assert len(rows) == 1 and rows[0]["precision"] == "bf16"
    assert rows[0]["conv_gflops"] == pytest.approx(100.0)
    assert rows[0]["conv_fraction_of_reference"] == pytest.approx(0.25)


def test_step_table_measures_once_per_machine_in_the_notebooks(tmp_path, monkeypatch):
    """notebook.step_table keeps the timings (notebook 5 measures, appendix A2 shows the same);
    bench.step_table takes kept timings without measuring again."""
    from vae_tutorial import bench, measure, notebook

    monkeypatch.setenv("VAE_TUTORIAL_RUNS", str(tmp_path))
    calls = []

    def interleaved(fns, calls_per_rep, reps, device):
        calls.append(list(fns))
        return {name: [float(i + 1)] * reps for i, name in enumerate(fns)}

    monkeypatch.setattr(measure, "interleaved", interleaved)
    images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
    labels = torch.zeros(128, dtype=torch.long)
    cfg = preset("fast").model
    first = notebook.step_table(cfg, images, labels, torch.device("cpu"))
    assert len(calls) == 2 and bench.DEFAULT in first.rates  # the pipelines, then the steps
    again = notebook.step_table(cfg, images, labels, torch.device("cpu"))
    assert len(calls) == 2 and again.rates == first.rates  # kept: nothing measured again
    assert callable(again.stepper) and again.other_adamw == first.other_adamw
    notebook.step_table(cfg, images[:64], labels[:64], torch.device("cpu"))  # other images
    assert len(calls) == 4
