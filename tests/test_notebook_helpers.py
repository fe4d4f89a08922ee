"""What the notebooks rely on: load the full run (never train it in a cell), committed weights
without a run, a clear error naming the command, and training in seconds in fast mode."""

import pytest

from vae_tutorial import notebook, runtime
from vae_tutorial.checkpoint import export_half, load_checkpoint
from vae_tutorial.config import preset
from vae_tutorial.train import StopTraining, train


@pytest.fixture
def tiny(subset_root, tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.FAST_ENV, "0")
    return preset("cpu", data=str(subset_root), allow_partial=True, train_limit=128,
                  test_limit=32, batch_size=32, epochs=2, progress=False, width=8, valid_size=32,
                  latent_dim=8, out_dir=str(tmp_path / "run"))


def test_full_mode_loads_an_interrupted_run_and_says_how_to_finish_it(tiny, monkeypatch):
    def stop(record, model):
        raise StopTraining

    train(tiny, callback=stop)
    ran = []
    monkeypatch.setattr("vae_tutorial.train.train", lambda *a, **k: ran.append(1))
    model, history, ckpt, source = notebook.load_run(tiny)
    assert [h["epoch"] for h in history] == [1] and ckpt["epoch"] == 1 and not model.training
    assert not ran  # nothing was trained in the notebook
    assert "interrupted after epoch 1" in source
    assert "python -m vae_tutorial train --preset cpu " in source and "--resume`" in source


def test_full_mode_uses_committed_weights_without_a_run(tiny, monkeypatch, tmp_path):
    train(tiny)
    results = tmp_path / "results"
    (results / "conv-cpu").mkdir(parents=True)
    digest = export_half(f"{tiny.out_dir}/checkpoint.pt", results / "conv-cpu" / "model-fp16.pt")
    assert len(digest) == 64
    monkeypatch.setattr(runtime, "results_dir", lambda: results)
    monkeypatch.setattr(runtime, "checkout_dir", lambda: tmp_path)
    model, history, ckpt, source = notebook.load_run(tiny.replace(out_dir=str(tmp_path / "no")))
    assert "optimizer" not in ckpt and len(history) == 2
    assert source == "committed weights results/conv-cpu/model-fp16.pt"
    assert not (tmp_path / "no").exists()  # nothing was trained
    gpu = tiny.replace(preset="gpu", out_dir=str(tmp_path / "no"))  # no gpu run: the cpu one
    assert notebook.load_run(gpu)[3] == source


def test_full_mode_without_anything_names_the_command(tiny, monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "results_dir", lambda: tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="train --preset cpu --model seed .*--resume"):
        notebook.load_run(tiny.replace(kind="seed"))


def test_fast_mode_trains_in_seconds(tiny, monkeypatch):
    monkeypatch.setenv(runtime.FAST_ENV, "1")
    model, history, ckpt, source = notebook.load_run(tiny)
    assert len(history) == 2 and "fast mode" in source
    assert load_checkpoint(f"{tiny.out_dir}/checkpoint.pt")["epoch"] == 2


def test_provenance_names_the_data_copies_and_the_mode(tiny, monkeypatch):
    info = notebook.provenance(tiny.replace(test_data="/x/cifar10-subset"))
    assert info["train data"] == "cifar10-subset" and info["test data"] == "cifar10-subset"
    assert info["mode"] == "full" and info["preset"] == "cpu"
    assert info["hardware"] == runtime.hardware()


def test_train_command_names_the_runs_own_data_and_split(monkeypatch, tmp_path):
    """The command notebook 5 prints must train the run it shows: a mixed-data run made before
    the validation split names both roots and valid_size=0; a preset run names nothing extra."""
    from vae_tutorial.config import preset
    from vae_tutorial.notebook import train_command

    monkeypatch.setenv("VAE_TUTORIAL_DATA", str(tmp_path / "cifar10-subset"))
    plain = preset("cpu")
    assert train_command(plain) == "python -m vae_tutorial train --preset cpu --resume"
    old = plain.replace(data=str(tmp_path / "cifar10-jpeg"),
                        extra_data=str(tmp_path / "cifar10-subset"), valid_size=0)
    assert train_command(old) == (
        "python -m vae_tutorial train --preset cpu --data /path/to/cifar10-jpeg "
        "--set extra_data=/path/to/cifar10-subset --set valid_size=0 --resume")
    hvae = preset("cpu", kind="hvae")
    assert train_command(hvae) == "python -m vae_tutorial train --preset cpu --model hvae --resume"
    # a run whose recipe differs from today's preset (notebook 8's batch-64 run) says how
    other = 256 if hvae.batch_size != 256 else 128
    older = hvae.replace(batch_size=other, hflip=not hvae.hflip)
    command = train_command(older)
    assert command == ("python -m vae_tutorial train --preset cpu --model hvae "
                       f"--set batch_size={other} --set hflip={not hvae.hflip} --resume")
    # ... and that command builds the same config again
    from vae_tutorial.cli import _config, build_parser

    args = build_parser().parse_args(command.split()[3:])
    assert _config(args) == older


def test_cached_computes_once_per_key_and_again_when_the_weights_change(tmp_path, monkeypatch,
                                                                         capsys):
    import torch

    monkeypatch.setenv(runtime.RUNS_ENV, str(tmp_path))
    net = torch.nn.Linear(3, 2)
    images = torch.arange(12, dtype=torch.uint8).reshape(4, 3)
    calls = []

    def compute():
        calls.append(1)
        return {"value": torch.tensor([len(calls)])}

    first = notebook.cached("demo", compute, net, images, 100)
    again = notebook.cached("demo", compute, net, images, 100)
    assert len(calls) == 1 and again["value"].item() == first["value"].item() == 1
    assert "computed earlier on this machine and kept in" in capsys.readouterr().out
    notebook.cached("demo", compute, net, images, 1000)  # another setting
    notebook.cached("demo", compute, net, images[:2], 100)  # other images
    with torch.no_grad():
        net.weight[0, 0] += 1e-3  # other weights
    notebook.cached("demo", compute, net, images, 100)
    assert len(calls) == 4
    kept = sorted(p.suffix for p in (tmp_path / notebook.CACHE).iterdir())
    assert kept == [".pt"] * 4  # no half-written file left behind


def test_digest_tells_dtype_shape_and_values_apart():
    import torch

    x = torch.zeros(4)
    assert notebook.digest(x) == notebook.digest(torch.zeros(4))
    assert len({notebook.digest(x), notebook.digest(x.double()), notebook.digest(x.reshape(2, 2)),
                notebook.digest(x + 1), notebook.digest("zeros"), notebook.digest(x, 1)}) == 6
