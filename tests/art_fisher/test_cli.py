"""``art-fisher evaluate`` on the command line, MNIST's defaults and progress logging included."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch

from art_fisher.cli import main
from art_fisher.models._architectures import SmallCNN
from tests.fake_mnist import write_fake_mnist


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny runs: one torch thread is faster than two on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_evaluate_prints_the_tables_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "evaluate",
            "--attacks",
            "fgsm,pgd",
            "--detectors",
            "fisher_trace,max_softmax,fisher_trace_clean",
            "--n-samples",
            "20",
            "--epochs",
            "2",
            "--seed",
            "1",
            "--eps",
            "0.25",
            "--target-fpr",
            "0.1",
            "--output",
            str(out),
            "--quiet",
        ]
    )
    printed = capsys.readouterr()
    assert rc == 0
    lines = printed.out.splitlines()
    assert lines[1].split()[:4] == ["attack", "success", "detector", "ROC-AUC"]
    assert sum(line.startswith("fgsm ") for line in lines) == 3  # same-attack and clean-fit rows
    summary = lines[lines.index(next(line for line in lines if line.startswith("Unseen attacks"))) + 1 :]
    assert summary[0].split()[:3] == ["detector", "fitted", "on"]
    assert [line.split()[0] for line in summary[2:5]] == ["fisher_trace", "max_softmax", "fisher_trace_clean"]
    model_line = next(line for line in lines if line.startswith("model: "))
    assert str(out / "models") in model_line and "(trained here and cached)" in model_line
    assert "report: " in lines[-1]
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["eps"] == 0.25 and data["settings"]["seed"] == 1 and data["settings"]["target_fpr"] == 0.1
    assert {(r["detector"], r["fit_attack"], r["attack"]) for r in data["table"]} == {
        *((d, f, a) for d in ("fisher_trace", "max_softmax") for f in ("fgsm", "pgd") for a in ("fgsm", "pgd")),
        ("fisher_trace_clean", "clean", "fgsm"),
        ("fisher_trace_clean", "clean", "pgd"),
    }
    assert (out / "report.md").is_file() and (out / "results.csv").is_file()
    assert printed.err == ""  # --quiet: no progress bar, no log lines
    # Again: the model comes from the cache, and --quiet still says where it is.
    assert (
        main(
            [
                "evaluate",
                "--attacks",
                "fgsm",
                "--detectors",
                "max_softmax",
                "--n-samples",
                "16",
                "--epochs",
                "2",
                "--seed",
                "1",
                "--output",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert f"model: {model_line.split()[1]} (loaded from the cache)" in capsys.readouterr().out


def test_corrupt_cache_is_rebuilt_and_reported_with_quiet(tmp_path, capsys, caplog):
    args = [
        "evaluate",
        "--attacks",
        "fgsm",
        "--detectors",
        "max_softmax",
        "--n-samples",
        "8",
        "--epochs",
        "1",
        "--output",
        str(tmp_path),
        "--quiet",
    ]
    assert main(args) == 0
    cache = next((tmp_path / "models").iterdir())
    cache.write_bytes(cache.read_bytes()[:100])
    with caplog.at_level("WARNING"):
        assert main(args) == 0
    assert f"model: {cache} (trained again" in capsys.readouterr().out
    assert "unusable" in caplog.text and str(cache) in caplog.text  # a warning: shown under --quiet


def test_evaluate_with_a_state_dict(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "net.pt"
    torch.save(SmallCNN().state_dict(), path)
    rc = main(
        [
            "evaluate",
            "--model",
            str(path),
            "--arch",
            "small_cnn",
            "--attacks",
            "fgsm",
            "--detectors",
            "binary_input",
            "--n-samples",
            "8",
            "--output",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
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
        (["--model", "{tmp}/notes.txt"], "notes.txt is not a torch zip archive"),
        (["--model", "/dev/zero"], "/dev/zero is not a regular file"),
        (["--n-samples", "99999999999999999999"], "n_samples must be an int in [4, 1000000]"),
        (["--n-samples", "1"], "n_samples must be an int in [4, "),
        (["--batch-size", "100000000000000000000"], "batch_size must be an int in [1, 65536]"),
        (["--seed", "99999999999999999999"], "seed must be an int in [0, 4294967295]"),
        (["--seed", "18446744073709551615"], "seed must be an int in [0, 4294967295]"),
        (["--output", "/sys/kernel/art_fisher_out"], "not writable"),
        (["--epochs", "0"], "epochs must be"),
        (["--target-fpr", "0"], "target_fpr must be"),
        (["--eps", "-0.1"], "eps must be"),
        (["--device", "quantum"], "device"),
        (["--output", "{tmp}/notes.txt/out"], "lies under the file"),
        (["--output", "/proc/art_fisher_out"], "not writable"),
        (
            ["--adaptive", "--detectors", "fisher_trace,fisher_sensitivity"],
            "adaptive attacks need detectors with input",
        ),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, args, message):
    (tmp_path / "notes.txt").write_text("not a model")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    full = (
        ["evaluate", *args, "--quiet"]
        if "--output" in args
        else ["evaluate", *args, "--output", str(tmp_path / "out"), "--quiet"]
    )
    rc = main(full)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("art-fisher evaluate: error: ") and message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing left behind


def test_argparse_refuses_a_float_batch_size(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--batch-size", "1e20"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "invalid int value: '1e20'" in err and err.count("\n") == 1


@pytest.mark.slow
def test_evaluate_help_lists_every_option():
    out = subprocess.run(
        [sys.executable, "-m", "art_fisher", "evaluate", "--help"], capture_output=True, text=True, check=True
    ).stdout
    options = (
        "--dataset",
        "--data-dir",
        "--model",
        "--arch",
        "--attacks",
        "--eps",
        "--detectors",
        "--n-samples",
        "--seed",
        "--device",
        "--output",
        "--target-fpr",
        "--quiet",
        "--adaptive",
    )
    for option in options:
        assert option in out
    for name in (
        "fgsm",
        "pgd",
        "deepfool",
        "cw_l2",
        "fisher_trace",
        "fisher_trace_clean",
        "max_softmax",
        "binary_input",
    ):
        assert name in out


def test_evaluate_mnist_uses_mnist_defaults_and_logs_progress_off_a_terminal(tmp_path, capsys, caplog):
    data = write_fake_mnist(tmp_path / "data")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        rc = main(
            [
                "evaluate",
                "--dataset",
                "mnist",
                "--data-dir",
                str(data),
                "--attacks",
                "fgsm,pgd",
                "--detectors",
                "fisher_trace,max_softmax_clean",
                "--n-samples",
                "24",
                "--epochs",
                "2",
                "--output",
                str(out),
            ]
        )
    assert rc == 0
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["arch"] == "mnist_cnn" and settings["eps"] == 0.3 and settings["torch_threads"] == 1
    assert settings["clean_test_accuracy"] > 0.5
    messages = [r.getMessage() for r in caplog.records]
    assert "training epoch 1/2" in " ".join(messages) and "training epoch 2/2" in " ".join(messages)
    steps = [m for m in messages if m.startswith("step ")]
    # 2 attacks, fisher_trace fitted on each, max_softmax_clean once: 5 steps, each logged once, in order.
    assert [s.split(":")[0] for s in steps] == [f"step {k}/5" for k in range(1, 6)]
    assert steps[0] == "step 1/5: attack FGSM" and steps[-1] == "step 5/5: max_softmax_clean fitted on clean"
    assert any(m.startswith("attack PGD: 24/24 images") for m in messages)
    assert "mnist / mnist_cnn" in capsys.readouterr().out


def test_evaluate_threads_option(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--threads", "0"])
    assert "--threads: must be an int in [1, 1024]; got '0'" in capsys.readouterr().err
    rc = main(
        [
            "evaluate",
            "--attacks",
            "fgsm",
            "--detectors",
            "max_softmax",
            "--n-samples",
            "8",
            "--epochs",
            "1",
            "--threads",
            "2",
            "--output",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert rc == 0 and torch.get_num_threads() == 2
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["torch_threads"] == 2


def _state_file(path, state, *, compress=False):
    """``torch.save(state)`` at ``path``, its zip members deflated when ``compress``."""
    import zipfile

    torch.save(state, path)
    if compress:
        with zipfile.ZipFile(path) as src:
            members = [(info.filename, src.read(info)) for info in src.infolist()]
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as dst:
            for name, data in members:
                dst.writestr(name, data)
    return path


def _legacy_file(path):
    torch.save(SmallCNN().state_dict(), path, _use_new_zipfile_serialization=False)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        # a 40 MB tensor deflated to ~40 KB: refused from the zip directory, before anything is inflated
        (lambda p: _state_file(p, {"w": torch.zeros(10_000_000)}, compress=True), "is compressed"),
        (lambda p: _state_file(p, {**SmallCNN().state_dict(), "pad": torch.zeros(2_000_000)}), "declare"),
        (lambda p: _state_file(p, {"conv.weight": torch.zeros(3)}), "keys are not the architecture's: missing"),
        (lambda p: _state_file(p, {k: v[..., :1] for k, v in SmallCNN().state_dict().items()}), "has shape"),
        (_legacy_file, "not a torch zip archive"),
    ],
)
def test_bad_model_files_exit_2_with_one_line_before_reading(tmp_path, capsys, make, message):
    """Before: a deflated torch zip of 40 KB grew the process by its inflated size before the refusal; wrong keys
    printed torch's three-line message."""
    import resource
    import time

    path = make(tmp_path / "model.pt")
    rss, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    rc = main(["evaluate", "--model", str(path), "--arch", "small_cnn", "--output", str(tmp_path / "o"), "--quiet"])
    assert time.perf_counter() - start < 60
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 300 * 1024  # KiB
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("art-fisher evaluate: error: ") and err.count("\n") == 1
    assert message in err and "model.pt" in err
    assert not (tmp_path / "o").exists()
