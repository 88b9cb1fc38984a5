"""No import cycles anywhere in the project (module-level and function-level imports).

Every project ``.py`` file is parsed with ``ast`` (nothing is imported); each ``import`` /
``from ... import`` statement, wherever it sits, is an edge from its module to the project
module it names (and to that module's parent packages, whose ``__init__`` runs first).
Any strongly connected component with more than one module is a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Top-level folders (packages) and files that are project code.
PROJECT = ("core", "eval", "demo", "bench", "tests", "app.py")


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every project ``.py`` file under ``root``."""
    mods: dict[str, Path] = {}
    for top in PROJECT:
        base = root / top
        files = [base] if base.is_file() else sorted(base.rglob("*.py")) if base.is_dir() else []
        for f in files:
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = f
    return mods


def _targets(name: str, mods: dict[str, Path]) -> set[str]:
    """The project modules that importing ``name`` runs: it (or its nearest project
    ancestor) and every parent package."""
    parts = name.split(".")
    out = set()
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix in mods:
            out.add(prefix)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> project modules it imports anywhere in its file."""
    mods = project_modules(root)
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for a in node.names:
                    edges |= _targets(a.name, mods)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".") if package else []
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                edges |= _targets(stem, mods)
                for a in node.names:  # ``from pkg import module``
                    if f"{stem}.{a.name}" in mods:
                        edges |= _targets(f"{stem}.{a.name}", mods)
        edges.discard(mod)  # e.g. ``from . import x`` in a package's own ``__init__``
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with a cycle (Tarjan), each sorted; sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_project_has_no_import_cycles() -> None:
    graph = import_graph(ROOT)
    assert "core.data.preprocess" in graph and "eval.benchmark" in graph  # really scanned
    assert "core.data.landmarks" in graph["core.data.pose"]
    assert cycles(graph) == []


#: package -> project packages/modules it must not import (the pipeline runs one way:
#: data and raster -> model -> train -> synthesize; core never imports eval, demo, bench).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core.raster": ("core.data", "core.model", "core.train", "core.synthesize", "core.weights"),
    "core.data": ("core.model", "core.train", "core.raster", "core.synthesize"),
    "core.model": ("core.train", "core.synthesize"),
    "core.train": ("core.synthesize",),
    "core": ("eval", "demo", "bench", "tests", "app"),
    # eval/ by concern: metrics -> sync -> bench (the benchmark's parts) -> the benchmark CLI;
    # the studies may use all of them, nothing in eval/ uses a study.
    "eval.metrics": ("eval.sync", "eval.bench", "eval.benchmark", "eval.studies"),
    "eval.sync": ("eval.bench", "eval.benchmark", "eval.studies"),
    "eval.bench": ("eval.benchmark", "eval.studies"),
    "eval.benchmark": ("eval.studies",),
    "eval": ("demo", "bench", "tests", "app"),
}


def test_core_layers_import_one_way() -> None:
    graph = import_graph(ROOT)
    bad = []
    for mod, targets in graph.items():
        for pkg, banned in FORBIDDEN.items():
            if mod == pkg or mod.startswith(pkg + "."):
                bad += [(mod, t) for t in targets if any(t == b or t.startswith(b + ".") for b in banned)]
    assert bad == []


#: The packages of eval/, one concern each.
EVAL_PACKAGES = ("metrics", "sync", "bench", "studies")


def test_eval_is_split_by_concern() -> None:
    """eval/ holds its four packages and at most six modules beside them; every eval module
    lives in one of them or is the benchmark's entry point."""
    top = sorted(f.name for f in (ROOT / "eval").glob("*.py"))
    assert len(top) <= 6 and "benchmark.py" in top, top
    for pkg in EVAL_PACKAGES:
        assert (ROOT / "eval" / pkg / "__init__.py").is_file(), pkg
    graph = import_graph(ROOT)
    loose = [m for m in graph if m.startswith("eval.") and m.count(".") == 1
             and m.split(".")[1] not in EVAL_PACKAGES]
    assert loose == ["eval.benchmark"]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        f = root / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)


@pytest.mark.parametrize(("files", "expected"), [
    # a function-level import closing a cycle counts
    ({"core/__init__.py": "", "core/a.py": "from core.b import x\n",
      "core/b.py": "def f():\n    from core import a\n"}, [["core.a", "core.b"]]),
    # relative imports, three modules
    ({"eval/__init__.py": "", "eval/a.py": "from .b import y\n", "eval/b.py": "from . import c\n",
      "eval/c.py": "import eval.a\n"}, [["eval.a", "eval.b", "eval.c"]]),
    # a package __init__ that imports a submodule importing the package back
    ({"core/__init__.py": "", "core/data/__init__.py": "from core.data.m import z\n",
      "core/data/m.py": "import core.data\n", "core/x.py": "from core.data import m\n"},
     [["core.data", "core.data.m"]]),
    # no cycle: a chain and a shared leaf
    ({"core/__init__.py": "", "core/a.py": "import core.b\nimport core.c\n",
      "core/b.py": "from core.c import q\n", "core/c.py": "import os\n"}, []),
])
def test_cycle_finder_on_small_projects(tmp_path: Path, files: dict[str, str],
                                        expected: list[list[str]]) -> None:
    _write(tmp_path, files)
    assert cycles(import_graph(tmp_path)) == expected


def _cli_modules() -> list[str]:
    """Every eval module with a ``python -m`` entry point (``if __name__ == "__main__"``)."""
    mods = project_modules(ROOT)
    return sorted(m for m, f in mods.items()
                  if m.startswith("eval.") and 'if __name__ == "__main__"' in f.read_text())


def test_every_eval_cli_is_found() -> None:
    assert {"eval.benchmark", "eval.sync.train_expert", "eval.studies.readout_cv",
            "eval.studies.band_floor", "eval.studies.pose_share", "eval.studies.talk_motion",
            "eval.studies.jawline", "eval.studies.mouth_crops",
            "eval.studies.drive_spread"} <= set(_cli_modules())


@pytest.mark.parametrize("module", _cli_modules())
def test_eval_cli_answers_help(module: str, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m MODULE --help`` prints its usage under the name the docs use and exits 0."""
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    assert exit_.value.code in (0, None)
    assert f"usage: python -m {module}" in capsys.readouterr().out
