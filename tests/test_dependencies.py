"""Lean installs: every import is declared, and art_fisher needs none of the ``lease`` extra (NNI)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"art_fisher", "nni_lease", "tests"}
#: What the ``lease`` extra brings and art_fisher must never import.
NNI_MODULES = {"nni", "nni_node", "pytorch_lightning", "lightning_fabric", "lightning", "torchmetrics"}
#: Import names of the ``bench`` extra, which CI does not install (so their metadata may be absent).
BENCH_IMPORTS = {"backpack": "backpack-for-pytorch", "opacus": "opacus"}


def _declared(*extras: str) -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in meta["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in meta["optional-dependencies"][extra]]
    return {canonicalize_name(r.name) for r in reqs}


def _third_party_imports(folder: str) -> dict[str, set[str]]:
    """Top-level module -> files of ``folder`` that import it (every import, also inside functions)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize(
    ("folder", "extras"),
    [
        ("art_fisher", ()),
        # Import names map to distributions through the installed metadata: the lease extra's (PyYAML's
        # "yaml") are only known where that extra is installed.
        pytest.param("nni_lease", ("lease",), marks=pytest.mark.needs_nni),
        pytest.param("tests", ("lease", "test", "bench"), marks=pytest.mark.needs_nni),
        pytest.param("examples", ("lease",), marks=pytest.mark.needs_nni),
    ],
)
def test_every_third_party_import_is_declared(folder, extras):
    declared = _declared(*extras)
    dists = packages_distributions()
    undeclared = {}
    for module, files in _third_party_imports(folder).items():
        names = dists.get(module) or [BENCH_IMPORTS.get(module, module)]
        if not any(canonicalize_name(d) in declared for d in names):
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported by {folder} but not declared in pyproject ({extras or 'base'}): {undeclared}"


def _closure(names: set[str]) -> set[str]:
    """The installed distributions that ``names`` need, following their base requirements only."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        for line in reqs:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_base_requirements_do_not_pull_in_nni():
    needed = _closure(_declared() - {"art-fisher-lease"})
    assert not needed & {"nni", "pytorch-lightning", "lightning", "torchmetrics"}, sorted(needed)


# Run in a fresh interpreter where NNI and Lightning cannot be imported, as after `pip install art-fisher-lease`.
_WITHOUT_NNI = textwrap.dedent(
    f"""
    import importlib.abc, sys

    class _NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {sorted(NNI_MODULES)!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, _NotInstalled())
    """
)


def _run_without_nni(code: str, *, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_NNI + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def test_art_fisher_imports_without_nni_and_nni_lease_names_the_extra():
    proc = _run_without_nni(
        """
        import importlib, json, pkgutil
        import art_fisher

        walk = pkgutil.walk_packages(art_fisher.__path__, "art_fisher.")
        modules = sorted(m.name for m in walk if not m.name.endswith(".__main__"))
        for name in modules:
            importlib.import_module(name)
        import nni_lease  # importable, so that nni-lease can say what is missing

        messages = []
        for name in ("LeaSE", "nni_lease.oneshot", "nni_lease.multitrial", "nni_lease.runtime"):
            try:
                getattr(nni_lease, name) if "." not in name else importlib.import_module(name)
            except ImportError as exc:
                messages.append(str(exc))
        print(json.dumps({"modules": modules, "nni_lease": messages}))
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert "art_fisher.evaluation._workflow" in out["modules"] and "art_fisher.cli" in out["modules"]
    assert len(out["nni_lease"]) == 4
    for message in out["nni_lease"]:
        assert 'pip install "art-fisher-lease[lease]"' in message and "\n" not in message


@pytest.mark.parametrize("argv", [["--help"], ["search", "--epochs", "1"]])
def test_nni_lease_command_without_nni_prints_one_line(argv):
    proc = _run_without_nni(f"from nni_lease.cli import main\nsys.exit(main({argv!r}))", timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("nni-lease: error: nni_lease needs Microsoft NNI 3.0")
    assert 'pip install "art-fisher-lease[lease]"' in lines[0]


def test_nni_lease_on_a_newer_python_says_so_in_one_line():
    proc = _run_without_nni(
        """
        sys.version_info = (3, 13, 0, "final", 0)
        import nni_lease

        try:
            nni_lease.LeaSE
        except ImportError as exc:
            print(exc)
        """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = proc.stdout.splitlines()
    assert "supports on Python 3.11 only (this is Python 3.13.0" in line


@pytest.mark.slow
def test_art_fisher_evaluate_runs_without_nni(tmp_path):
    proc = _run_without_nni(
        f"""
        from art_fisher.cli import main
        sys.exit(main(["evaluate", "--attacks", "fgsm", "--detectors", "fisher_trace,max_softmax",
                       "--n-samples", "16", "--epochs", "1", "--output", {str(tmp_path / "out")!r}, "--quiet"]))
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "report.md").is_file()
