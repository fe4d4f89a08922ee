"""tools/prose.py: what counts as the main line, and where sentences end."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("prose", ROOT / "tools" / "prose.py")
prose = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prose)


def split(markdown):
    return [s for p in prose.main_line(markdown) for s in prose.sentences(p)]


def test_details_block_excluded():
    md = ("We train the model. It learns.\n\n<details><summary>How we know</summary>\n\n"
          "The run lasted ten minutes. Nobody saw it.\n\n<details><summary>Inner</summary>\n\n"
          "Nested text.\n\n</details>\n\nStill hidden.\n\n</details>\n\nThen we sample.")
    assert split(md) == ["We train the model.", "It learns.", "Then we sample."]


def test_table_heading_code_display_maths_and_comments_excluded():
    md = ("# A heading\n\nWe compare two models.\n\n| model | bits/dim |\n|---|---|\n"
          "| A | 4.5 |\n\n```python\nx = 1. Then y = 2.\n```\n\n$$\na = b. C = d.\n$$\n\n"
          "\\begin{align}\nE = mc^2. F = ma.\n\\end{align}\n\n<!-- A hidden note. -->\n"
          "The end.")
    assert split(md) == ["We compare two models.", "The end."]


def test_decimals_and_abbreviations_do_not_split():
    md = "The loss fell to 3.14 nats, e.g. After training, i.e. Later, it rose. Then it fell."
    assert split(md) == ["The loss fell to 3.14 nats, e.g. After training, i.e. Later, it rose.",
                         "Then it fell."]


def test_split_on_punctuation_before_capital_and_on_list_items():
    md = ("Is it right? Yes! We check (see below). \"Quoted\" text follows.\n\n"
          "The steps:\n- encode the image\n- decode the code\n  over two lines\n1. then train")
    assert split(md) == ["Is it right?", "Yes!", "We check (see below).",
                         "\"Quoted\" text follows.", "The steps:", "encode the image",
                         "decode the code over two lines", "then train"]
    # a lower-case word after a period is not a new sentence (the latent z. we ...)
    assert len(split("We draw z. then decode it.")) == 1


def test_inline_maths_and_code_count_one_word_each():
    (s,) = split("The KL $D(q \\| p) = \\tfrac12 \\sum_j x_j$ uses `torch.sum(x, dim=1)` here.")
    assert prose.count_words(s) == 6  # The KL <math> uses <code> here.
    # links keep their text, images and tags go
    (s,) = split("See [the ELBO](01_elbo.ipynb) <b>now</b> ![fig](a.png).")
    assert prose.count_words(s) == 4


def _notebook(tmp_path, *markdown):
    cells = [{"cell_type": "markdown", "metadata": {}, "source": m} for m in markdown]
    cells.append({"cell_type": "code", "metadata": {}, "source": "print('Not. Counted.')",
                  "outputs": [], "execution_count": None})
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                "nbformat_minor": 5}))
    return path


def test_a_61_word_sentence_is_flagged(tmp_path, capsys):
    long = "Then " + " ".join(["word"] * 59) + " end."
    path = _notebook(tmp_path, "A short one. " + long, "Another short sentence here.")
    fig = prose.figures(prose.notebook_sentences(path))
    assert (fig["words"], fig["sentences"], fig["longest"], fig["over_60"]) == (68, 3, 61, 1)
    assert fig["mean"] == 22.7 and fig["pct_over_40"] == pytest.approx(33.3)
    assert fig["long"] == [long]
    assert prose.main([str(path), "--long", "--no-anchors"]) == 0
    out = capsys.readouterr().out
    assert "[nb.ipynb, 61 words]" in out and "A short one" not in out.split("\n\n", 1)[1]
    # 60 words is not over 60
    path = _notebook(tmp_path, "Then " + " ".join(["word"] * 58) + " end.")
    assert prose.figures(prose.notebook_sentences(path))["over_60"] == 0


def test_anchors_are_stored_and_counted():
    for name, path in prose.ANCHORS.items():
        fig = prose.figures(prose.notebook_sentences(path))
        assert 1500 < fig["words"] < 3500, name
        assert 10 < fig["mean"] < 30, name


# the main-line caps of the story issues: the first notebook, chapters 1-4, chapters 5-8
CAPS = {"00": 1500, **{f"{i:02d}": 2500 for i in range(1, 5)}, **{f"{i:02d}": 3000
                                                                  for i in range(5, 9)}}


@pytest.mark.parametrize("chapter", sorted(CAPS))
def test_each_chapter_reads_at_least_as_easily_as_the_anchor(chapter):
    """Measured by one script for both: no longer on average than UvA tutorial 9's sentences,
    no larger share over 40 words, none over 60, and within its word cap."""
    (path,) = (ROOT / "notebooks").glob(f"{chapter}_*.ipynb")
    ours = prose.figures(prose.notebook_sentences(path))
    anchor = prose.figures(prose.notebook_sentences(prose.ANCHORS["UvA tutorial 9 (anchor)"]))
    assert ours["mean"] <= anchor["mean"] and ours["pct_over_40"] <= anchor["pct_over_40"]
    assert ours["over_60"] == 0 and ours["words"] <= CAPS[chapter]
