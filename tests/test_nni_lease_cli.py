"""``nni-lease search --mode oneshot`` and ``nni-lease retrain`` end to end, and their error paths."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from nni_lease.cli import SEARCH_MODES, main
from nni_lease.strategy import METRICS


def _run_cli(args, home):
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nni_lease", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.slow
def test_search_export_retrain_on_digits(tmp_path, capsys):
    out = tmp_path / "search"
    proc = _run_cli(["search", "--mode", "oneshot", "--output", str(out), "--epochs", "2", "--limit", "96",
                     "--limit-batches", "3", "--batch-size", "32", "--width", "4"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "architecture.json").read_text())
    assert sorted(record["architecture"]) == ["input1", "op0", "op1"]
    assert record["space"]["kwargs"]["in_channels"] == 1 and record["strategy"]["gamma"] == 1.0
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for row in rows:
        for name in METRICS:
            assert math.isfinite(float(row[name])), (name, row)
    assert (out / "curves.png").stat().st_size > 10_000
    assert "architecture:" in proc.stdout

    assert main(["retrain", str(out / "architecture.json"), "--epochs", "2"]) == 0  # in-process: no NNI state
    result = json.loads((out / "retrain.json").read_text())
    assert result["architecture"] == record["architecture"]
    assert 0.0 <= result["test_accuracy"] <= 1.0 and result["n_parameters"] > 0
    assert "test accuracy" in capsys.readouterr().out


def test_bad_gamma_fails_before_any_training(tmp_path, capsys):
    out = tmp_path / "search"
    assert main(["search", "--output", str(out), "--gamma", "-1", "--limit", "20"]) == 2
    assert "gamma must be a finite number >= 0" in capsys.readouterr().err
    assert not (out / "architecture.json").exists() and not (out / "lightning_logs").exists()


def test_retrain_rejects_missing_or_foreign_files(tmp_path, capsys):
    assert main(["retrain", str(tmp_path / "missing.json")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    assert main(["retrain", str(tmp_path / "other.json")]) == 2
    assert "is not an architecture written by" in capsys.readouterr().err


def test_search_modes_registry_has_oneshot():
    assert "oneshot" in SEARCH_MODES
