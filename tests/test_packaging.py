"""The packaging files agree with each other and with the README."""

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parent.parent
CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge names that differ from PyPI's


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement.strip(), maxsplit=1)[0].lower()


def pyproject_packages() -> set[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + [r for extra in meta["optional-dependencies"].values()
                                   for r in extra]
    return {_name(r) for r in reqs}


def conda_packages() -> set[str]:
    names = set()
    text = (REPO / "environment.yml").read_text()
    for line in text.split("\ndependencies:", 1)[1].splitlines():
        m = re.match(r"^  - ([A-Za-z0-9_.-]+)", line)  # conda-forge packages
        if m and m.group(1) not in ("python", "pip"):
            names.add(CONDA_TO_PIP.get(_name(m.group(1)), _name(m.group(1))))
        m = re.match(r"^      - ([A-Za-z0-9_][A-Za-z0-9_.-]*)", line)  # PyPI-only, under pip:
        if m:
            names.add(_name(m.group(1)))
    return names


def test_environment_yml_names_the_same_packages_as_pyproject():
    assert conda_packages() == pyproject_packages()


def test_torch_is_a_range_not_a_pin():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch_req = next(r for r in meta["dependencies"] if _name(r) == "torch")
    assert ">=" in torch_req and "==" not in torch_req


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme
    assert ci.strip().splitlines()[-1] == "make test"
    for var in ("VAE_TUTORIAL_DATA=../shared/data/cifar10-subset",
                "VAE_TUTORIAL_ALLOW_PARTIAL=1", "VAE_TUTORIAL_FAST=1"):
        assert f"export {var}" in ci
