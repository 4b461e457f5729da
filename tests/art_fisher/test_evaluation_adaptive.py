"""The adaptive-attack stage of the evaluation (``evaluate(..., adaptive=True)``) on a tiny digits run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from art_fisher.data._loaders import load_digits
from art_fisher.evaluation import DEFAULT_DETECTORS, DETECTORS, evaluate, prepare
from art_fisher.evaluation._attacks import ADAPTIVE_ATTACKS, STEPS, THREAT_MODEL, adaptive_detectors
from art_fisher.models._architectures import SmallCNN, train_model

DETECTORS_HERE = ["fisher_trace", "fisher_trace_clean", "max_softmax"]


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train = load_digits(split="train")
    net = train_model(SmallCNN(), train.x, train.y, epochs=6, seed=0)
    out = tmp_path_factory.mktemp("adaptive")
    torch.save(net.state_dict(), out / "model.pt")
    result = evaluate(model=out / "model.pt", attacks=["pgd"], detectors=DETECTORS_HERE, n_samples=12, seed=2,
                      target_fpr=0.2, output_dir=out / "run", adaptive=True)  # fmt: skip
    torch.set_num_threads(before)
    return result, out / "run"


def test_every_differentiable_detector_is_attacked_and_reported(adaptive_run):
    result, out = adaptive_run
    rows = result.adaptive
    assert [(r["detector"], r["attack"]) for r in rows] == [(d, a) for d in DETECTORS_HERE for a in ADAPTIVE_ATTACKS]
    for r in rows:
        assert r["fit_attack"] == ("clean" if r["detector"].endswith("_clean") else "pgd")
        assert r["steps"] == STEPS and r["n_attacked"] == 6  # the detector-test side
        assert 0 <= r["evasion_rate"] <= r["success_rate"] <= 1
        assert np.isfinite([r["loss_start"], r["loss_half"], r["loss_final"]]).all()
        assert r["loss_final"] >= r["loss_start"]  # PGD ascended the attacker's loss
    eps = {r["attack"]: r["eps"] for r in rows}
    assert eps == {"pgd_linf": pytest.approx(0.2), "pgd_l2": pytest.approx(0.2 * 8 / 4)}
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["adaptive"]) == len(rows) and saved["settings"]["adaptive_detectors"] == DETECTORS_HERE
    with open(out / "adaptive.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    report = (out / "report.md").read_text()
    assert "## Adaptive attacks" in report and THREAT_MODEL in report
    assert "Adaptive attacks" in result.format_table()


def test_non_differentiable_detectors_are_refused_before_any_work(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"fisher_sensitivity: no input gradient through the statistics"):
        prepare(detectors=["fisher_trace", "fisher_sensitivity"], adaptive=True, output_dir=out)
    with pytest.raises(ValueError, match="subset_scanning: no input gradient"):
        prepare(detectors=["subset_scanning"], adaptive=True, output_dir=out)
    with pytest.raises(ValueError, match="adaptive must be True or False"):
        prepare(adaptive="yes", output_dir=out)
    assert not out.exists()
    # the default set: the differentiable ones are attacked, the others skipped
    usable = adaptive_detectors(DEFAULT_DETECTORS, explicit=False)
    assert "fisher_sensitivity" not in usable and "subset_scanning" not in usable
    assert {"fisher_combined", "binary_input", "binary_activation", "max_softmax_clean"} <= set(usable)
    assert all(DETECTORS[d].no_gradient is None for d in usable)
