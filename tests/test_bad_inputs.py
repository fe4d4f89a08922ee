"""Every bad input to `python -m vae_tutorial` is one clear line: a table of cases, built from
the parser and the config declarations themselves, so a new argument or field is covered the
day it is added.

Each case asserts: exit status 2, exactly one line on stderr, no traceback, the offending
name (argument, field or path) in that line, and no file of the workspace or of results/
changed (sha256 before and after). The cases run in-process (cli.main), a few through a real
subprocess too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

from vae_tutorial import cli, config, runtime
from vae_tutorial.train import train

REPO = Path(__file__).resolve().parent.parent
ABSURD = "1e12"


def _bad_numbers(kind, lo, hi, open_lo=False) -> list[str]:
    """0, -1, a word and an absurdly large value: those the declared range refuses."""
    values = ["abc"]
    for v in (0, -1, 1e12):
        inside = (v > lo if open_lo else v >= lo) and v <= hi
        if not inside:
            values.append(ABSURD if v == 1e12 else str(v))
    return values


def config_cases() -> list[tuple[str, str]]:
    """(field, bad value) for every --set field, from its declared type, range and choices."""
    cases = []
    for cls in (config.TrainConfig, config.ModelConfig):
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            if f.name in ("model", "notes"):
                continue
            types_, rng, choices = config._unpack(hints[f.name])
            if choices:
                cases.append((f.name, "nonsense"))
            elif typing.get_origin(types_[0]) is tuple:
                cases += [(f.name, "1,2"), (f.name, "a,b,c"), (f.name, "-1,2,2")]
            elif bool in types_:
                cases.append((f.name, "maybe"))
            elif int in types_ or float in types_:
                cases += [(f.name, v) for v in _bad_numbers(None, rng.lo, rng.hi, rng.open_lo)]
    return cases


def argument_cases() -> list[tuple[str, str, str]]:
    """(subcommand, option, bad value) for every numeric argument of every subcommand."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._actions[-1])))
    cases = []
    for name, p in sub.choices.items():
        for action in p._actions:
            kind = getattr(action.type, "kind", None)
            if kind is None or not action.option_strings:
                continue
            for value in _bad_numbers(kind, action.type.lo, action.type.hi,
                                      action.type.open_lo):
                cases.append((name, action.option_strings[-1], value))
    return cases


@pytest.fixture(scope="module")
def workspace(subset_root, tmp_path_factory):
    """A finished fast run (its checkpoint and history), and files that must never change."""
    ws = tmp_path_factory.mktemp("ws")
    cfg = config.preset("fast", data=str(subset_root), allow_partial=True, train_limit=128,
                        test_limit=32, batch_size=32, epochs=1, progress=False,
                        out_dir=str(ws / "run"), width=8, latent_dim=8)
    train(cfg)
    good = (ws / "run" / "checkpoint.pt").read_bytes()
    (ws / "empty.pt").write_bytes(b"")
    (ws / "random.pt").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                                 generator=torch.Generator().manual_seed(0))
                                   .numpy().tobytes())
    (ws / "truncated.pt").write_bytes(good[: len(good) // 3])
    torch.save({"conv1.weight": torch.ones(2)}, ws / "foreign.pt")  # someone else's weights
    (ws / "a_folder").mkdir()
    (ws / "eval.json").write_text('{"kept": true}')
    (ws / "other").mkdir()
    return ws


@pytest.fixture
def env(monkeypatch, subset_root, tmp_path):
    monkeypatch.setenv(runtime.DATA_ENV, str(subset_root))
    monkeypatch.setenv(runtime.ALLOW_PARTIAL_ENV, "1")
    monkeypatch.setenv(runtime.FAST_ENV, "1")
    monkeypatch.setenv(runtime.FIGURES_ENV, str(tmp_path / "figures"))


def _hashes(*folders: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def check_one_line_error(argv: list[str], offending: str, ws: Path, capsys) -> str:
    """Run the CLI in-process; assert the contract; return the error line."""
    before = _hashes(ws, REPO / "results")
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as stop:  # argparse exits by itself
        code = stop.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (argv, err)
    assert len(lines) == 1, (argv, err)
    assert "Traceback" not in err
    assert offending in lines[0], (argv, lines[0])
    assert _hashes(ws, REPO / "results") == before, argv  # nothing changed on disk
    return lines[0]


@pytest.mark.parametrize("field,value", config_cases())
def test_every_config_field_refuses_bad_values(field, value, workspace, env, capsys):
    check_one_line_error(["train", "--set", f"{field}={value}", "--out", workspace / "new"],
                         field, workspace, capsys)


@pytest.mark.parametrize("command,option,value", argument_cases())
def test_every_numeric_argument_refuses_bad_values(command, option, value, workspace, env,
                                                   capsys):
    ckpt = workspace / "run" / "checkpoint.pt"
    needs_ckpt = {"evaluate": [ckpt], "sample": [ckpt, "--out", workspace / "other" / "s.png"]}
    argv = [command, *needs_ckpt.get(command, []), option, value]
    check_one_line_error(argv, option, workspace, capsys)


CHECKPOINT_FILES = {  # a bad CHECKPOINT file -> words the one line must contain
    "missing.pt": "no checkpoint there",
    "a_folder": "is a folder",
    "empty.pt": "empty file",
    "random.pt": "not a PyTorch checkpoint",
    "truncated.pt": "truncated",
    "foreign.pt": "not a vae_tutorial checkpoint",
}


@pytest.mark.parametrize("command", ["evaluate", "sample", "export"])
@pytest.mark.parametrize("name", list(CHECKPOINT_FILES))
def test_bad_checkpoint_files(command, name, workspace, env, capsys):
    extra = {"evaluate": [], "sample": ["--out", workspace / "other" / "s.png"],
             "export": [workspace / "other" / "half.pt"]}[command]
    line = check_one_line_error([command, workspace / name, *extra], name, workspace, capsys)
    assert CHECKPOINT_FILES[name] in line
    assert "run code" not in line  # garbage is not mistaken for a malicious pickle


OUTPUTS = {  # subcommand -> argv with {out} where an output file goes
    "evaluate": ["evaluate", "{ckpt}", "-k", "0", "--json", "{out}"],
    "sample": ["sample", "{ckpt}", "--out", "{out}"],
    "export": ["export", "{ckpt}", "{out}"],
    "bench": ["bench", "--loading-only", "--json", "{out}"],
    "report": ["report", "--write", "{out}"],
}


@pytest.mark.parametrize("command", list(OUTPUTS))
@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_output_paths_that_cannot_be_written(command, where, workspace, env, capsys):
    out = workspace / "no" / "such" / "f.out" if where == "missing folder" else workspace / "other"
    argv = [a.format(ckpt=workspace / "run" / "checkpoint.pt", out=out)
            for a in OUTPUTS[command]]
    check_one_line_error(argv, str(out.parent) if where == "missing folder" else str(out),
                         workspace, capsys)


@pytest.mark.parametrize("option", ["--data", "--test-data"])
@pytest.mark.parametrize("target", ["missing", "empty.pt"])
def test_data_folders_that_are_not_folders(option, target, workspace, env, capsys):
    check_one_line_error(["train", option, workspace / target, "--out", workspace / "new"],
                         target, workspace, capsys)


def test_extra_data_that_does_not_exist(workspace, env, capsys):
    check_one_line_error(["train", "--set", f"extra_data={workspace / 'nowhere'}",
                          "--out", workspace / "new"], "nowhere", workspace, capsys)


def test_resuming_a_checkpoint_of_another_model(workspace, env, capsys):
    line = check_one_line_error(["train", "--model", "seed", "--out", workspace / "run",
                                 "--resume", "--set", "train_limit=128"],
                                "kind='conv' (this run: 'seed')", workspace, capsys)
    assert "--fresh" in line


def test_existing_run_is_never_overwritten_by_accident(workspace, env, capsys):
    check_one_line_error(["train", "--out", workspace / "run"], "--resume", workspace, capsys)


def test_unknown_field_and_preset(workspace, env, capsys):
    check_one_line_error(["train", "--set", "widht=3", "--out", workspace / "new"], "widht",
                         workspace, capsys)
    check_one_line_error(["train", "--preset", "tpu"], "tpu", workspace, capsys)
    check_one_line_error(["train", "--set", "width", "--out", workspace / "new"], "width",
                         workspace, capsys)


@pytest.mark.parametrize("name", ["../elsewhere", "a/b", "", ".."])
def test_results_name_is_one_folder_name(name, workspace, env, capsys):
    check_one_line_error(["results", "--name", name], "--name", workspace, capsys)


def test_the_table_is_large_and_counted():
    """The README's reliability paragraph quotes this count (pytest -q prints it too)."""
    n = len(config_cases()) + len(argument_cases())
    assert n > 100


@pytest.mark.parametrize("argv,offending", [
    (["sample", "{ws}/empty.pt"], "empty.pt"),
    (["sample", "{ws}/run/checkpoint.pt", "-n", "0"], "-n"),
    (["train", "--set", "latent_dim=0"], "latent_dim"),
    (["train", "--set", "beta=-1"], "beta"),
    (["export", "{ws}/empty.pt", "{ws}/other/x.pt"], "empty.pt"),
])
def test_the_reported_cases_through_a_real_process(argv, offending, workspace, subset_root):
    """The four cases the robustness issue found, as a user meets them: a real subprocess."""
    env = dict(os.environ, **{runtime.DATA_ENV: str(subset_root), runtime.ALLOW_PARTIAL_ENV: "1",
                              runtime.FAST_ENV: "1"})
    r = subprocess.run([sys.executable, "-m", "vae_tutorial",
                        *[a.format(ws=workspace) for a in argv]],
                       capture_output=True, text=True, env=env, timeout=300, cwd=workspace)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and offending in lines[0], r.stderr
    assert "Traceback" not in r.stderr
