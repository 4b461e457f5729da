"""The installed environment is the one ``pyproject.toml`` promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(*extras: str) -> dict[str, Requirement]:
    """The base requirements and those of ``extras``, by canonical distribution name."""
    meta = _project()
    reqs = [Requirement(r) for r in meta["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in meta["optional-dependencies"][extra]]
    return {canonicalize_name(r.name): r for r in reqs}


def test_packages_import():
    import art_fisher
    import nni_lease

    assert art_fisher.__version__ == nni_lease.__version__


@pytest.mark.parametrize(
    "dist",
    [
        "torch",
        pytest.param("nni", marks=pytest.mark.needs_nni),
        "adversarial-robustness-toolbox",
        "scikit-learn",
        pytest.param("pytorch-lightning", marks=pytest.mark.needs_nni),
    ],
)
def test_installed_versions_match_pyproject(dist):
    req = _requirements("lease")[dist]
    installed = version(dist)
    assert req.specifier.contains(installed, prereleases=True), f"{dist} {installed} does not satisfy pyproject's {req}"


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            pins[canonicalize_name(name)] = pinned
    return pins


def test_constraints_pin_every_requirement_within_its_range():
    pins = _constraints()
    for name, req in _requirements("lease", "test", "lint").items():
        if name == "art-fisher-lease":
            continue
        assert name in pins, f".ci/constraints.txt does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"


@pytest.mark.skipif(
    Path(os.environ.get("PIP_CONSTRAINT", "/nonexistent")).resolve() != (ROOT / ".ci" / "constraints.txt").resolve(),
    reason="installed through .ci/constraints.txt only in CI (PIP_CONSTRAINT)",
)
@pytest.mark.parametrize(
    "dist",
    [
        "torch",
        pytest.param("nni", marks=pytest.mark.needs_nni),
        "adversarial-robustness-toolbox",
        "scikit-learn",
        "numpy",
    ],
)
def test_ci_installs_the_constrained_versions(dist):
    # A local label (torch's +cpu) is allowed, a different release is not.
    assert version(dist).split("+")[0] == _constraints()[canonicalize_name(dist)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "subcommands"),
    [("art_fisher", ["evaluate"]), pytest.param("nni_lease", ["search", "retrain"], marks=pytest.mark.needs_nni)],
)
def test_cli_help_lists_subcommands(module, subcommands):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True).stdout
    for name in subcommands:
        assert name in out


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert match, "README.md must mark its test command with <!-- test-command -->"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci  # .ci/run extracts and runs that very block


@pytest.mark.parametrize("module", ["art_fisher", pytest.param("nni_lease", marks=pytest.mark.needs_nni)])
def test_every_public_name_resolves(module):
    import importlib

    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"
