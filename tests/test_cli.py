"""``art-fisher evaluate`` on the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from art_fisher.cli import main
from art_fisher.models import SmallCNN


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny runs: one torch thread is faster than two on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_evaluate_prints_the_table_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["evaluate", "--attacks", "fgsm", "--detectors", "fisher_trace,binary_input", "--n-samples", "16",
               "--epochs", "2", "--seed", "1", "--eps", "0.25", "--output", str(out), "--quiet"])  # fmt: skip
    printed = capsys.readouterr()
    assert rc == 0
    lines = printed.out.splitlines()
    assert lines[1].split()[:4] == ["attack", "success", "detector", "ROC-AUC"]
    assert sum(line.startswith("fgsm ") for line in lines) == 2
    assert "report: " in lines[-1]
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["eps"] == 0.25 and data["settings"]["seed"] == 1
    assert {(r["attack"], r["detector"]) for r in data["table"]} == {("fgsm", "fisher_trace"), ("fgsm", "binary_input")}
    assert (out / "report.md").is_file() and (out / "results.csv").is_file()
    assert printed.err == ""  # --quiet: no progress bars, no log lines


def test_evaluate_with_a_state_dict(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "net.pt"
    torch.save(SmallCNN().state_dict(), path)
    rc = main(["evaluate", "--model", str(path), "--arch", "small_cnn", "--attacks", "fgsm", "--detectors",
               "binary_input", "--n-samples", "8", "--output", str(tmp_path / "o"), "--quiet"])  # fmt: skip
    assert rc == 0
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert data["settings"]["model"] == str(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attacks", "fgsm,nope"], "unknown ['nope']"),
        (["--detectors", "fisher_trace,nope"], "unknown ['nope']"),
        (["--dataset", "mnist"], "data_dir is required"),
        (["--dataset", "mnist", "--data-dir", "{tmp}"], "train-images-idx3-ubyte"),
        (["--model", "{tmp}/missing.pt"], "missing.pt does not exist"),
        (["--n-samples", "1"], "n_samples must be an integer >= 4"),
        (["--eps", "-0.1"], "eps must be"),
        (["--device", "quantum"], "device"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    rc = main(["evaluate", *args, "--output", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("art-fisher evaluate: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_evaluate_help_lists_every_option():
    out = subprocess.run(
        [sys.executable, "-m", "art_fisher", "evaluate", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--dataset", "--data-dir", "--model", "--arch", "--attacks", "--eps", "--detectors",
                   "--n-samples", "--seed", "--device", "--output", "--quiet"):  # fmt: skip
        assert option in out
    for name in ("fgsm", "pgd", "deepfool", "cw_l2", "fisher_trace", "binary_input"):
        assert name in out
