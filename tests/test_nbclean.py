"""The notebook cleaner removes what varies between runs and keeps the real outputs."""

import nbformat
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook, new_output

from vae_tutorial.nbclean import clean


def test_clean_strips_volatile_parts_and_keeps_outputs(tmp_path):
    cell = new_code_cell("print(1)", metadata={"execution": {"iopub.status.busy": "2026"}})
    cell.outputs = [new_output("stream", name="stdout", text="1\n"),
                    new_output("display_data", data={
                        "application/vnd.jupyter.widget-view+json": {"model_id": "abc"},
                        "text/plain": "epoch 1/8:   0%|"})]
    language_info = {"name": "python", "version": "3.11.7", "mimetype": "text/x-python",
                     "codemirror_mode": {"name": "ipython", "version": 3}}
    nb = new_notebook(cells=[cell], metadata={
        "kernelspec": {"name": "my-venv", "display_name": "venv"},
        "language_info": language_info, "widgets": {"state": {}}})
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    clean(str(path))
    out = nbformat.read(path, as_version=4)
    assert out.metadata == {"kernelspec": {"name": "python3", "language": "python",
                                           "display_name": "Python 3 (ipykernel)"},
                            "language_info": language_info}  # the kernel's block, whole
    assert "execution" not in out.cells[0].metadata
    assert [o.output_type for o in out.cells[0].outputs] == ["stream"]


def test_a_notebook_never_executed_gets_the_language_name(tmp_path):
    path = tmp_path / "n.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("1")]), path)
    clean(str(path))
    assert nbformat.read(path, as_version=4).metadata.language_info == {"name": "python"}


def test_cleaned_notebook_keeps_what_the_kernel_reports(tmp_path):
    """JupyterLab replaces metadata.language_info with the kernel's kernel_info reply when it
    connects: a notebook executed (as nbconvert does) and cleaned on this Python already holds
    exactly that block, so opening it changes nothing (no 'modified' mark)."""
    nb = new_notebook(cells=[new_code_cell("1 + 1")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    clean(str(path))
    kept = nbformat.read(path, as_version=4).metadata.language_info

    km, kc = start_new_kernel(kernel_name="python3")  # a second kernel, as JupyterLab starts
    try:
        reply = kc.kernel_info(reply=True, timeout=60)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert kept == reply["content"]["language_info"]
    assert {"name", "version", "mimetype", "file_extension"} <= set(kept)
