"""python -m vae_tutorial: help texts, one-line errors with exit codes, fast end-to-end run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vae_tutorial import runtime

REPO = Path(__file__).resolve().parent.parent

COMMANDS = ["data", "train", "evaluate", "sample", "export", "bench", "report", "results",
            "gpu-check"]


def run(*args, env=None, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "vae_tutorial", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


@pytest.fixture
def env(subset_root, tmp_path):
    return dict(os.environ, **{runtime.DATA_ENV: str(subset_root), runtime.ALLOW_PARTIAL_ENV: "1",
                               runtime.FAST_ENV: "1", runtime.FIGURES_ENV: str(tmp_path / "fig")})


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command):
    r = run(command, "--help")
    assert r.returncode == 0
    assert f"vae_tutorial {command}" in r.stdout and "--debug" in r.stdout


def test_missing_data_is_one_line_and_exit_2(tmp_path, env):
    env[runtime.DATA_ENV] = str(tmp_path / "empty")
    r = run("train", "--preset", "fast", "--out", tmp_path / "o", env=env)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "CIFAR-10 not found" in lines[0] and runtime.DATA_ENV in lines[0]
    assert "Traceback" not in r.stderr


def test_debug_shows_the_traceback(tmp_path, env):
    r = run("--debug", "evaluate", tmp_path / "missing.pt", env=env)
    assert r.returncode != 0 and "Traceback" in r.stderr and "CheckpointError" in r.stderr


def test_bad_checkpoint_and_bad_override(tmp_path, env):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = run("evaluate", bad, env=env)
    assert r.returncode == 2 and "bad.pt" in r.stderr and "Traceback" not in r.stderr
    r = run("train", "--set", "widht=3", "--out", tmp_path / "o", env=env)
    assert r.returncode == 2 and "widht" in r.stderr and "Traceback" not in r.stderr
    r = run("train", "--set", "width=wide", "--out", tmp_path / "o", env=env)
    assert r.returncode == 2 and "expected an int" in r.stderr


def test_partial_copy_needs_the_opt_in(tmp_path, env):
    env.pop(runtime.ALLOW_PARTIAL_ENV)
    r = run("data", env=env)
    assert r.returncode == 2 and "allow-partial" in r.stderr
    r = run("data", "--allow-partial", env=env)
    assert r.returncode == 0
    assert "train: 5085 images" in r.stdout and "test: 1017 images" in r.stdout


def test_train_evaluate_sample_end_to_end(tmp_path, env):
    out = tmp_path / "run"
    r = run("train", "--out", out, "--epochs", "1", env=env)  # fast preset from the env
    assert r.returncode == 0, r.stderr
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and history[0]["test_bpd"] > 0
    r = run("evaluate", out / "checkpoint.pt", "-k", "5", "--limit", "20",
            "--json", tmp_path / "eval.json", env=env)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["images"] == 20 and result["num_samples"] == 5
    assert result["iwae"] >= result["elbo"] - 50  # IWAE tightens the bound (up to noise)
    assert (f"{result['iwae_bits_per_dim']:.3f} ± {result['iwae_bits_per_dim_se']:.3f} "
            "bits/dim") in r.stdout
    r = run("sample", out / "checkpoint.pt", "-n", "12", "--nrow", "4",
            "--out", tmp_path / "s.png", env=env)
    assert r.returncode == 0, r.stderr
    img = Image.open(tmp_path / "s.png")
    assert img.size == (4 * 34 + 2, 3 * 34 + 2)  # 4 x 3 tiles of 32 px with 2 px padding
    # a half-precision export is smaller, and evaluates to nearly the same ELBO
    r = run("export", out / "checkpoint.pt", tmp_path / "half.pt", env=env)
    assert r.returncode == 0 and "sha256" in r.stdout
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * (out / "checkpoint.pt").stat().st_size
    r = run("evaluate", tmp_path / "half.pt", "-k", "0", "--limit", "20", "--json",
            tmp_path / "half.json", env=env)
    half = json.loads((tmp_path / "half.json").read_text())
    assert r.returncode == 0 and abs(half["elbo"] - result["elbo"]) < 0.01 * abs(result["elbo"])
    # resuming a finished run trains nothing more and keeps the checkpoint
    before = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    r = run("train", "--out", out, "--epochs", "1", "--resume", env=env)
    after = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert r.returncode == 0 and after == before
    # without --resume or --fresh an existing run is never overwritten
    digest = (out / "checkpoint.pt").read_bytes()
    r = run("train", "--out", out, "--epochs", "1", env=env)
    assert r.returncode == 2 and "--resume" in r.stderr and "--fresh" in r.stderr
    assert (out / "checkpoint.pt").read_bytes() == digest


def test_bench_writes_its_table(tmp_path, env):
    out = tmp_path / "bench.json"
    r = run("bench", "--loading-only", "--repeats", "2", "--batch-size", "100",
            "--json", out, env=env)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["name"] for row in rows] == ["seed pipeline: DataLoader + ToTensor, batches only",
                                            "project: CifarLoader, batches only"]
    # speed is bench's to measure, not a test's to assert (a loaded machine reverses any ratio)
    assert all(math.isfinite(row["median"]) and row["median"] > 0 for row in rows)
    assert math.isfinite(rows[1]["speedup_vs_seed"]) and rows[1]["speedup_vs_seed"] > 0
    r = run("bench", "--steps", "1", "--repeats", "1", "--ks", "2", "--iwae-images", "4",
            "--batch-size", "16", "--profile-steps", "1", "--json", out, env=env)
    assert r.returncode == 0, r.stderr
    table = json.loads(out.read_text())
    names = [row["name"] for row in table["rows"]]
    assert names[0].startswith("seed pipeline") and names[-1] == "iwae_log_likelihood k=2 (ConvVAE)"
    assert any("hierarchical VAE (cpu preset)" in n for n in names)
    # the project's default precision, and fp32 beside it where the default is bf16
    bf16 = runtime.cpu_bf16_native()
    assert names[1] == f"project pipeline: CifarLoader + SeedVAE, {'bf16' if bf16 else 'fp32'}"
    assert ("project pipeline: CifarLoader + SeedVAE, fp32" in names[1:3]) and (
        ("project pipeline: CifarLoader + SeedVAE, bf16" in names) == bf16)
    assert all(row["median"] > 0 for row in table["rows"])
    assert table["rows"][1]["speedup_vs_seed"] > 0 and table["data"] == "cifar10-subset"
    # where each model's step goes, in the picked precision: one row per model
    profiled = table["profile"]["rows"]
    assert [r["model"] for r in profiled] == ["SeedVAE", "ConvVAE (cpu preset)",
                                              "hierarchical VAE (cpu preset)"]
    assert all(r["precision"] == table["precision"]["precision"] for r in profiled)
    for r in profiled:
        assert sum(r["kinds"].values()) == pytest.approx(1.0)
        assert 0 < r["kinds"]["convolutions"] < 1 and r["conv_gflops"] > 0


def test_committed_weights_reproduce_their_evaluation(tmp_path, env):
    """`evaluate` on the committed half-precision weights of the full run gives the ELBO and
    IWAE of results/conv-cpu/eval.json on the 1,017 exact test images, within Monte Carlo
    noise (both are sampled; seeds and kernels differ between versions and machines)."""
    stored = json.loads((REPO / "results/conv-cpu/eval.json").read_text())
    out = tmp_path / "eval.json"
    # 101,700 decodes: minutes on a 2-core CPU in fp32, more under load (a limit, not a speed)
    r = run("evaluate", REPO / "results/conv-cpu/model-fp16.pt", "-k", "100", "--json", out,
            env=env, timeout=3600)
    assert r.returncode == 0, r.stderr
    now = json.loads(out.read_text())
    assert now["images"] == stored["images"] == 1017 and now["data"] == stored["data"]
    assert abs(now["elbo"] - stored["elbo"]) < 1.5  # nats per image, of about 11,100
    assert abs(now["iwae"] - stored["iwae"]) < 1.5


def test_lost_in_16_bits_counts_underflow_and_overflow():
    """fp16 flushes 1e-9 to zero and overflows 1e5; bf16 keeps both (fp32's exponent range)."""
    from vae_tutorial.bench import lost_in

    v = torch.tensor([1e-9, 1e-3, 1.0, 1e5, 0.0])  # the zero is not counted
    assert lost_in(v, torch.float16) == {"underflow": 0.25, "overflow": 0.25}
    assert lost_in(v, torch.bfloat16) == {"underflow": 0.0, "overflow": 0.0}


def test_match_time_trains_one_model_for_another_runs_time(tmp_path, env, monkeypatch):
    """`make compare`: --model seed --match-time conv reads conv's history and trains the seed's
    network for that long, in its own run folder (this once failed on a duplicated `kind`)."""
    from vae_tutorial import cli
    from vae_tutorial import train as train_module

    for name in (runtime.DATA_ENV, runtime.ALLOW_PARTIAL_ENV, runtime.FAST_ENV):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setattr(runtime, "runs_dir", lambda: tmp_path / "runs")
    ref = tmp_path / "runs" / "conv-fast"
    ref.mkdir(parents=True)
    (ref / "history.json").write_text(json.dumps([{"seconds": 30.0}, {"seconds": 60.0}]))
    seen = []
    monkeypatch.setattr(train_module, "train", lambda cfg, resume: seen.append(cfg) or [])
    assert cli.main(["train", "--model", "seed", "--match-time", "conv",
                     "--set", "epochs=100"]) == 0
    (cfg,) = seen
    assert cfg.model.kind == "seed" and cfg.time_limit == 1.5 and cfg.epochs == 100
    assert Path(cfg.out_dir) == tmp_path / "runs" / "seed-fast"


def test_evaluate_on_the_runs_own_validation_images_per_image(tmp_path, env):
    """`evaluate --split valid --per-image` scores the images the run held out (the trainer's
    draw), keeps every image's values in order, and a run without a split is refused."""
    from vae_tutorial.checkpoint import load_model
    from vae_tutorial.config import TrainConfig
    from vae_tutorial.data import CifarLoader
    from vae_tutorial.evaluate import evaluate
    from vae_tutorial.train import load_training_data

    out = tmp_path / "run"
    r = run("train", "--out", out, "--epochs", "1", "--set", "valid_size=40",
            "--set", "train_limit=300", env=env)
    assert r.returncode == 0, r.stderr
    r = run("evaluate", out / "checkpoint.pt", "--split", "valid", "--per-image", "-k", "2",
            "--json", tmp_path / "v.json", env=env)
    assert r.returncode == 0, r.stderr
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["split"] == "valid" and v["images"] == 40 == len(v["elbo_per_image"])
    assert len(v["iwae_per_image"]) == 40
    assert math.isclose(sum(v["elbo_per_image"]) / 40, v["elbo"], rel_tol=1e-6)  # float32 sums
    model, ckpt = load_model(out / "checkpoint.pt")
    held = load_training_data(TrainConfig.from_dict(ckpt["config"]))["valid"]
    torch.manual_seed(0)  # evaluate's default --seed
    mine = evaluate(model, CifarLoader(*held, batch_size=50, shuffle=False), num_samples=2,
                    per_image=True)
    assert torch.allclose(torch.tensor(mine.elbo_per_image), torch.tensor(v["elbo_per_image"]),
                          rtol=1e-5)
    # the test split's JSON has no per-image lists unless asked
    r = run("evaluate", out / "checkpoint.pt", "-k", "0", "--limit", "8", "--json",
            tmp_path / "t.json", env=env)
    assert r.returncode == 0
    assert "elbo_per_image" not in json.loads((tmp_path / "t.json").read_text())
    r = run("train", "--out", tmp_path / "nosplit", "--epochs", "1", "--set", "train_limit=100",
            env=env)
    assert r.returncode == 0, r.stderr
    r = run("evaluate", tmp_path / "nosplit" / "checkpoint.pt", "--split", "valid", env=env)
    assert r.returncode == 2 and "held out no validation images" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_note_given_at_training_is_recorded_with_the_run(tmp_path, env, monkeypatch):
    """`train --note TEXT` keeps TEXT in the config's notes (and on --resume without --note);
    `results` writes it to results/<name>/about.json, keeping what that file said already."""
    from vae_tutorial import cli, report
    from vae_tutorial import train as train_module

    for name in (runtime.DATA_ENV, runtime.ALLOW_PARTIAL_ENV, runtime.FAST_ENV):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setattr(runtime, "results_dir", lambda: tmp_path / "results")
    monkeypatch.setattr(report, "write_all", lambda checkout, results: [])  # not the README
    out, note = tmp_path / "run", "batch 16 instead of 32"
    assert cli.main(["train", "--out", str(out), "--epochs", "1", "--set", "train_limit=64",
                     "--note", note]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["config"]["notes"] == {
        "about": note}
    assert cli.main(["evaluate", str(out / "checkpoint.pt"), "-k", "0", "--limit", "8",
                     "--json", str(out / "eval.json")]) == 0
    dest = tmp_path / "results" / "noted"
    dest.mkdir(parents=True)
    (dest / "about.json").write_text(json.dumps({"about": "old words", "tried": 3}))
    assert cli.main(["results", "--run", str(out), "--name", "noted"]) == 0
    assert json.loads((dest / "about.json").read_text()) == {"about": note, "tried": 3}
    assert cli.main(["results", "--run", str(out), "--name", "fresh"]) == 0
    assert json.loads((tmp_path / "results" / "fresh" / "about.json").read_text()) == {
        "about": note}
    seen = []
    monkeypatch.setattr(train_module, "train", lambda cfg, resume: seen.append(cfg) or [])
    assert cli.main(["train", "--out", str(out), "--resume"]) == 0
    assert cli.main(["train", "--out", str(out), "--resume", "--note", "new words"]) == 0
    assert [cfg.notes for cfg in seen] == [{"about": note}, {"about": "new words"}]
