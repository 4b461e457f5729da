"""The installed environment is the one ``pyproject.toml`` promises."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in meta["dependencies"]]
    return {r.name: r for r in reqs}


def test_packages_import():
    import art_fisher
    import nni_lease

    assert art_fisher.__version__ == nni_lease.__version__


@pytest.mark.parametrize(
    "dist", ["torch", "nni", "adversarial-robustness-toolbox", "scikit-learn", "pytorch-lightning"]
)
def test_installed_versions_match_pyproject(dist):
    req = _requirements()[dist]
    installed = version(dist)
    assert req.specifier.contains(installed, prereleases=True), (
        f"{dist} {installed} does not satisfy pyproject's {req}"
    )


def test_torch_is_the_cpu_build_or_matches_pin():
    import torch

    # The pin is exact; a local label (+cpu) is allowed, a different release is not.
    assert torch.__version__.split("+")[0] == "2.13.0"


@pytest.mark.parametrize(
    ("module", "subcommands"),
    [("art_fisher", ["evaluate"]), ("nni_lease", ["search", "retrain"])],
)
def test_cli_help_lists_subcommands(module, subcommands):
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in subcommands:
        assert name in out


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert match, "README.md must mark its test command with <!-- test-command -->"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci  # .ci/run extracts and runs that very block


@pytest.mark.parametrize("module", ["art_fisher", "nni_lease"])
def test_every_public_name_resolves(module):
    import importlib

    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"
