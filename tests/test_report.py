"""The README's tables of measurements are generated from results/, not typed."""

import json
from pathlib import Path

import pytest

from vae_tutorial.report import fill, tables, training_table

REPO = Path(__file__).resolve().parent.parent


def test_readme_holds_the_generated_tables():
    readme = (REPO / "README.md").read_text()
    assert fill(readme, tables(REPO / "results")) == readme, (
        "README.md differs from results/: run `python -m vae_tutorial report --write README.md`")


def test_fill_replaces_only_the_marked_block_and_names_a_missing_marker():
    text = "a\n<!-- report:t -->\nold 1\nold 2\n<!-- /report:t -->\nb"
    assert fill(text, {"t": "new"}) == "a\n<!-- report:t -->\nnew\n<!-- /report:t -->\nb"
    empty = "<!-- report:t -->\n<!-- /report:t -->"
    assert fill(empty, {"t": "new"}) == "<!-- report:t -->\nnew\n<!-- /report:t -->"
    with pytest.raises(ValueError, match="report:other"):
        fill(text, {"other": "x"})


def test_training_table_sums_epoch_times_and_reads_the_evaluation(tmp_path):
    run = tmp_path / "conv-cpu"
    run.mkdir()
    history = [{"epoch": 1, "seconds": 60.0, "precision": "bf16"},
               {"epoch": 2, "seconds": 90.0, "precision": "bf16"}]
    (run / "history.json").write_text(json.dumps(history))
    (run / "eval.json").write_text(json.dumps(
        {"bits_per_dim": 5.4321, "iwae_bits_per_dim": 5.1234, "num_samples": 100}))
    table = training_table(tmp_path)
    rows = table.splitlines()[2:]
    assert len(rows) == 1  # runs without eval.json are left out
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert cells[1:6] == ["2.2 M", "2", "2.5 min", "bf16", "5.432 bits/dim"]
    assert cells[6] == "**5.123 bits/dim (k=100)**"
