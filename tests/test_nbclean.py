"""The notebook cleaner removes what varies between runs and keeps the real outputs."""

import nbformat
from nbformat.v4 import new_code_cell, new_notebook, new_output

from vae_tutorial.nbclean import clean


def test_clean_strips_volatile_parts_and_keeps_outputs(tmp_path):
    cell = new_code_cell("print(1)", metadata={"execution": {"iopub.status.busy": "2026"}})
    cell.outputs = [new_output("stream", name="stdout", text="1\n"),
                    new_output("display_data", data={
                        "application/vnd.jupyter.widget-view+json": {"model_id": "abc"},
                        "text/plain": "epoch 1/8:   0%|"})]
    nb = new_notebook(cells=[cell], metadata={
        "kernelspec": {"name": "my-venv", "display_name": "venv"},
        "language_info": {"name": "python", "version": "3.11.7"}, "widgets": {"state": {}}})
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    clean(str(path))
    out = nbformat.read(path, as_version=4)
    assert out.metadata == {"kernelspec": {"name": "python3", "language": "python",
                                           "display_name": "Python 3 (ipykernel)"},
                            "language_info": {"name": "python"}}
    assert "execution" not in out.cells[0].metadata
    assert [o.output_type for o in out.cells[0].outputs] == ["stream"]
