"""Strip what changes from run to run out of executed notebooks, before they are committed.

    python -m vae_tutorial.nbclean notebooks/*.ipynb

Removes widget state and live progress-bar outputs (tqdm widgets only mean something while
a cell runs) and per-cell execution timestamps; fixes the kernelspec. Keeps the
`language_info` block the executing kernel wrote: JupyterLab writes the kernel's block back as
soon as it connects, so a notebook that kept it opens unmodified on the same Python (cut down
to its name, every notebook was marked modified a moment after the kernel started).
"""

from __future__ import annotations

import sys

import nbformat

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
WIDGET = "application/vnd.jupyter.widget-view+json"


def clean(path: str) -> None:
    """Rewrite one notebook in place without volatile metadata and widget outputs."""
    nb = nbformat.read(path, as_version=4)
    language_info = nb.metadata.get("language_info") or {"name": "python"}
    nb.metadata = {"kernelspec": KERNELSPEC, "language_info": language_info}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if WIDGET not in o.get("data", {})]
    nbformat.write(nb, path)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        clean(p)
        print(f"cleaned {p}")
