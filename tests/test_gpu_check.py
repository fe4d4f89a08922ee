"""`gpu-check`, tested on the CPU: the budget split, the refusal without CUDA, the sizing of the
evaluation, interruption, and a dry run of the whole pipeline that `report` then reads."""

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from vae_tutorial import cli, gpu_check, report, runtime
from vae_tutorial.gpu_check import DRY, GPU, BudgetError, plan_evaluation, sanitize, split_budget

REPO = Path(__file__).resolve().parent.parent
PHASES = ["train conv", "evaluate conv", "train hvae", "evaluate hvae", "bench"]
# What a short-lived GPU machine lacks: importing any of these there would fail.
ABSENT = ("jupyter", "jupyter_client", "jupyter_core", "jupyterlab", "nbformat", "nbval",
          "nbconvert", "ipywidgets", "IPython", "ipykernel", "pytest", "hypothesis", "markdown_it")
BLOCKER = f"""import sys
for name in {ABSENT!r}:  # absent, as on a GPU machine: importing one fails, find_spec says None
    sys.modules[name] = None
"""


@pytest.fixture
def machine_without_notebooks(tmp_path):
    """The environment of a process (and its children) that cannot import the notebook tools."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


@pytest.mark.parametrize("minutes", [4, 5, 8, 10, 60])
def test_the_split_fits_the_budget_and_every_phase_gets_its_minimum(minutes):
    split = split_budget(minutes)
    assert list(split) == PHASES
    reserve = max(GPU.reserve[0], GPU.reserve[1] * 60 * minutes)
    assert sum(split.values()) == pytest.approx(60 * minutes - reserve)
    assert sum(split.values()) <= 60 * minutes
    for p in GPU.phases:
        assert split[p.name] >= p.minimum > 0
        # in proportion to the weights
        assert split[p.name] / split["bench"] == pytest.approx(p.weight / GPU.phases[-1].weight)


def test_the_default_budget_fits_one_10_minute_command_with_room():
    args = cli.build_parser().parse_args(["gpu-check"])
    assert args.minutes == 8
    split = split_budget(args.minutes)
    assert sum(split.values()) + max(GPU.reserve[0], 0.06 * 480) == pytest.approx(480)
    assert 60 * args.minutes <= 600 - 60  # a minute to spare beyond the budget's own reserve


def test_a_budget_too_small_is_refused_with_the_least_that_fits():
    with pytest.raises(BudgetError, match=r"--minutes 2 is too short: .* at least --minutes"):
        split_budget(2)
    need = float(re.search(r"at least --minutes ([\d.]+)",
                           str(pytest.raises(BudgetError, split_budget, 2).value)).group(1))
    split_budget(need)  # the least budget it names fits
    with pytest.raises(BudgetError):
        split_budget(need - 0.1)  # and is the least, to a tenth of a minute
    with pytest.raises(BudgetError):
        split_budget(0.05, DRY)


def test_the_evaluation_keeps_k_and_images_while_they_fit():
    # 100 images/s at k=100: 1,017 images take 10.2 s
    assert plan_evaluation(100.0, 1017, 100, 60.0) == (100, 1017)
    # a third of the time: fewer samples, every image; the time goes as k + 1
    k, n = plan_evaluation(100.0, 1017, 100, 4.0)
    assert n == 1017 and 1 <= k < 100
    assert n / 100.0 * (k + 1) / 101 <= 4.0 * gpu_check.SAFETY
    assert n / 100.0 * (k + 2) / 101 > 4.0 * gpu_check.SAFETY  # and no fewer than needed
    # below one sample per image: k=1 on the images that fit
    k, n = plan_evaluation(100.0, 1017, 100, 0.1)
    assert k == 1 and 1 <= n < 1017 and n / 100.0 * 2 / 101 <= 0.1 * gpu_check.SAFETY


def test_a_run_stopped_inside_the_kl_warm_up_says_so():
    run = {"epochs": 3, "beta": 1.0}
    assert gpu_check.warmup_note({**run, "final_kl_weight": 1.0}) is None
    assert gpu_check.warmup_note({**run, "final_kl_weight": None}) is None  # no epoch
    note = gpu_check.warmup_note({**run, "final_kl_weight": 0.3})
    assert "KL weight 0.30 of 1" in note and "after 3 epochs" in note
    assert gpu_check.warmup_note({**run, "beta": 0.5, "final_kl_weight": 0.5}) is None


@pytest.mark.parametrize("name,folder", [
    ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"),
    ("NVIDIA GeForce RTX 4090", "nvidia-geforce-rtx-4090"),
    ("Tesla V100-SXM2-16GB", "tesla-v100-sxm2-16gb"),
    (" ../AMD  Instinct(TM) MI300X/ ", "amd-instinct-tm-mi300x"),
    ("", "unknown"),
])
def test_device_names_become_folder_names(name, folder):
    assert sanitize(name) == folder
    assert cli.folder_name(f"gpu-{folder}") == f"gpu-{folder}"  # what `results --name` takes


def test_without_cuda_it_refuses_in_one_line_and_writes_nothing(tmp_path, subset_root):
    before = sorted(p.name for p in (REPO / "results").iterdir())
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", **{runtime.DATA_ENV: str(subset_root),
                                                       runtime.ALLOW_PARTIAL_ENV: "1"})
    r = subprocess.run([sys.executable, "-m", "vae_tutorial", "gpu-check", "--results", tmp_path],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "CUDA" in lines[0] and "--allow-cpu" in lines[0] and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in (REPO / "results").iterdir()) == before


def test_it_imports_nothing_a_gpu_machine_lacks(machine_without_notebooks):
    code = ("import vae_tutorial.cli, vae_tutorial.gpu_check, vae_tutorial.report, "
            "vae_tutorial.train\n"
            "try:\n    import nbformat\nexcept ModuleNotFoundError:\n    print('blocked')\n"
            "vae_tutorial.cli.main(['gpu-check', '--help'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, **machine_without_notebooks), timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("blocked\n")  # the blocker works
    assert "vae_tutorial gpu-check" in r.stdout and "--allow-cpu" in r.stdout


def test_an_interruption_keeps_the_finished_phases(tmp_path, subset_root, monkeypatch, capsys):
    """Ctrl-C in the second training: the first run's files and the manifest stay, complete."""
    def train(kind, *args):
        if kind == "hvae":
            raise KeyboardInterrupt
        return SimpleNamespace(history=[{"epoch": 1}], model=None), {"model": kind}

    def evaluate(model, images, test_root, device, seconds):
        return {"images": len(images), "note": None}

    def bench(bench_args, roots, device, seconds, scratch, out):
        gpu_check.write_json(out / "bench.json", {"rows": []})
        return "done", None

    monkeypatch.setattr(gpu_check, "train_run", train)
    monkeypatch.setattr(gpu_check, "evaluate_run", evaluate)
    monkeypatch.setattr(gpu_check, "run_bench", bench)
    args = argparse.Namespace(minutes=1.0, data=subset_root, train_data=None, allow_partial=True,
                              results=tmp_path, fresh=False, allow_cpu=True)
    assert gpu_check.run_check(args) == 130
    (folder,) = tmp_path.iterdir()
    manifest = json.loads((folder / "gpu-check.json").read_text())
    assert [(p["name"], p["status"]) for p in manifest["phases"]] == [
        ("train conv", "done"), ("evaluate conv", "done"), ("train hvae", "interrupted")]
    assert not manifest["finished"] and manifest["runs"] == [{"model": "conv"}]
    assert json.loads((folder / "conv-fast" / "history.json").read_text()) == [{"epoch": 1}]
    assert json.loads((folder / "conv-fast" / "eval.json").read_text())["images"] == 1017
    assert "interrupted" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--fresh"):  # an earlier check is not overwritten
        gpu_check.run_check(args)
    monkeypatch.setattr(gpu_check, "train_run", lambda *a: (_ for _ in ()).throw(OSError("x")))
    args.fresh = True
    assert gpu_check.run_check(args) == 1  # phases that fail are reported, the rest still run
    manifest = json.loads((folder / "gpu-check.json").read_text())
    assert [p["status"] for p in manifest["phases"]] == [
        "failed", "skipped", "failed", "skipped", "done"]
    assert manifest["finished"] and manifest["phases"][0]["note"] == "OSError: x"
    assert sorted(f.name for f in folder.iterdir()) == ["bench.json", "gpu-check.json"]


def test_the_bench_runs_in_its_own_process_killed_at_its_time(tmp_path, subset_root):
    """run_bench with a quick bench (the input pipelines alone): cut at once, then in time."""
    roots = {"train": str(subset_root), "test": str(subset_root), "allow_partial": True}
    quick = ("--loading-only", "--repeats", "1", "--batch-size", "1000")
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    scratch.mkdir()
    status, note = gpu_check.run_bench(quick, roots, "cpu", 0.01, scratch, out)
    assert status == "timed out" and "killed" in note and not out.exists()
    assert gpu_check.run_bench(quick, roots, "cpu", 600, scratch, out) == ("done", None)
    bench = json.loads((out / "bench.json").read_text())
    argv = shlex.split(bench["command"])
    assert argv[:3] == ["python", "-m", "vae_tutorial"] and argv[3:13] == [
        "bench", "--device", "cpu", *quick, "--allow-partial", "--data"]
    assert Path(argv[13]).resolve() == subset_root.resolve()
    assert argv[-2] == "--json" and Path(argv[-1]).resolve() == out / "bench.json"
    assert [r["name"] for r in bench["rows"]] == [
        "seed pipeline: DataLoader + ToTensor, batches only", "project: CifarLoader, batches only"]
    assert sorted(f.name for f in out.iterdir()) == ["bench.json"]  # no temporary file left


def _cpu_name() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    m = re.search(r"^model name\s*:(.*)$", text, re.M)
    return m.group(1).strip() if m else (platform.processor() or platform.machine())


def test_a_dry_run_on_the_cpu_writes_what_report_reads(tmp_path, subset_root,
                                                       machine_without_notebooks):
    """The whole pipeline at the fast preset's sizes, in a one-minute budget, on a machine
    without the notebook tools. A phase that the clock cut (a busy machine) must say so and
    leave no file; every finished phase must have written its files, complete."""
    env = dict(os.environ, **machine_without_notebooks, **{
        runtime.DATA_ENV: str(subset_root), runtime.ALLOW_PARTIAL_ENV: "1",
        runtime.FAST_ENV: "1"})
    results = tmp_path / "results"
    results.mkdir()
    r = subprocess.run([sys.executable, "-m", "vae_tutorial", "gpu-check", "--allow-cpu",
                        "--minutes", "1", "--results", results],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    check_dry_run(results, 1, r.stdout, r.returncode)


def check_dry_run(results: Path, minutes: float, stdout: str, returncode: int) -> None:
    """What a dry run must have left in `results`, whatever the clock let it finish."""
    (folder,) = results.iterdir()
    assert folder.name == "dry-run-cpu-" + sanitize(_cpu_name())
    assert re.fullmatch(r"dry-run-cpu-[a-z0-9]+(-[a-z0-9]+)*", folder.name)

    manifest = json.loads((folder / "gpu-check.json").read_text())
    assert manifest["dry_run"] and manifest["finished"] and manifest["device"] == "cpu"
    assert manifest["command"].startswith(
        f"python -m vae_tutorial gpu-check --minutes {minutes:g} ")
    assert sum(manifest["plan"].values()) <= 60 * minutes and list(manifest["plan"]) == PHASES
    assert [p["name"] for p in manifest["phases"]] == PHASES
    done = {p["name"] for p in manifest["phases"] if p["status"] == "done"}
    assert returncode == (0 if len(done) == 5 else 1)
    for p in manifest["phases"]:
        assert p["status"] in ("done", "timed out", "failed", "skipped"), p
        assert p["seconds"] >= 0 and p["planned_seconds"] >= 0
        assert (p["status"] == "done") == bool(p["files"]) and (
            p["status"] == "done" or p["note"])
        assert f"gpu-check: {p['name']}: {p['status']}" in stdout  # a progress line each
    written = sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file())
    assert written == sorted(["gpu-check.json"] + [f for p in manifest["phases"]
                                                   for f in p["files"]])

    if "bench" in done:
        bench = json.loads((folder / "bench.json").read_text())
        assert bench["command"].startswith("python -m vae_tutorial bench --device cpu")
        assert bench["rows"][0]["name"].startswith("seed pipeline") and all(
            row["median"] > 0 for row in bench["rows"])
    for kind in ("conv", "hvae"):
        if f"train {kind}" in done:
            history = json.loads((folder / f"{kind}-fast" / "history.json").read_text())
            assert history[0]["epoch"] == 1 and history[-1]["seconds"] > 0
            (run,) = [r for r in manifest["runs"] if r["model"] == kind]
            assert run["folder"] == f"{kind}-fast" and run["preset"] == "fast"
            assert run["parameters"] > 0 and run["epochs"] == len(history)
            assert run["training_data"].startswith("cifar10-subset: 512 images")
            assert run["final_kl_weight"] == history[-1]["kl_weight"] and run["beta"] == 1.0
            (phase,) = [p for p in manifest["phases"] if p["name"] == f"train {kind}"]
            inside = run["final_kl_weight"] < 1.0  # the clock ended it inside the KL warm-up
            assert ("KL warm-up" in (phase["note"] or "")) == inside
        if f"evaluate {kind}" in done:
            ev = json.loads((folder / f"{kind}-fast" / "eval.json").read_text())
            assert ev["data"] == "cifar10-subset" and ev["split"] == "test"
            assert ev["requested_samples"] == 100 and ev["requested_images"] == 1017
            assert 1 <= ev["num_samples"] <= 100 and 1 <= ev["images"] <= 1017
            cut = ev["num_samples"] < 100 or ev["images"] < 1017
            assert bool(ev["note"]) == cut  # a cut evaluation says why
            assert ev["iwae_bits_per_dim"] <= ev["bits_per_dim"] + 5 * ev["bits_per_dim_se"]

    # report reads the folder as any run: a training row per evaluated run, the phases, bench
    ((where, check),) = report.gpu_checks(results)
    assert where == folder and check == manifest
    rows = report.training_table(results).splitlines()
    evaluated = [k for k in ("conv", "hvae") if f"evaluate {k}" in done]
    assert len(rows) == 2 + len(evaluated) and ("unless named" in rows[0]) == bool(evaluated)
    for row, kind in zip(rows[2:], evaluated):
        ev = json.loads((folder / f"{kind}-fast" / "eval.json").read_text())
        assert "(CPU dry run)" in row and f"{ev['bits_per_dim']:.3f} bits/dim" in row
    block = report.gpu_table(results)
    assert manifest["command"] in block
    assert all(f"| {p} |" in block for p in PHASES)
    assert ("training images/s" in block) == ("bench" in done)


def test_without_a_check_the_gpu_block_says_so(tmp_path):
    assert report.gpu_checks(tmp_path) == []
    assert "No GPU has run `gpu-check` yet" in report.gpu_table(tmp_path)
