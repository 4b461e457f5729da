"""``nni-lease search --mode oneshot`` and ``nni-lease retrain`` end to end, and their error paths."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

from nni_lease.cli import SEARCH_MODES, main
from nni_lease.oneshot._lightning import METRICS


def _run_cli(args, home):
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "nni_lease", *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


@pytest.mark.slow
def test_search_export_retrain_on_digits(tmp_path, capsys):
    out = tmp_path / "search"
    proc = _run_cli(
        [
            "search",
            "--mode",
            "oneshot",
            "--output",
            str(out),
            "--epochs",
            "2",
            "--limit",
            "96",
            "--limit-batches",
            "3",
            "--batch-size",
            "32",
            "--width",
            "4",
        ],
        tmp_path,
    )
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


def _exit_code(argv) -> int:
    """main's return value, or the code of argparse's SystemExit (usage errors)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.fixture
def nni_home(tmp_path, monkeypatch):
    """NNI's experiment list (``~/nni-experiments/.experiment``) in a temporary folder."""
    from nni.tools.nnictl import config_utils

    home = tmp_path / "nni-home"
    monkeypatch.setattr(config_utils.Experiments.__init__, "__defaults__", (str(home),))
    return home


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gamma", "-1"], "--gamma: must be a finite number in [0, 1e+06]"),
        (["--pgd-epsilon", "nan"], "--pgd-epsilon: must be a finite number in (0, 1e+06]"),
        (["--learning-rate", "-1"], "--learning-rate: must be a finite number in (0, 1e+06]"),
        (["--limit", "0"], "--limit: must be an int in [1, "),
        (["--pgd-random-start", "2"], "--pgd-random-start: must be a finite number in [0, 1]"),
        (["--hypergradient", "second_order"], "invalid choice"),
        (["--dataset", "cifar10"], "data_dir must name a folder"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "is not a folder"),
        (["--max-trials", "3"], "--max-trials is not used by --mode oneshot"),
        (["--retrain-epochs", "3"], "--retrain-epochs is not used by --mode oneshot"),
    ],
)
def test_oneshot_argument_errors_leave_nothing_behind(args, message, tmp_path, capsys):
    out = tmp_path / "search"
    assert _exit_code(["search", "--output", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_output_at_an_existing_file_is_refused(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    assert main(["search", "--output", str(target), "--limit", "20"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"
    assert main(["search", "--output", str(target / "sub"), "--limit", "20"]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("mode", "args", "message"),
    [
        ("multi-trial", ["--learning-rate", "-1"], "--learning-rate: must be a finite number in (0, 1e+06]"),
        ("multi-trial", ["--learning-rate", "nan"], "--learning-rate: must be a finite number in (0, 1e+06]"),
        ("multi-trial", ["--hypergradient", "unrolled"], "--hypergradient is not used by --mode multi-trial"),
        ("multi-trial", ["--output", "x"], "--output is not used by --mode multi-trial"),
        ("hpo", ["--gamma", "0.5"], "--gamma is not used by --mode hpo (the HPO experiment tunes it)"),
        ("hpo", ["--pgd-steps", "3"], "--pgd-steps is not used by --mode hpo (the HPO experiment tunes it)"),
        ("hpo", ["--policy-learning-rate", "1"], "--policy-learning-rate is not used by --mode hpo"),
        ("hpo", ["--port", "70000"], "--port: must be an int in [1, 65535]"),
        ("hpo", ["--resume", "nosuchexp"], "no experiment 'nosuchexp' to resume"),
        ("multi-trial", ["--resume", "nosuchexp", "--port", "FREE"], "no experiment 'nosuchexp' to resume"),
    ],
)
def test_nni_mode_errors_come_before_any_experiment(mode, args, message, tmp_path, capsys, nni_home):
    records = tmp_path / "records"
    if "FREE" in args:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            args = [str(probe.getsockname()[1]) if a == "FREE" else a for a in args]
    code = _exit_code(["search", "--mode", mode, "--experiment-dir", str(records), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not records.exists() and not (nni_home / ".experiment").exists()


def test_retrain_rejects_missing_list_and_foreign_files(tmp_path, capsys):
    assert main(["retrain", str(tmp_path / "missing.json")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "list.json").write_text(json.dumps([{"architecture": {}}]))
    assert main(["retrain", str(tmp_path / "list.json")]) == 2
    assert "got a JSON list" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert main(["retrain", str(tmp_path / "broken.json")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    assert main(["retrain", str(tmp_path / "other.json")]) == 2
    assert "is not an architecture record" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.json", "list.json", "other.json"]


def test_search_modes_registry():
    assert set(SEARCH_MODES) == {"oneshot", "multi-trial", "hpo"}


# ------------------------------------------------------------------ hostile command lines: one line, exit 2
def _one_error_line(err: str, message: str) -> None:
    """One error line on stderr, never a traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and message in lines[-1], err[-2000:]
    assert len(lines) == 1, err[-2000:]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search", "--seed", "99999999999999999999"], "--seed: must be an int in [0, 4294967295]"),
        (["search", "--seed", "18446744073709551615"], "--seed: must be an int in [0, 4294967295]"),
        (["search", "--width", "100000000"], "--width: must be an int in [1, 4096]"),
        (
            ["search", "--batch-size", "100000000000000000000"],
            "--batch-size: must be an int in [1, 65536]",
        ),
        (["search", "--limit-batches", "100000000000000000000"], "--limit-batches: must be an int in [1, "),
        (["search", "--output", "/sys/kernel/nope"], "output '/sys/kernel/nope' is not writable"),
        (
            ["search", "--mode", "multi-trial", "--seed", "18446744073709551615"],
            "--seed: must be an int in [0, 4294967295]",
        ),
        (["search", "--mode", "hpo", "--width", "100000000"], "--width: must be an int in [1, "),
    ],
)
def test_absurd_values_exit_2_with_one_line(argv, message, tmp_path, capsys, monkeypatch, nni_home):
    if "/sys/kernel/nope" in argv and not os.path.isdir("/sys/kernel"):
        pytest.skip("no /sys/kernel here")
    monkeypatch.chdir(tmp_path)
    assert _exit_code(argv) == 2
    _one_error_line(capsys.readouterr().err, message)
    assert sorted(os.listdir(tmp_path)) == ["nni-home"] or sorted(os.listdir(tmp_path)) == []
    assert not os.path.exists("/sys/kernel/nope")


@pytest.mark.parametrize("mode", ["multi-trial", "hpo"])
def test_nni_settings_that_nni_would_crash_on_exit_2_before_it_starts(mode, tmp_path, capsys, monkeypatch, nni_home):
    monkeypatch.chdir(tmp_path)
    unknown = tmp_path / "ts.yml"
    unknown.write_text("platform: local\nbogusKey: 1\n")
    assert _exit_code(["search", "--mode", mode, "--training-service", str(unknown)]) == 2
    _one_error_line(capsys.readouterr().err, "LocalConfig does not have field(s) bogus")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert _exit_code(["search", "--mode", mode, "--experiment-dir", str(blocker / "records")]) == 2
    _one_error_line(
        capsys.readouterr().err,
        f"experiment_dir '{blocker / 'records'}' cannot be created: it lies under the file '{blocker}'",
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    remote = tmp_path / "remote.yml"
    remote.write_text(
        "platform: remote\nnniManagerIp: 127.0.0.1\nmachineList:\n  - {host: 127.0.0.1, user: nobody, password: x}\n"
    )
    monkeypatch.chdir(empty)
    assert _exit_code(["search", "--mode", mode, "--training-service", str(remote)]) == 2
    _one_error_line(capsys.readouterr().err, f"copies the trial code folder {empty} to its workers, but it is empty")
    assert sorted(os.listdir(tmp_path)) == sorted(["ts.yml", "a-file", "empty", "remote.yml"]) + (
        ["nni-home"] if (tmp_path / "nni-home").exists() else []
    )
    assert os.listdir(empty) == []


def test_hostile_architecture_files_exit_2(tmp_path, capsys):
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    assert _exit_code(["retrain", str(nested)]) == 2
    _one_error_line(capsys.readouterr().err, "is not valid JSON: it is nested too deeply")
    wide = tmp_path / "wide.json"
    wide.write_text(
        json.dumps(
            {
                "architecture": {"op0": "conv3x3"},
                "dataset": "digits",
                "space": {
                    "name": "LeaseCellSpace",
                    "kwargs": {
                        "in_channels": 1,
                        "n_classes": 10,
                        "width": 100_000_000,
                        "cells": 1,
                        "nodes": 2,
                        "image_size": 8,
                    },
                },
            }
        )
    )
    assert _exit_code(["retrain", str(wide)]) == 2
    _one_error_line(capsys.readouterr().err, "width must be an int in [1, 4096]; got 100000000")
    assert sorted(os.listdir(tmp_path)) == ["nested.json", "wide.json"]
    assert _exit_code(["retrain", str(wide), "--seed", "99999999999999999999"]) == 2
    _one_error_line(capsys.readouterr().err, "--seed: must be an int in [0, 4294967295]")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search", "--pgd-steps", "99999999999999999999"], "--pgd-steps: must be an int in [1, 10000]"),
        (["search", "--mode", "multi-trial", "--max-trials", "9" * 20], "--max-trials: must be an int in [1, "),
        (["search", "--mode", "hpo", "--concurrency", "9" * 20], "--concurrency: must be an int in [1, "),
        (["search", "--mode", "hpo", "--retrain-epochs", "9" * 20], "--retrain-epochs: must be an int in [1, "),
        *(
            (["search", flag, "1e300"], f"{flag}: must be a finite number in (0, 1e+06]")
            for flag in (
                "--learning-rate",
                "--arc-learning-rate",
                "--pgd-epsilon",
                "--pgd-step-size",
                "--listener-learning-rate",
                "--unrolled-step-size",
            )
        ),
        (["search", "--gamma", "1e300"], "--gamma: must be a finite number in [0, 1e+06]"),
        (["search", "--mode", "multi-trial", "--policy-learning-rate", "1e300"], "--policy-learning-rate: must be"),
        (
            ["retrain", "architecture.json", "--learning-rate", "1e300"],
            "--learning-rate: must be a finite number in (0, 1e+06]",
        ),
    ],
)
def test_every_count_and_rate_is_bounded(argv, message, tmp_path, capsys, monkeypatch, nni_home):
    """Before: a 20-digit --pgd-steps was accepted, and rates of 1e300 overflowed float32 or trained to NaN."""
    monkeypatch.chdir(tmp_path)
    assert _exit_code(argv) == 2
    _one_error_line(capsys.readouterr().err, message)
    assert sorted(os.listdir(tmp_path)) in ([], ["nni-home"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--space", "darts", "--width", "4096"], "DartsSpace search space"),
        (["--width", "4096", "--cells", "64", "--nodes", "16"], "LeaseCellSpace search space"),
        (["--mode", "multi-trial", "--space", "darts", "--width", "2048", "--cells", "20"], "DartsSpace search space"),
    ],
)
def test_a_search_space_too_large_is_refused_before_it_is_built(argv, message, tmp_path, capsys, nni_home):
    """Before: width 4096 in the DARTS space (20.8 G parameters) ran the machine out of memory."""
    import resource
    import time

    rss, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    output = [] if "multi-trial" in argv else ["--output", str(tmp_path / "out")]
    assert _exit_code(["search", *output, *argv]) == 2
    err = capsys.readouterr().err
    _one_error_line(err, message)
    assert "parameters" in err and "over the limit of 100,000,000" in err
    seconds, grown = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    assert seconds < 60 and grown < 300 * 1024  # KiB
    assert not (tmp_path / "out").exists()


def _architecture_file(path, space, kwargs, architecture):
    record = {"architecture": architecture, "dataset": "digits", "space": {"name": space, "kwargs": kwargs}}
    path.write_text(json.dumps(record))
    return path


def _default_sample(space_name, kwargs):
    from nni_lease._spaces import build_space_on_meta

    space = build_space_on_meta(space_name, check_size=False, **kwargs)
    return {k: v.default() for k, v in space.simplify().items()}


@pytest.mark.parametrize(
    ("space", "kwargs"),
    [
        ("DartsSpace", {"in_channels": 1, "n_classes": 10, "width": 4096, "cells": 3}),
        (
            "LeaseCellSpace",
            {"in_channels": 1, "n_classes": 10, "width": 4096, "cells": 64, "nodes": 16, "image_size": 8},
        ),
    ],
)
def test_a_small_architecture_file_asking_for_a_huge_network_is_refused(space, kwargs, tmp_path, capsys):
    """Before: a 1 KB architecture.json could ask retrain for 96 GiB."""
    import resource
    import time

    path = _architecture_file(tmp_path / "architecture.json", space, kwargs, _default_sample(space, kwargs))
    assert path.stat().st_size < 2**20
    rss, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    assert _exit_code(["retrain", str(path), "--epochs", "1"]) == 2
    _one_error_line(capsys.readouterr().err, "parameters (")
    assert time.perf_counter() - start < 60
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 300 * 1024  # KiB
    assert sorted(os.listdir(tmp_path)) == ["architecture.json"]


@pytest.mark.parametrize("existing", [False, True])
def test_a_search_whose_loss_becomes_nan_stops_and_writes_nothing(existing, tmp_path, capsys, monkeypatch):
    """Before: --pgd-epsilon 1e300 (or a huge --gamma / learning rate) trained to NaN and exited 0 with an
    architecture chosen from NaN weights."""
    import dataclasses

    from nni_lease.core._step import LeaseStep

    real = LeaseStep.train_listener

    def nan_listener(self, *args, **kwargs):
        return dataclasses.replace(real(self, *args, **kwargs), loss=torch.tensor(float("nan")))

    monkeypatch.setattr(LeaseStep, "train_listener", nan_listener)
    out = tmp_path / "search"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("kept")
    code = _exit_code(["search", "--output", str(out), "--epochs", "1", "--limit", "32", "--limit-batches", "1"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the search diverged: the listener's training loss is not finite at epoch 1" in err
    assert sorted(os.listdir(tmp_path)) == (["search"] if existing else [])
    assert not existing or os.listdir(out) == ["notes.txt"]


def test_the_command_line_module_does_not_load_torch():
    """``nni-lease --help`` and the argument errors stay fast: the value checks import art_fisher (and torch) late."""
    code = "import sys, nni_lease.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
