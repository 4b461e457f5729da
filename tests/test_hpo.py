"""Tests of the LeaSE HPO experiment (tuning gamma, PGD epsilon and steps) without starting NNI."""

from __future__ import annotations

import json
from pathlib import Path

import nni
import pytest
import yaml
from nni.experiment.config import ExperimentConfig

from nni_lease import cli
from nni_lease.hpo import DEFAULT_PARAMETERS, SEARCH_SPACE, build_hpo_experiment, main, run_trial

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def reports(monkeypatch):
    captured = {"intermediate": [], "final": []}
    monkeypatch.setattr(nni, "report_intermediate_result", lambda m: captured["intermediate"].append(m))
    monkeypatch.setattr(nni, "report_final_result", lambda m: captured["final"].append(m))
    return captured


def test_trial_reports_each_search_epoch_and_one_final_result(reports, tmp_path):
    # Outside NNI, nni.get_next_parameter() gives no parameters: the trial uses DEFAULT_PARAMETERS.
    assert main(["trial", "--output", str(tmp_path), "--search-args=--epochs 2 --limit-batches 2 --limit 120",
                 "--retrain-args=--epochs 1"]) == 0
    assert [m["epoch"] for m in reports["intermediate"]] == [1, 2]
    for m in reports["intermediate"]:
        assert m["default"] == m["explainer/val_acc"] and "lease/objective" in m
    # Exactly one final result: NNI's Lightning evaluator's own reports are muted during the search.
    (final,) = reports["final"]
    retrained = json.loads((tmp_path / cli.RETRAIN_FILE).read_text())
    assert final["default"] == retrained["val_accuracy"] and final["test_accuracy"] == retrained["test_accuracy"]
    assert {k: final[k] for k in DEFAULT_PARAMETERS} == pytest.approx(DEFAULT_PARAMETERS)
    searched = json.loads((tmp_path / "search" / cli.ARCHITECTURE_FILE).read_text())
    assert searched["strategy"]["gamma"] == DEFAULT_PARAMETERS["gamma"]
    assert searched["strategy"]["pgd_epsilon"] == pytest.approx(DEFAULT_PARAMETERS["pgd_epsilon"])
    assert searched["strategy"]["pgd_steps"] == DEFAULT_PARAMETERS["pgd_steps"]
    assert nni.report_final_result is not None and len(reports["final"]) == 1  # restored afterwards


@pytest.mark.parametrize(("params", "match"), [({"gamma": -1}, "gamma"), ({"pgd_steps": 0}, "pgd_steps"),
                                                ({"pgd_epsilon": 0}, "pgd_epsilon"), ({"lr": 1}, "unknown")])
def test_bad_parameters_fail_before_any_work(params, match, tmp_path, reports):
    with pytest.raises(ValueError, match=match):
        run_trial(params, output=tmp_path)
    assert not any(tmp_path.iterdir()) and reports == {"intermediate": [], "final": []}


def test_experiment_config_and_the_yaml_example_agree(tmp_path):
    exp = build_hpo_experiment(max_trials=3, concurrency=2, experiment_dir=tmp_path)
    config = exp.config.canonical_copy()
    assert config.search_space == SEARCH_SPACE
    assert config.tuner.name == "TPE" and config.tuner.class_args == {"optimize_mode": "maximize"}
    assert "-m nni_lease.hpo trial" in config.trial_command
    assert (config.max_trial_number, config.trial_concurrency) == (3, 2)
    assert set(DEFAULT_PARAMETERS) == set(SEARCH_SPACE)

    example = yaml.safe_load((EXAMPLES / "hpo_config.yml").read_text())
    assert example["searchSpace"] == SEARCH_SPACE
    assert example["tuner"]["classArgs"]["optimize_mode"] == "maximize"
    loaded = ExperimentConfig(**example).canonical_copy()  # NNI accepts the file as an experiment config
    assert loaded.trial_command.startswith("python -m nni_lease.hpo trial")


def test_bad_experiment_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_trials"):
        build_hpo_experiment(max_trials=0)
    with pytest.raises(ValueError, match="training_service"):
        build_hpo_experiment(training_service=tmp_path / "missing.yml")
