"""The validation split: held-out training images for per-epoch curves and tuning, disjoint from
training (re-encoded twins included), seeded, recorded; the test images left for the end; and
standard errors over images for every evaluation."""

import json
import math

import pytest
import torch

from vae_tutorial import losses
from vae_tutorial.cli import main as cli_main
from vae_tutorial.config import PRESETS, ConfigError, preset
from vae_tutorial.data import CifarLoader, near_duplicates, split_validation
from vae_tutorial.evaluate import evaluate
from vae_tutorial.model import build_model
from vae_tutorial.train import curve_split, load_training_data, train


def _rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(img.flatten().tolist()) for img in images}


def test_split_is_disjoint_complete_and_seeded():
    keep, held = split_validation(100, 10, seed=3)
    assert len(held) == 10 and len(keep) == 90
    assert sorted(keep.tolist() + held.tolist()) == list(range(100))
    assert torch.equal(held, split_validation(100, 10, seed=3)[1])  # the same for every run
    assert not torch.equal(held, split_validation(100, 10, seed=4)[1])
    for size in (0, 100, 101):
        with pytest.raises(ValueError, match="valid_size"):
            split_validation(100, size)


def test_near_duplicates_finds_re_encoded_twins_only():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 3, 32, 32), generator=g, dtype=torch.uint8)
    # twins of images 5, 17 and 250 at about 30 dB (noise sd 8), like a JPEG re-encoding
    noise = torch.randn(3, 3, 32, 32, generator=g) * 8
    twins = (images[[5, 17, 250]].float() + noise).clamp(0, 255).to(torch.uint8)
    other = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    mask = near_duplicates(images, torch.cat([twins, other]), chunk=64)
    assert mask.nonzero().flatten().tolist() == [5, 17, 250]


def test_validation_images_are_held_out_of_training(subset_root):
    cfg = preset("fast", data=str(subset_root), allow_partial=True, train_limit=None,
                 valid_size=200, valid_seed=1)
    splits = load_training_data(cfg)
    assert len(splits["valid"][0]) == 200 and len(splits["train"][0]) == 5085 - 200
    assert not _rows(splits["valid"][0]) & _rows(splits["train"][0])
    assert len(splits["test"][0]) == cfg.test_limit


def test_with_a_second_root_validation_comes_from_it_and_its_twins_leave_the_first(
        subset_root, tmp_path):
    """Offline, the exact images are mixed into a JPEG copy that holds re-encodings of them:
    validation images come from the exact root, and their twins in the other are dropped."""
    from vae_tutorial.data import load_cifar10

    x, _ = load_cifar10(subset_root, "train", allow_partial=True)
    cfg = preset("fast", data=str(subset_root), extra_data=str(subset_root), allow_partial=True,
                 train_limit=None, extra_repeats=2, valid_size=100)
    splits = load_training_data(cfg)
    # here the "JPEG copy" is the subset itself, so each validation image's twin is itself
    assert len(splits["train"][0]) == (5085 - 100) + 2 * (5085 - 100)
    assert not _rows(splits["valid"][0]) & _rows(splits["train"][0])
    assert _rows(splits["valid"][0]) <= _rows(x)


def test_full_presets_validate_and_the_fast_preset_does_not():
    for name in PRESETS:
        assert (preset(name).valid_size > 0) == (name != "fast"), name
    with pytest.raises(ConfigError, match="valid_size"):
        preset("cpu", valid_size=-1)


def test_training_curve_is_on_validation_and_the_test_images_wait(subset_root, tmp_path):
    cfg = preset("fast", data=str(subset_root), allow_partial=True, out_dir=str(tmp_path),
                 progress=False, device="cpu", epochs=2, valid_size=64)
    history = train(cfg)
    assert curve_split(history) == "valid"
    assert all("valid_bpd" in h and "test_bpd" not in h for h in history)
    assert all(0 < h["valid_bpd_se"] < 0.5 for h in history)
    stored = json.loads((tmp_path / "history.json").read_text())
    assert stored[-1]["valid_bpd"] == pytest.approx(history[-1]["valid_bpd"])
    # the split is recorded with the run: the checkpoint's config names its size and seed
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["config"]["valid_size"] == 64 and ckpt["config"]["valid_seed"] == 0


def test_evaluate_writes_the_split_and_standard_errors(subset_root, tmp_path, monkeypatch):
    cfg = preset("fast", data=str(subset_root), allow_partial=True, out_dir=str(tmp_path / "r"),
                 progress=False, device="cpu", epochs=1, valid_size=64)
    train(cfg)
    out = tmp_path / "eval.json"
    assert cli_main(["evaluate", str(tmp_path / "r" / "checkpoint.pt"), "-k", "2", "--limit",
                     "50", "--json", str(out), "--allow-partial"]) == 0
    result = json.loads(out.read_text())
    assert result["valid_size"] == 64 and result["valid_seed"] == 0 and result["images"] == 50
    assert 0 < result["bits_per_dim_se"] < 1 and 0 < result["iwae_bits_per_dim_se"] < 1


def test_standard_errors_match_the_per_image_spread(subset_test):
    torch.manual_seed(0)
    model = build_model(preset("fast").model)
    x, y = subset_test[0][:96], subset_test[1][:96]
    ev = evaluate(model, CifarLoader(x, y, batch_size=40, shuffle=False))  # uneven batches
    torch.manual_seed(0)  # the same posterior draws, image by image
    model = build_model(preset("fast").model)
    model.eval()
    with torch.no_grad():
        per_image = torch.cat([model(xb).elbo for xb, _ in
                               CifarLoader(x, y, batch_size=40, shuffle=False)]).double()
    assert ev.elbo == pytest.approx(per_image.mean().item(), rel=1e-6)
    assert ev.elbo_se == pytest.approx(per_image.std().item() / math.sqrt(96), rel=1e-4)
    assert ev.bits_per_dim_se == pytest.approx(
        -losses.bits_per_dim(per_image.std().item()) / math.sqrt(96), rel=1e-4)


def test_the_curves_plot_shows_the_validation_split_where_a_run_has_one():
    import matplotlib

    matplotlib.use("Agg")
    from vae_tutorial.plots import plot_history

    base = {"train_bpd": 5.0, "train_reconstruction": -10000.0, "train_kl": 300.0}
    for held in ("valid", "test"):
        history = [{"epoch": e, **base, f"{held}_bpd": 5.1, f"{held}_reconstruction": -1e4,
                    f"{held}_kl": 290.0} for e in (1, 2)]
        axes = plot_history(history)
        labels = [line.get_label() for line in axes[0].get_lines()]
        assert labels == ["training (epoch average)", {"valid": "validation", "test": "test"}[held]]
        assert axes[2].get_ylabel() == "nats per image"
        assert list(axes[1].get_lines()[1].get_ydata()) == [1e4, 1e4]  # -E log p, positive


def test_results_records_the_further_evaluations_of_a_run(tmp_path):
    """checkpoint.publish copies history.json, eval.json and every eval-*.json (validation,
    more samples), and nothing else of the run folder."""
    from vae_tutorial.checkpoint import publish

    run = tmp_path / "run"
    run.mkdir()
    for name in ("history.json", "eval.json", "eval-valid.json", "eval-k1000.json", "notes.json"):
        (run / name).write_text(json.dumps({"name": name}))
    publish(run, tmp_path / "dest", weights=False)
    got = sorted(p.name for p in (tmp_path / "dest").iterdir())
    assert got == ["eval-k1000.json", "eval-valid.json", "eval.json", "history.json"]
    assert json.loads((tmp_path / "dest" / "eval-valid.json").read_text()) == {
        "name": "eval-valid.json"}
