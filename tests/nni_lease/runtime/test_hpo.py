"""Tests of the LeaSE HPO experiment (tuning gamma, explanation epsilon and steps) without starting NNI."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import nni
import pytest
import yaml
from nni.experiment.config import ExperimentConfig

from nni_lease.core._config import LeaseConfig
from nni_lease.oneshot._config import RetrainConfig, SearchConfig
from nni_lease.oneshot._workflow import ARCHITECTURE_FILE, RETRAIN_FILE
from nni_lease.runtime._hpo import (
    DEFAULT_PARAMETERS,
    SEARCH_SPACE,
    TrialConfig,
    build_hpo_experiment,
    main,
    run_trial,
    trial_command,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
TINY = TrialConfig(search=SearchConfig(epochs=2, limit_batches=2, limit=120), retrain=RetrainConfig(epochs=1))


@pytest.fixture
def reports(monkeypatch, tmp_path):
    from nni.tools.nnictl import config_utils

    monkeypatch.setattr(config_utils.Experiments.__init__, "__defaults__", (str(tmp_path / "nni-home"),))
    captured = {"intermediate": [], "final": []}
    monkeypatch.setattr(nni, "report_intermediate_result", captured["intermediate"].append)
    monkeypatch.setattr(nni, "report_final_result", captured["final"].append)
    return captured


def test_trial_reports_each_search_epoch_and_one_final_result(reports, tmp_path):
    # Outside NNI, nni.get_next_parameter() gives no parameters: the trial uses DEFAULT_PARAMETERS.
    out = tmp_path / "trial"
    assert main(["trial", "--output", str(out), "--config", TINY.to_json()]) == 0
    assert [m["epoch"] for m in reports["intermediate"]] == [1, 2]
    for m in reports["intermediate"]:
        assert m["default"] == m["explainer/val_acc"] and "lease/objective" in m
    # Exactly one final result: NNI's Lightning evaluator's own reports are muted during the search.
    (final,) = reports["final"]
    retrained = json.loads((out / RETRAIN_FILE).read_text())
    assert final["default"] == retrained["val_accuracy"] and final["test_accuracy"] == retrained["test_accuracy"]
    assert {k: final[k] for k in DEFAULT_PARAMETERS} == pytest.approx(DEFAULT_PARAMETERS)
    searched = json.loads((out / "search" / ARCHITECTURE_FILE).read_text())
    for name, value in DEFAULT_PARAMETERS.items():
        assert searched["strategy"][name] == pytest.approx(value)
    assert nni.report_final_result is not None and len(reports["final"]) == 1  # restored afterwards


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"gamma": -1}, "gamma"),
        ({"pgd_steps": 0}, "pgd_steps"),
        ({"pgd_epsilon": 0}, "pgd_epsilon"),
        ({"lr": 1}, "unknown"),
    ],
)
def test_bad_parameters_fail_before_any_work(params, match, tmp_path, reports):
    with pytest.raises(ValueError, match=match):
        run_trial(params, output=tmp_path)
    assert not any(tmp_path.iterdir()) or [p.name for p in tmp_path.iterdir()] == ["nni-home"]
    assert reports == {"intermediate": [], "final": []}


def test_trial_config_round_trip_and_refusals():
    config = TrialConfig(
        search=SearchConfig(dataset="digits", epochs=3),
        lease={"hypergradient": "unrolled"},
        retrain=RetrainConfig(epochs=2),
    )
    assert TrialConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="cannot be fixed in an HPO run"):
        TrialConfig(lease={"gamma": 0.5})
    with pytest.raises(ValueError, match="unknown LeaSE setting"):
        TrialConfig(lease={"gama": 0.5})
    with pytest.raises(ValueError, match="not valid JSON"):
        TrialConfig.from_json("{")
    with pytest.raises(ValueError, match="learning_rate"):
        TrialConfig.from_json(json.dumps({"search": {"learning_rate": -1}}))


def test_experiment_config_and_the_yaml_example_agree(tmp_path):
    exp = build_hpo_experiment(max_trials=3, concurrency=2, experiment_dir=tmp_path)
    config = exp.config.canonical_copy()
    assert config.search_space == SEARCH_SPACE
    assert config.tuner.name == "TPE" and config.tuner.class_args == {"optimize_mode": "maximize"}
    assert shlex.split(config.trial_command)[1:5] == ["-m", "nni_lease.runtime._hpo", "trial", "--config"]
    assert (config.max_trial_number, config.trial_concurrency) == (3, 2)
    assert DEFAULT_PARAMETERS == {k: getattr(LeaseConfig(), k) for k in SEARCH_SPACE}

    example = yaml.safe_load((EXAMPLES / "hpo_config.yml").read_text())
    assert example["searchSpace"] == SEARCH_SPACE
    assert example["tuner"]["classArgs"]["optimize_mode"] == "maximize"
    loaded = ExperimentConfig(**example).canonical_copy()  # NNI accepts the file as an experiment config
    assert loaded.trial_command.startswith("python -m nni_lease.runtime._hpo trial")


def test_bad_experiment_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_trials"):
        build_hpo_experiment(max_trials=0)
    with pytest.raises(ValueError, match="training_service"):
        build_hpo_experiment(training_service=tmp_path / "missing.yml")


@pytest.mark.slow
def test_trial_command_is_not_shell_code(tmp_path):
    """NNI runs the trial command with bash's eval: quotes, spaces, $() and backticks in a path stay text."""
    hostile = str(tmp_path / "dir with space") + "/x'; touch MARK1; echo '$(touch MARK2)`touch MARK3`\"; touch MARK4\""
    config = TrialConfig(search=SearchConfig(data_dir=hostile, epochs=1))
    command = trial_command(config, python=sys.executable) + " --dry-run"
    assert shlex.split(command)[-2] == config.to_json()
    env = {**os.environ, "TRIAL_COMMAND": command, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", "-c", 'eval "$TRIAL_COMMAND"'],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no MARK* file anywhere
    received = json.loads(proc.stdout.strip().splitlines()[-1])
    assert received["search"]["data_dir"] == hostile
