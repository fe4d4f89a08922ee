"""Strip what changes from run to run out of executed notebooks, before they are committed.

    python -m vae_tutorial.nbclean notebooks/*.ipynb

Removes widget state and live progress-bar outputs (tqdm widgets only mean something while
a cell runs), per-cell execution timestamps, and the interpreter version; fixes the kernelspec.
"""

from __future__ import annotations

import sys

import nbformat

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
WIDGET = "application/vnd.jupyter.widget-view+json"


def clean(path: str) -> None:
    """Rewrite one notebook in place without volatile metadata and widget outputs."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if WIDGET not in o.get("data", {})]
    nbformat.write(nb, path)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        clean(p)
        print(f"cleaned {p}")
