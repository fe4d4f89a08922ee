"""What notebooks 5 and 6 rely on: load the full run, finish an interrupted one, or train."""

import pytest

from vae_tutorial import notebook
from vae_tutorial.checkpoint import export_half, load_checkpoint
from vae_tutorial.config import preset
from vae_tutorial.train import StopTraining, train


@pytest.fixture
def tiny(subset_root, tmp_path):
    return preset("fast", data=str(subset_root), allow_partial=True, train_limit=128,
                  test_limit=32, batch_size=32, epochs=2, progress=False, width=8,
                  latent_dim=8, out_dir=str(tmp_path / "run"))


def test_full_mode_finishes_an_interrupted_run(tiny, monkeypatch):
    monkeypatch.setattr(notebook, "FAST", False)

    def stop(record, model):
        raise StopTraining

    train(tiny, callback=stop)
    assert load_checkpoint(f"{tiny.out_dir}/checkpoint.pt")["epoch"] == 1
    model, history, ckpt = notebook.train_or_load(tiny.replace(epochs=99), tiny.out_dir)
    assert [h["epoch"] for h in history] == [1, 2]  # the stored config's 2 epochs, not 99
    assert ckpt["epoch"] == 2 and not model.training


def test_full_mode_uses_committed_weights_without_a_run(tiny, monkeypatch, tmp_path):
    train(tiny)
    committed = tmp_path / "model-fp16.pt"
    digest = export_half(f"{tiny.out_dir}/checkpoint.pt", committed)
    assert len(digest) == 64
    monkeypatch.setattr(notebook, "FAST", False)
    monkeypatch.setattr(notebook, "committed_weights", lambda: committed)
    model, history, ckpt = notebook.train_or_load(tiny, tmp_path / "no-run-here")
    assert "optimizer" not in ckpt and len(history) == 2
    assert next(model.parameters()).dtype.is_floating_point
    assert not (tmp_path / "no-run-here").exists()  # nothing was trained


def test_fast_mode_always_trains(tiny, monkeypatch, tmp_path):
    monkeypatch.setattr(notebook, "FAST", True)
    model, history, _ = notebook.train_or_load(tiny, tmp_path / "fresh")
    assert len(history) == 2 and (tmp_path / "fresh" / "checkpoint.pt").exists()
