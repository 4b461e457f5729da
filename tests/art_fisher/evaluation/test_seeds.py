"""Several seeds: aggregation as mean ± sd, and the seeds runner end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest

from art_fisher.evaluation._seeds import aggregate, format_mean_sd, parse_seeds


def test_parse_seeds():
    assert parse_seeds("0, 1,2") == (0, 1, 2)
    assert parse_seeds([3]) == (3,)
    for bad in ("0,0", "", "1,x", "-1", [True]):
        with pytest.raises(ValueError, match="seeds"):
            parse_seeds(bad)


def test_aggregate_is_mean_and_sample_sd_per_group_ignoring_nan():
    seeds = [
        [{"detector": "a", "attack": "p", "roc_auc": 0.8}, {"detector": "b", "attack": "p", "roc_auc": 0.6}],
        [{"detector": "a", "attack": "p", "roc_auc": 0.9}, {"detector": "b", "attack": "p", "roc_auc": float("nan")}],
        [{"detector": "a", "attack": "p", "roc_auc": 1.0}],
    ]
    rows = aggregate(seeds, ("detector", "attack"), ("roc_auc",))
    assert [r["detector"] for r in rows] == ["a", "b"]
    assert rows[0]["roc_auc_mean"] == pytest.approx(0.9) and rows[0]["roc_auc_sd"] == pytest.approx(0.1)
    assert rows[0]["n_seeds"] == 3 and rows[0]["roc_auc_n"] == 3
    assert rows[1]["roc_auc_mean"] == pytest.approx(0.6) and rows[1]["roc_auc_sd"] == 0.0 and rows[1]["roc_auc_n"] == 1
    assert format_mean_sd(rows[0], "roc_auc") == "0.900 ± 0.100"
    assert format_mean_sd(rows[1], "roc_auc") == "0.600"
    assert format_mean_sd({"x_mean": math.nan}, "x") == "n/a"


@pytest.mark.slow
def test_evaluate_seeds_aggregates_the_runs_and_the_cli_runs_it(tmp_path):
    from art_fisher.cli import main
    from art_fisher.evaluation._seeds import evaluate_seeds

    tiny = {"attacks": ["fgsm"], "detectors": ["max_softmax", "energy_clean"], "n_samples": 24, "epochs": 2}
    result = evaluate_seeds(seeds="0,1", output_dir=tmp_path / "agg", **tiny)
    assert [r.settings["seed"] for r in result.runs] == [0, 1]
    row = next(r for r in result.table if r["detector"] == "max_softmax" and r["fit_attack"] == "fgsm")
    per_seed = [next(t["roc_auc"] for t in r.table if t["detector"] == "max_softmax") for r in result.runs]
    assert row["roc_auc_mean"] == pytest.approx(np.mean(per_seed))
    assert row["roc_auc_sd"] == pytest.approx(np.std(per_seed, ddof=1))
    curve = result.security_curve
    assert {r["detector"] for r in curve} == {"none", "max_softmax", "energy_clean"}
    assert all(r["n_seeds"] == 2 for r in curve)
    text = result.paths["report_md"].read_text()
    assert "±" in text and "## security_curve" in text and result.paths["unseen_auc"].is_file()
    assert (tmp_path / "agg" / "seed_1" / "report.md").is_file()
    code = main(
        [
            "evaluate",
            "--seeds",
            "0,1",
            "--attacks",
            "fgsm",
            "--detectors",
            "max_softmax",
            "--n-samples",
            "16",
            "--epochs",
            "2",
            "--output",
            str(tmp_path / "cli"),
            "--quiet",
        ]
    )
    assert code == 0 and (tmp_path / "cli" / "results.json").is_file()
    assert main(["evaluate", "--seeds", "0,0", "--output", str(tmp_path / "bad"), "--quiet"]) == 2


def test_evaluate_seeds_loads_the_data_once_and_runs_the_seeds_one_after_another(tmp_path, monkeypatch):
    """Before: every seed's run was prepared up front, each with its own copy of the data set."""
    from art_fisher.evaluation import _seeds, _workflow

    loads, runs = [], []
    real_load = _workflow.load_dataset

    def counting_load(*args, **kwargs):
        loads.append(kwargs.get("split"))
        return real_load(*args, **kwargs)

    class _Stop(Exception):
        pass

    def recording_run(plan):
        runs.append((plan.seed, plan.output_dir.name, id(plan.train), len(loads)))
        if len(runs) == 3:
            raise _Stop

    monkeypatch.setattr(_workflow, "load_dataset", counting_load)
    monkeypatch.setattr(_seeds, "run_plan", recording_run)
    with pytest.raises(_Stop):
        _seeds.evaluate_seeds(
            seeds="4,0,7", output_dir=tmp_path, attacks=["fgsm"], detectors=["max_softmax"], n_samples=8
        )
    assert loads == ["train", "test"]  # one load of each split, before the first run
    assert [r[:2] for r in runs] == [(4, "seed_4"), (0, "seed_0"), (7, "seed_7")]
    assert len({r[2] for r in runs}) == 1 and all(r[3] == 2 for r in runs)
    with pytest.raises(ValueError, match="seeds must be integers from 0 to 4294967295"):
        _seeds.evaluate_seeds(seeds=[0, 2**40], output_dir=tmp_path / "big", attacks=["fgsm"])
    assert loads == ["train", "test"]  # refused before any data was read
