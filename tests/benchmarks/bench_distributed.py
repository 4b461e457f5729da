"""Speed-up of ``art-fisher evaluate`` under ``torchrun --nproc-per-node 2`` over one process, one thread each.

Builds the test suite's 20-class 3×16×16 model (tests/art_fisher/own_model.py), exports it with
``torch.export`` and writes its images as an ``.npz``; then runs, alternately and ``--repeats`` times each,

- ``python -m art_fisher evaluate --data ... --model ... --threads 1`` (one process), and
- ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m art_fisher evaluate ... --threads 1``,

with the same arguments (attacks FGSM, PGD, DeepFool, C&W L2; the Fisher detectors, max-softmax and energy),
and reports for each the fastest wall time of the whole command and of the run itself (``timings.total`` of
``results.json``, without the start-up), their ratios, the largest ROC-AUC difference between the two tables,
and the machine's load average before and after. Goal: a ratio of at least 1.6 on 2 CPU cores.

Writes ``tests/benchmarks/results/bench_distributed.json``. ``--smoke``: a tiny run that writes no results.

    PYTHONPATH=$PWD python tests/benchmarks/bench_distributed.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).parent / "results"
DETECTORS = ",".join(
    ("fisher_trace", "fisher_quadratic_form", "fisher_max_eigenvalue", "fisher_combined", "fisher_trace_clean",
     "max_softmax", "energy_clean")
)  # fmt: skip


def _files(folder: Path, n_images: int) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT))
    from tests.art_fisher import own_model

    net = own_model.trained_net()
    x, y = own_model.make_data(n_images, seed=7)
    x_ref, _ = own_model.make_data(200, seed=8)
    data = folder / "data.npz"
    np.savez(data, x_train=(x_ref * 255).round().astype(np.uint8), y_train=np.zeros(len(x_ref), int), x_test=x,
             y_test=y)  # fmt: skip
    own_model.exported(net, folder / "model.pt2")
    return data, folder / "model.pt2"


def _run(launcher: list[str], args: list[str], out: Path) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run([*launcher, *args, "--output", str(out)], env=env, capture_output=True, text=True,
                          check=False)  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(launcher)} failed:\n{done.stderr[-3000:]}")
    return wall, json.loads((out / "results.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=200, help="images attacked (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration (default: %(default)s)")
    parser.add_argument("--attacks", default="fgsm,pgd,deepfool,cw_l2")
    parser.add_argument("--json", default=str(RESULTS / "bench_distributed.json"))
    parser.add_argument("--smoke", action="store_true", help="tiny run (about a minute); writes no results")
    args = parser.parse_args(argv)
    n_samples, repeats, attacks = args.n_samples, args.repeats, args.attacks
    if args.smoke:
        n_samples, repeats, attacks = 20, 1, "fgsm"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data, model = _files(folder, int(n_samples * 1.4))
        common = ["evaluate", "--data", str(data), "--model", str(model), "--mean", "0.45,0.5,0.55", "--std",
                  "0.22,0.25,0.2", "--attacks", attacks, "--detectors", DETECTORS, "--n-samples", str(n_samples),
                  "--threads", "1", "--quiet"]  # fmt: skip
        launchers = {
            "one_process": [sys.executable, "-m", "art_fisher"],
            "two_processes": [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                "2",
                "-m",
                "art_fisher",
            ],
        }
        load_before = os.getloadavg()
        walls: dict[str, list[float]] = {k: [] for k in launchers}
        runs: dict[str, list[float]] = {k: [] for k in launchers}
        tables: dict[str, dict] = {}
        for i in range(repeats):
            for name, launcher in launchers.items():
                wall, results = _run(launcher, common, folder / f"{name}_{i}")
                walls[name].append(wall)
                runs[name].append(results["timings"]["total"])
                tables[name] = {(r["detector"], r["fit_attack"], r["attack"]): r["roc_auc"] for r in results["table"]}
        load_after = os.getloadavg()
    diff = max(abs(tables["one_process"][k] - tables["two_processes"][k]) for k in tables["one_process"])
    payload = {
        "benchmark": "bench_distributed", "n_samples": n_samples, "attacks": attacks.split(","),
        "detectors": DETECTORS.split(","), "repeats": repeats, "threads_per_process": 1,
        "wall_seconds": {k: min(v) for k, v in walls.items()}, "run_seconds": {k: min(v) for k, v in runs.items()},
        "speedup_wall": min(walls["one_process"]) / min(walls["two_processes"]),
        "speedup_run": min(runs["one_process"]) / min(runs["two_processes"]),
        "max_roc_auc_difference": diff, "n_rows": len(tables["one_process"]),
        "load_average_before": list(load_before), "load_average_after": list(load_after),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
    }  # fmt: skip
    print(f"one process: {payload['wall_seconds']['one_process']:.1f} s wall, "
          f"{payload['run_seconds']['one_process']:.1f} s run")  # fmt: skip
    print(f"two processes: {payload['wall_seconds']['two_processes']:.1f} s wall, "
          f"{payload['run_seconds']['two_processes']:.1f} s run")  # fmt: skip
    print(
        f"speed-up: {payload['speedup_wall']:.2f}x wall, {payload['speedup_run']:.2f}x run (goal >= 1.6); "
        f"largest ROC-AUC difference {diff:.2e} over {payload['n_rows']} rows; load {load_before} -> {load_after}"
    )
    if not args.smoke:
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"JSON: {args.json}")
    else:
        print(json.dumps(payload)[:1500])
    return 0


if __name__ == "__main__":
    sys.exit(main())
