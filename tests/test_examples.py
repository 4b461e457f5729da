"""One smoke test per example in ``examples/``: each script runs to the end at a tiny size.

The ``.yml`` files there are configurations the scripts and the tests of :mod:`nni_lease.runtime` read
(``tests/nni_lease/test_hpo.py``, ``test_experiment.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _run(script: str, *args: str, home: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "HOME": str(home),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=home,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_every_python_example_has_a_smoke_test():
    tested = {"detector_in_art_workflow.py", "evaluate_digits.py", "lease_oneshot_digits.py", "hpo_experiment.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@pytest.mark.slow
def test_detector_in_art_workflow(tmp_path):
    proc = _run("detector_in_art_workflow.py", "--smoke", "--plot", str(tmp_path / "maps.png"), home=tmp_path)
    assert "identical decisions" in proc.stdout and "held-out ROC-AUC" in proc.stdout
    assert (tmp_path / "maps.png").stat().st_size > 0


@pytest.mark.slow
def test_evaluate_digits(tmp_path):
    proc = _run("evaluate_digits.py", "--smoke", "--output", str(tmp_path / "out"), home=tmp_path)
    assert "fisher_combined fitted on FGSM, tested on PGD" in proc.stdout
    assert json.loads((tmp_path / "out" / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.needs_nni
def test_lease_oneshot_digits(tmp_path):
    proc = _run("lease_oneshot_digits.py", "--smoke", home=tmp_path)
    assert "exported architecture:" in proc.stdout and "retrained from scratch: test accuracy" in proc.stdout


@pytest.mark.needs_nni
def test_hpo_experiment_builds_its_experiment(tmp_path):
    proc = _run(
        "hpo_experiment.py", "--dry-run", "--max-trials", "2", "--experiment-dir", str(tmp_path / "exp"), home=tmp_path
    )
    config = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert config["maxTrialNumber"] == 2 and "nni_lease.runtime._hpo trial" in config["trialCommand"]
    assert not (tmp_path / "exp").exists() or not any((tmp_path / "exp").iterdir())  # nothing started
