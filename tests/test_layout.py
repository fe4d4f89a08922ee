"""The package stays easy to hold in mind: the README's layout table lists every module, no
module imports one that depends on it (no import cycle, even inside a function), no module is over
MAX_LINES lines, and every subpackage is packaged."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "vae_tutorial"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package ("vae_tutorial.exercises" is the
    subpackage's __init__.py)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its file (function bodies too)."""
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:  # relative: from the package `level - 1` steps above this one
                parent = here[:len(here) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            subs = {f"{base}.{a.name}" for a in node.names} & modules.keys()
            found |= subs or ({base} & modules.keys())
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names} & modules.keys()
    return found - {name}


def test_the_readme_layout_table_lists_every_module():
    """Every module (vae_tutorial/x.py) and subpackage (vae_tutorial/x/) has a row, and every
    row names one that exists; the package's own __init__.py and __main__.py need none."""
    readme = (REPO / "README.md").read_text()
    table = readme.split("\n## Layout\n", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"^\| \[`(vae_tutorial/[^`]+)`\]", table, re.M))
    wanted = {f"vae_tutorial/{p.name}" for p in PACKAGE.glob("*.py")
              if p.name not in ("__init__.py", "__main__.py")}
    wanted |= {f"vae_tutorial/{p.parent.name}/" for p in PACKAGE.glob("*/__init__.py")}
    assert listed == wanted, (f"missing: {sorted(wanted - listed)}, "
                              f"no such module: {sorted(listed - wanted)}")


def test_no_import_cycle():
    """No module imports, directly or through others, a module that imports it back."""
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for dep in graph[todo.pop()] - seen:
                seen.add(dep)
                todo.append(dep)
        assert start not in seen, f"{start} imports itself through {sorted(seen)}"


def test_the_import_graph_sees_imports_inside_functions(tmp_path):
    """The check above would find a cycle hidden in a function (as runtime <-> precision once
    was): relative imports at any depth are resolved, inside functions too."""
    modules = {"vae_tutorial.runtime": None, "vae_tutorial.precision": None,
               "vae_tutorial.exercises.verdict": None}
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from . import precision\n    from .runtime import x\n")
    assert _imports("vae_tutorial.m", source, modules) == {"vae_tutorial.precision",
                                                           "vae_tutorial.runtime"}
    source.write_text("from .verdict import Result\nfrom .. import runtime\n")
    assert _imports("vae_tutorial.exercises.m", source, modules) == {
        "vae_tutorial.exercises.verdict", "vae_tutorial.runtime"}


def test_figures_do_not_import_the_trainer():
    """plots.py draws what it is given: it reads histories, never the training loop."""
    modules = _modules()
    assert "vae_tutorial.train" not in _imports("vae_tutorial.plots",
                                                modules["vae_tutorial.plots"], modules)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_no_module_is_over_the_line_limit(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(REPO)}: {lines} lines (split it by topic)"


def test_every_subpackage_is_packaged():
    """pyproject.toml lists the package and each of its subpackages (else a wheel lacks them)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]
    found = {".".join(p.parent.relative_to(REPO).parts) for p in PACKAGE.rglob("__init__.py")}
    assert set(packages) == found
