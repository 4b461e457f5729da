"""Benchmark: LeaSE vs NNI's DARTS on the same space, data and epochs, measured in one run.

For each seed, on scikit-learn's 8×8 digits with :class:`nni_lease.spaces.LeaseCellSpace`:

1. search with NNI's ``DARTS`` strategy and with ``LeaSE(gamma=1)`` (3 PGD steps, first-order), the
   same space initialisation, batches and epochs; the time of every search epoch is recorded by a
   Lightning callback (the first epoch is reported separately as warm-up and excluded from the mean);
2. retrain each exported architecture from scratch (same seed, same settings) and measure test accuracy.

Prints a table and a JSON document (``--json PATH`` also writes it) with the time ratio LeaSE / DARTS
and the test accuracies as mean ± std over the seeds. ``--smoke`` runs a tiny version in seconds (used
by the test suite).

Usage::

    python tests/benchmarks/bench_lease.py            # full run (minutes)
    python tests/benchmarks/bench_lease.py --smoke    # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from nni.nas.evaluator.pytorch import Classification, DataLoader  # noqa: E402
from nni.nas.execution import SequentialExecutionEngine  # noqa: E402
from nni.nas.space import RawFormatModelSpace  # noqa: E402
from nni.nas.strategy import DARTS  # noqa: E402

from nni_lease.data import DigitsDataset  # noqa: E402
from nni_lease.retrain import retrain  # noqa: E402
from nni_lease.spaces import LeaseCellSpace  # noqa: E402
from nni_lease.strategy import LeaSE  # noqa: E402


class EpochTimer(pl.Callback):
    """Wall-clock and CPU seconds of every training epoch.

    CPU time (``time.process_time``, all threads of this process) is the robust measure on a shared
    machine: other processes stretch wall-clock time, not the work this process does.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self._start = (0.0, 0.0)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.seconds.append(time.perf_counter() - self._start[0])
        self.cpu_seconds.append(time.process_time() - self._start[1])


def _search(strategy: Any, cfg: dict[str, Any], seed: int) -> tuple[dict[str, Any], EpochTimer, dict[str, float]]:
    timer = EpochTimer()
    train = DigitsDataset("train", seed=cfg["split_seed"], limit=cfg["limit"])
    val = DigitsDataset("val", seed=cfg["split_seed"], limit=cfg["limit"])
    evaluator = Classification(
        learning_rate=cfg["learning_rate"],
        train_dataloaders=DataLoader(train, batch_size=cfg["batch_size"], shuffle=True),
        val_dataloaders=DataLoader(val, batch_size=cfg["batch_size"], shuffle=True),
        num_classes=10, max_epochs=cfg["epochs"], limit_train_batches=cfg["limit_batches"] or 1.0,
        callbacks=[timer], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    torch.manual_seed(seed)
    space = LeaseCellSpace(**cfg["space"])
    strategy.initialize(RawFormatModelSpace.from_model(space, evaluator), SequentialExecutionEngine())
    strategy.run()
    sample = next(strategy.list_models()).sample
    metrics = {k: float(v) for k, v in strategy.oneshot_module.trainer.callback_metrics.items()
               if "/" in k and not k.startswith("prob/")}
    return dict(sample), timer, metrics


def _retrain(sample: dict[str, Any], cfg: dict[str, Any], seed: int) -> float:
    torch.manual_seed(seed)
    space = LeaseCellSpace(**cfg["space"])
    result = retrain(space, sample, DigitsDataset("train", seed=cfg["split_seed"]),
                     DigitsDataset("test", seed=cfg["split_seed"]), epochs=cfg["retrain_epochs"],
                     learning_rate=cfg["learning_rate"], seed=seed)
    return result.test_accuracy


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark described by ``cfg``; returns the JSON-ready result."""
    torch.set_num_threads(cfg["threads"])
    runs: list[dict[str, Any]] = []
    for seed in cfg["seeds"]:
        for name in ("darts", "lease"):
            arc_lr = cfg["arc_learning_rate"]
            strategy = DARTS(arc_learning_rate=arc_lr) if name == "darts" else LeaSE(
                gamma=cfg["gamma"], pgd_steps=cfg["pgd_steps"], hypergradient="first_order",
                arc_learning_rate=arc_lr, seed=seed)
            sample, timer, metrics = _search(strategy, cfg, seed)
            accuracy = _retrain(sample, cfg, seed)
            skip = 1 if len(timer.seconds) > 1 else 0  # first epoch: warm-up
            wall, cpu = statistics.fmean(timer.seconds[skip:]), statistics.fmean(timer.cpu_seconds[skip:])
            runs.append({"strategy": name, "seed": seed, "architecture": sample, "epoch_seconds": timer.seconds,
                         "epoch_cpu_seconds": timer.cpu_seconds, "mean_epoch_seconds": wall,
                         "mean_epoch_cpu_seconds": cpu, "test_accuracy": accuracy, "final_metrics": metrics})
            print(f"  seed {seed} {name:5s}: {wall:6.2f} s/epoch wall, {cpu:6.2f} s/epoch CPU, "
                  f"retrained test accuracy {accuracy:.4f}, architecture {sample}", flush=True)
    summary: dict[str, Any] = {}
    for name in ("darts", "lease"):
        mine = [r for r in runs if r["strategy"] == name]
        t_mean, t_std = _mean_std([r["mean_epoch_seconds"] for r in mine])
        c_mean, c_std = _mean_std([r["mean_epoch_cpu_seconds"] for r in mine])
        a_mean, a_std = _mean_std([r["test_accuracy"] for r in mine])
        summary[name] = {"epoch_seconds_mean": t_mean, "epoch_seconds_std": t_std,
                         "epoch_cpu_seconds_mean": c_mean, "epoch_cpu_seconds_std": c_std,
                         "test_accuracy_mean": a_mean, "test_accuracy_std": a_std}
    pairs = list(zip([r for r in runs if r["strategy"] == "lease"], [r for r in runs if r["strategy"] == "darts"]))
    ratios = [lr["mean_epoch_seconds"] / dr["mean_epoch_seconds"] for lr, dr in pairs]
    cpu_ratios = [lr["mean_epoch_cpu_seconds"] / dr["mean_epoch_cpu_seconds"] for lr, dr in pairs]
    summary["time_ratio_lease_over_darts"] = statistics.fmean(ratios)
    summary["time_ratio_per_seed"] = ratios
    summary["cpu_time_ratio_lease_over_darts"] = statistics.fmean(cpu_ratios)
    summary["cpu_time_ratio_per_seed"] = cpu_ratios
    return {
        "benchmark": "bench_lease",
        "config": cfg,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": cfg["threads"]},
        "summary": summary,
        "runs": runs,
    }


def _table(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        "| strategy | search s/epoch, wall | search s/epoch, CPU | retrained test accuracy |",
        "|---|---|---|---|",
    ]
    for name, label in (("darts", "NNI DARTS (γ = 0)"), ("lease", f"LeaSE γ = {result['config']['gamma']:g}, "
                                                              f"{result['config']['pgd_steps']} PGD steps, first-order")):
        r = s[name]
        lines.append(f"| {label} | {r['epoch_seconds_mean']:.2f} ± {r['epoch_seconds_std']:.2f} | "
                     f"{r['epoch_cpu_seconds_mean']:.2f} ± {r['epoch_cpu_seconds_std']:.2f} | "
                     f"{r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f} |")
    lines.append(f"\ntime ratio LeaSE / DARTS per search epoch: {s['time_ratio_lease_over_darts']:.2f}× wall "
                 f"(per seed: {', '.join(f'{x:.2f}' for x in s['time_ratio_per_seed'])}), "
                 f"{s['cpu_time_ratio_lease_over_darts']:.2f}× CPU "
                 f"(per seed: {', '.join(f'{x:.2f}' for x in s['cpu_time_ratio_per_seed'])}); mean ± std over seeds")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, runs in seconds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8, help="search epochs")
    parser.add_argument("--retrain-epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)
    cfg: dict[str, Any] = {
        "dataset": "digits", "split_seed": 0, "limit": None, "limit_batches": None, "batch_size": 64,
        "learning_rate": 3e-3, "arc_learning_rate": 3e-3, "epochs": args.epochs, "retrain_epochs": args.retrain_epochs,
        "gamma": 1.0, "pgd_steps": 3, "seeds": args.seeds, "threads": args.threads,
        "space": {"in_channels": 1, "n_classes": 10, "width": 8, "n_cells": 2, "n_nodes": 3, "image_size": 8},
    }
    if args.smoke:
        cfg.update(limit=64, limit_batches=2, batch_size=16, epochs=2, retrain_epochs=1, seeds=[0],
                   space={**cfg["space"], "width": 4, "n_nodes": 2})
    print(f"bench_lease: {len(cfg['seeds'])} seed(s), {cfg['epochs']} search epochs, "
          f"{cfg['retrain_epochs']} retrain epochs", flush=True)
    result = run(cfg)
    print(_table(result))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
