"""Sphinx configuration of the book: README.md, the notebooks (stored outputs) and DATA.md.

Built from the repository root so that every relative link means the same on the site as in
the repository: `make site` runs `python -m sphinx -b html -c docs . build/site`.
"""

import json
import shutil
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.relative_to(ROOT).with_suffix("").as_posix()
                   for p in (ROOT / "notebooks").glob("*.ipynb"))
CHAPTERS = NOTEBOOKS + ["DATA"]

project = "vae-tutorial"
author = "the vae-tutorial authors"
copyright = "the vae-tutorial authors, MIT licence"
root_doc = "README"
extensions = ["myst_nb"]
language = "en"

# The book's pages; every other top-level entry is pruned before Sphinx walks into it.
include_patterns = ["README.md", "DATA.md", "notebooks/*.ipynb"]
exclude_patterns = sorted(p.name for p in ROOT.iterdir()
                          if p.name not in ("README.md", "DATA.md", "notebooks"))

# Stored outputs only: the site shows the full run's figures and builds in seconds.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 6  # `file.md#a-heading` links as on a code host
suppress_warnings = ["myst.header"]  # notebooks open with "# 1 · Title" and go on at ###

# MathJax 3 from a PyPI package, copied into the build: no CDN when a page opens.
# (its folder, "sphinx-mathjax-offline", is not an importable name: found through its metadata)
MATHJAX = Path(metadata.distribution("sphinx-mathjax-offline").locate_file(
    "sphinx-mathjax-offline/static/mathjax"))
MATHJAX_FILES = ["tex-chtml.js", "output/chtml", "input/tex/extensions"]
mathjax_path = "mathjax/tex-chtml.js"

html_theme = "sphinx_book_theme"
html_title = "VAE tutorial"
html_favicon = "favicon.svg"  # else every browser asks for /favicon.ico and logs a 404
html_copy_source = True  # the theme's download button serves the .ipynb itself
html_theme_options = {
    "use_download_button": True,
    "use_fullscreen_button": False,
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "navigation_with_keys": False,
}
html_context = {"default_mode": "auto"}  # a first visit, with no stored mode, logged an error
html_last_updated_fmt = None

RUN_BANNER = """:::{{admonition}} Run this chapter
:class: tip
This page shows the stored outputs of the full run. To run it yourself, in a clone of the
repository: `make tutorial` (sets up `.venv`, gets CIFAR-10, trains, executes every notebook) and
`make test` (checks everything in fast mode); then open it in JupyterLab:
`.venv/bin/jupyter lab {path}`.
:::
"""


def prepare_notebook(app, docname, source):
    """In memory, the file untouched: the banner under the title, and cells collapsed in
    JupyterLab (the exercises' solutions) collapsed on the site too."""
    if docname not in NOTEBOOKS:
        return
    nb = json.loads(source[0])
    for cell in nb["cells"]:
        hidden = cell["metadata"].get("jupyter", {})
        tags = cell["metadata"].setdefault("tags", [])
        if cell["cell_type"] == "code" and hidden.get("source_hidden"):
            tags.append("hide-input")
        if cell["cell_type"] == "code" and hidden.get("outputs_hidden"):
            tags.append("hide-output")
    first = nb["cells"][0]
    title, _, rest = "".join(first["source"]).partition("\n")
    first["source"] = f"{title}\n\n{RUN_BANNER.format(path=docname + '.ipynb')}\n{rest}"
    source[0] = json.dumps(nb)


def add_toctree(app, docname, source):
    """The README is the landing page: give it the chapters as a hidden table of contents."""
    if docname == root_doc:
        entries = "\n".join(CHAPTERS)
        source[0] += f"\n\n```{{toctree}}\n:hidden:\n:maxdepth: 2\n\n{entries}\n```\n"


def copy_mathjax(app, exc):
    """MathJax's TeX-to-HTML component, its fonts and TeX extensions, into _static/mathjax."""
    if exc is not None or app.builder.format != "html":
        return
    out = Path(app.outdir) / "_static" / "mathjax"
    for name in MATHJAX_FILES:
        src, dst = MATHJAX / name, out / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    # The site opens at its root: send it to the README's page.
    (Path(app.outdir) / "index.html").write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>VAE tutorial</title>'
        '<meta http-equiv="refresh" content="0; url=README.html">'
        '<link rel="icon" href="_static/favicon.svg"></head>'
        '<body><a href="README.html">VAE tutorial</a></body></html>\n')


def setup(app):
    app.connect("source-read", prepare_notebook)
    app.connect("source-read", add_toctree)
    app.connect("build-finished", copy_mathjax)
