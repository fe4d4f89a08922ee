"""The learner-facing text renders and stands on its own: tables with equal rows, images in
paragraphs of their own, links that resolve inside the repository, one kernelspec."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

REPO = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "DATA.md"]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
md = MarkdownIt("commonmark").enable("table")


def _tables(text: str) -> list[list[int]]:
    """Cells per row of every table a markdown renderer finds in text."""
    tables, rows, cells = [], None, 0
    for tok in md.parse(text):
        if tok.type == "table_open":
            rows = []
        elif tok.type == "tr_open":
            cells = 0
        elif tok.type in ("th_open", "td_open"):
            cells += 1
        elif tok.type == "tr_close":
            rows.append(cells)
        elif tok.type == "table_close":
            tables.append(rows)
    return tables


def _markdown_cells():
    for path in NOTEBOOKS:
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "markdown":
                yield f"{path.name}[{i}]", "".join(cell["source"])


@pytest.mark.parametrize("name", DOCS)
def test_every_table_renders_with_equal_rows(name):
    text = (REPO / name).read_text()
    tables = _tables(text)
    assert len(tables) >= text.count("\n|---") > 0  # every table in the source was found
    for rows in tables:
        assert len(set(rows)) == 1, (name, rows)


def test_notebook_tables_render_with_equal_rows():
    for where, text in _markdown_cells():
        for rows in _tables(text):
            assert len(set(rows)) == 1, (where, rows)


def test_the_seed_table_escapes_its_pipes():
    """The first README table once broke on `KL(q(z|x || p(z)))`: four columns in every row."""
    first = _tables((REPO / "README.md").read_text())[0]
    assert set(first) == {3}


@pytest.mark.parametrize("name", DOCS)
def test_images_sit_in_paragraphs_of_their_own(name):
    """A caption in the same paragraph as its image renders beside it; keep them apart."""
    tokens = md.parse((REPO / name).read_text())
    for tok in tokens:
        if tok.type == "inline" and any(c.type == "image" for c in tok.children or []):
            others = [c for c in tok.children if c.type not in ("image", "softbreak")
                      and not (c.type == "text" and not c.content.strip())]
            assert not others, tok.content


def test_links_resolve_inside_the_repository():
    """No learner-facing link leaves the repository (../shared/... does not exist for a
    reader), and every relative link points at a file that exists."""
    texts = [(name, (REPO / name).read_text()) for name in DOCS] + list(_markdown_cells())
    for where, text in texts:
        assert "../shared" not in text, where
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" in target:
                continue
            base = REPO if where in DOCS else REPO / "notebooks"
            assert (base / target).exists(), (where, target)


def test_notebooks_have_the_kernelspec_jupyterlab_writes():
    """JupyterLab writes 'Python 3 (ipykernel)': stored otherwise, every notebook shows as
    modified the moment it is opened."""
    for path in NOTEBOOKS:
        spec = json.loads(path.read_text())["metadata"]["kernelspec"]
        assert spec == {"name": "python3", "display_name": "Python 3 (ipykernel)",
                        "language": "python"}, path.name


def test_one_citation_year_for_kingma_and_welling():
    texts = [(REPO / "README.md").read_text()] + [t for _, t in _markdown_cells()]
    years = {y for t in texts for y in re.findall(r"Kingma (?:&|and) Welling,? (\d{4})", t)}
    assert years == {"2013"}


def test_readme_counts_the_bad_input_cases_pytest_collects():
    """The reliability paragraph's count is the number of cases of tests/test_bad_inputs.py."""
    said = re.search(r"`pytest\s+tests/test_bad_inputs.py`\s+collects\s+(\d+)",
                     (REPO / "README.md").read_text())
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider", "tests/test_bad_inputs.py"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    collected = re.search(r"(\d+) tests? collected", out)
    assert said and collected and said.group(1) == collected.group(1), out[-300:]


def test_readme_quotes_the_property_tests_example_counts():
    """The reliability paragraph's example counts, in order, are those of test_properties.py."""
    readme = (REPO / "README.md").read_text()
    bullet = readme.split("**The maths holds for any input**")[1].split("\n- **")[0]
    said = [int(n) for n in re.findall(r"(\d+)(?: examples)?\)", bullet)]
    used = [int(n) for n in re.findall(r"max_examples=(\d+)",
                                        (REPO / "tests" / "test_properties.py").read_text())]
    assert said == used
