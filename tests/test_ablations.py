"""Notebook 8's ablation table (report.ablation_rows / ablation_table) on made-up runs: the best
validation epoch with its standard error, runs without a validation split, latent counts."""

import json

from vae_tutorial.report import ABLATIONS, HVAE_CHOSEN, ablation_rows, ablation_table


def _run(root, folder, history, **ev):
    run = root / folder
    run.mkdir()
    (run / "history.json").write_text(json.dumps(history))
    (run / "eval.json").write_text(json.dumps({"bits_per_dim": 4.5, "iwae_bits_per_dim": 4.45,
                                               "num_samples": 100, "hardware": "CPU x, 1 core",
                                               **ev}))


def test_rows_take_the_best_validation_epoch_and_its_standard_error(tmp_path):
    history = [{"epoch": e, "step": 10 * e, "seconds": 30.0, "precision": "bf16",
                "valid_bpd": v, "valid_bpd_se": se}
               for e, (v, se) in enumerate([(5.0, 0.03), (4.8, 0.021), (4.9, 0.02)], 1)]
    _run(tmp_path, "ablation-hvae-onegroup", history, bits_per_dim_se=0.031,
         iwae_bits_per_dim_se=0.029, valid_size=500)
    old = [{"epoch": 1, "step": 5, "seconds": 60.0, "test_bpd": 4.6, "partial": True}]
    _run(tmp_path, "hvae-cpu-valid", old)  # made up without a split: no validation, no s.e.
    (tmp_path / "ablation-hvae").mkdir()  # not evaluated yet: left out
    rows = ablation_rows(tmp_path)
    assert [r["folder"] for r in rows] == ["ablation-hvae-onegroup", "hvae-cpu-valid"]
    one, two = rows
    assert (one["valid_bpd"], one["valid_se"], one["valid_epoch"]) == (4.8, 0.021, 2)
    assert one["latents"] == 26 * 16 * 16 == 6656 and two["latents"] == 6656
    assert one["parameters"] < two["parameters"]  # one group: fewer cells
    assert one["parameters"] < one["parameters_defined"]  # and encoder layers it never uses
    assert two["parameters"] == two["parameters_defined"]
    assert "0.26 M (0.58 M defined)" in ablation_table(tmp_path).splitlines()[2]
    assert (one["minutes"], one["steps"], one["valid_size"]) == (1.5, 30, 500)
    assert two["valid_bpd"] is None and two["partial"] and two["elbo_se"] is None
    lines = ablation_table(tmp_path).splitlines()
    assert len(lines) == 4 and len(lines[1].split("|")) == len(lines[2].split("|"))
    assert "4.800 ± 0.021 (2)" in lines[2] and "4.450 ± 0.029 (k=100)" in lines[2]
    assert "no validation split" in lines[3] and "4.500 (s.e. not recorded)" in lines[3]
    assert "1 (last partial) (5)" in lines[3]


def test_every_ablation_names_a_distinct_run():
    folders = [a[0] for a in ABLATIONS]
    assert len(set(folders)) == len(folders)
    assert {a[1] for a in ABLATIONS} == {"conv", "hvae"}


def test_readme_statements_about_the_ablations():
    """README's sentences under the ablation table, against results/ (notebook 8 asserts the
    same): the hierarchy's step, everything else's, and compute's, in test IWAE bits/dim."""
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    rows = {r["folder"]: r for r in ablation_rows(repo / "results")}
    text = " ".join((repo / "README.md").read_text().split())

    def gap(a, b):
        se_a, se_b = rows[a]["iwae_se"], rows[b]["iwae_se"]
        se_a, se_b = se_a or se_b, se_b or se_a  # a run without a recorded s.e. borrows the other's
        return rows[b]["iwae"] - rows[a]["iwae"], 2 * (se_a**2 + se_b**2) ** 0.5

    hierarchy, noise = gap("ablation-hvae-onegroup", "ablation-hvae")
    assert "five groups beat one group with as many latent variables by about 0.2" in text
    assert -0.25 < hierarchy < -0.15 and -hierarchy > 3.5 * noise and 0.04 < noise < 0.06
    assert "about seven times the parameters" in text
    ratio = rows["ablation-hvae"]["parameters"] / rows["ablation-hvae-onegroup"]["parameters"]
    assert 6.5 < ratio < 8
    assert 0.45 < rows["ablation-hvae"]["steps"] / rows["ablation-hvae-onegroup"]["steps"] < 0.6
    data, data_noise = gap("conv-cpu-epyc", "ablation-conv-exact")
    assert "the data and schedule change nothing measurable (under 0.01" in text
    assert abs(data) < 0.01 and abs(data) < data_noise
    shape, shape_noise = gap("ablation-conv-exact", "ablation-hvae-onegroup")
    assert "is worth about 0.3, more than five times the noise" in text
    assert -0.35 < shape < -0.25 and 5 < -shape / shape_noise < 6.5
    compute, compute_noise = gap("ablation-hvae", "hvae-cpu-valid")
    assert "1.8 times the steps" in text and "about 0.2 lower still" in text
    assert -0.25 < compute < -0.15 and -compute > 3.5 * compute_noise
    assert 1.75 < rows["hvae-cpu-valid"]["steps"] / rows["ablation-hvae"]["steps"] < 1.85
    assert "compute is about as large a part of it" in text
    recipe, recipe_noise = gap("hvae-cpu-valid", HVAE_CHOSEN)
    updates = rows[HVAE_CHOSEN]["steps"] / rows["hvae-cpu-valid"]["steps"]
    assert "with 2.7 times the updates of that run" in text and round(updates, 1) == 2.7
    assert "ends about 0.3 lower again, five times the noise" in text
    assert -0.32 < recipe < -0.25 and 4.5 < -recipe / recipe_noise < 5.5
    assert abs(compute - hierarchy) < (noise**2 + compute_noise**2) ** 0.5
