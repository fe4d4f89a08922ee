"""bench's roofline: FLOP per image against closed forms, the rows it derives, the table."""

import json

import pytest
import torch

from vae_tutorial.bench import flop_per_image, roofline
from vae_tutorial.config import preset
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
    del bench["precision"], bench["roofline"]  # a bench from before the probe: no such lines
    path.write_text(json.dumps(bench))
    assert "Roofline" not in bench_table(path) and "picked" not in bench_table(path)
