"""Command line interface: ``nni-lease search`` and ``nni-lease retrain``.

``nni-lease search --mode oneshot`` runs ``NasExperiment(space, evaluator, LeaSE(...)).run()`` on the
small cell space and writes, into ``--output``:

- ``architecture.json``: the exported architecture plus what is needed to rebuild it (data set, space);
- ``metrics.csv``: one row per epoch with the metrics LeaSE logs (explainer / listener losses and
  accuracies, mean |δ|, the LeaSE objective);
- ``curves.png``: those curves.

``nni-lease retrain ARCHITECTURE_JSON`` trains the exported architecture from scratch and writes
``retrain.json`` (test accuracy and more) next to it.

Search modes live in :data:`SEARCH_MODES` (mode name → function taking the parsed arguments and returning
an exit code); other modes register there and may add their own options in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nni_lease import __version__

logger = logging.getLogger(__name__)

ARCHITECTURE_FILE = "architecture.json"
METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
RETRAIN_FILE = "retrain.json"


# ------------------------------------------------------------------------------------------- helpers
def _datasets(name: str, root: str | None, seed: int, limit: int | None) -> tuple[Any, Any, Any]:
    from nni_lease.data import make_dataset

    return tuple(make_dataset(name, split, root=root, seed=seed, limit=limit) for split in ("train", "val", "test"))


def _space_kwargs(args: argparse.Namespace, train: Any) -> dict[str, Any]:
    channels, side, _ = train.input_shape
    return {
        "in_channels": int(channels),
        "n_classes": int(train.n_classes),
        "width": args.width,
        "n_cells": args.cells,
        "n_nodes": args.nodes,
        "image_size": int(side),
    }


def _epoch_rows(lightning_csv: Path) -> list[dict[str, str]]:
    """Collapse Lightning's CSV (one row per logging call) into one row per epoch of LeaSE's metrics."""
    from nni_lease.strategy import METRICS

    rows: dict[int, dict[str, str]] = {}
    with lightning_csv.open() as fh:
        for row in csv.DictReader(fh):
            if row.get("epoch", "") == "":
                continue
            epoch = int(float(row["epoch"]))
            out = rows.setdefault(epoch, {"epoch": str(epoch)})
            for name in METRICS:
                if row.get(name, "") != "":
                    out[name] = row[name]
    return [rows[e] for e in sorted(rows)]


def _write_metrics(rows: list[dict[str, str]], path: Path) -> None:
    from nni_lease.strategy import METRICS

    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", *METRICS], restval="")
        writer.writeheader()
        writer.writerows(rows)


def _plot_curves(rows: list[dict[str, str]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [
        ("loss (nats)", ["explainer/train_loss", "explainer/val_loss", "listener/train_loss",
                         "listener/val_loss", "lease/objective"]),
        ("accuracy", ["explainer/train_acc", "explainer/val_acc", "listener/train_acc", "listener/val_acc"]),
        ("mean |δ| (input units)", ["explanation/mean_abs_delta"]),
    ]
    for ax, (ylabel, names) in zip(axes, panels):
        for name in names:
            values = [float(r[name]) if r.get(name) else float("nan") for r in rows]
            ax.plot(epochs, values, marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- search
def _search_oneshot(args: argparse.Namespace) -> int:
    import torch
    from nni.nas.evaluator.pytorch import Classification, DataLoader
    from nni.nas.experiment import NasExperiment
    from pytorch_lightning.loggers import CSVLogger

    from nni_lease.spaces import LeaseCellSpace
    from nni_lease.strategy import LeaSE

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    train, val, _ = _datasets(args.dataset, args.data_root, args.seed, args.limit)
    space_kwargs = _space_kwargs(args, train)
    strategy = LeaSE(
        gamma=args.gamma,
        pgd_steps=args.pgd_steps,
        pgd_epsilon=args.pgd_epsilon,
        pgd_step_size=args.pgd_step_size,
        hypergradient=args.hypergradient,
        arc_learning_rate=args.arc_learning_rate,
        listener_learning_rate=args.listener_learning_rate,
        seed=args.seed,
    )
    torch.manual_seed(args.seed)
    space = LeaseCellSpace(**space_kwargs)
    evaluator = Classification(
        learning_rate=args.learning_rate,
        train_dataloaders=DataLoader(train, batch_size=args.batch_size, shuffle=True),
        val_dataloaders=DataLoader(val, batch_size=args.batch_size, shuffle=True),
        num_classes=train.n_classes,
        max_epochs=args.epochs,
        limit_train_batches=args.limit_batches if args.limit_batches else 1.0,
        logger=CSVLogger(save_dir=str(out), name="lightning_logs", version=0),
        enable_checkpointing=False,
        enable_progress_bar=args.progress,
        enable_model_summary=False,
    )
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = str(out / "nni-experiments")
    start = time.perf_counter()
    experiment.run()
    seconds = time.perf_counter() - start
    architecture = experiment.export_top_models(formatter="dict")[0]

    record = {
        "architecture": architecture,
        "mode": "oneshot",
        "dataset": args.dataset,
        "data_root": args.data_root,
        "seed": args.seed,
        "space": {"name": "LeaseCellSpace", "kwargs": space_kwargs},
        "strategy": {
            "name": "LeaSE", "gamma": strategy.gamma, "hypergradient": strategy.hypergradient,
            "pgd_steps": strategy.pgd_steps, "pgd_epsilon": strategy.pgd_epsilon,
            "pgd_step_size": strategy.pgd_step_size, "epochs": args.epochs,
        },
        "search_seconds": seconds,
    }
    (out / ARCHITECTURE_FILE).write_text(json.dumps(record, indent=2))
    rows = _epoch_rows(out / "lightning_logs" / "version_0" / "metrics.csv")
    _write_metrics(rows, out / METRICS_FILE)
    _plot_curves(rows, out / CURVES_FILE, f"LeaSE search on {args.dataset} (gamma={strategy.gamma})")
    print(f"architecture: {json.dumps(architecture)}")
    if rows:
        last = rows[-1]
        print("last epoch: " + ", ".join(f"{k}={float(v):.4f}" for k, v in last.items() if k != "epoch" and v))
    print(f"search took {seconds:.1f} s; wrote {out / ARCHITECTURE_FILE}, {out / METRICS_FILE}, {out / CURVES_FILE}")
    return 0


def _run_nni_experiment(args: argparse.Namespace, start: Callable[..., Any]) -> int:
    """Shared part of the modes that run under the NNI manager: messages, Ctrl-C / SIGTERM, exit code."""
    from nni_lease.experiment import PortInUseError, sigterm_as_interrupt

    def started(url: str, experiment_id: str) -> None:  # an exposure warning (--host) is logged just before
        print(f"experiment {experiment_id}: web UI at {url}  (Ctrl-C stops the experiment)", flush=True)

    try:
        with sigterm_as_interrupt():
            result = start(on_started=started)
    except PortInUseError as exc:
        print(f"nni-lease search: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(result, tuple):  # (interrupted, lines to print)
        interrupted, lines = result
    else:
        scored = [r for r in result.strategy_state.get("history", []) if r["objective"] is not None]
        best = min(scored, key=lambda r: r["objective"], default=None)
        interrupted, lines = result.interrupted, [
            f"trials with a result: {len(scored)}; best: "
            + (f"{json.dumps(best['sample'])} (objective {best['objective']:.4f})" if best else "none"),
            f"most probable architecture under the learnt policy: {json.dumps(result.best_sample)}",
            f"records: {result.record_dir}"]
    print("\n".join(lines) + ("\nstopped by Ctrl-C" if interrupted else "\nexperiment stopped"))
    return 130 if interrupted else 0


def _search_multitrial(args: argparse.Namespace) -> int:
    from nni_lease.experiment import run_multitrial
    from nni_lease.multitrial import LeaseMultiTrial
    from nni_lease.spaces import LeaseCellSpace
    from nni_lease.trial import lease_evaluator

    train, _, _ = _datasets(args.dataset, args.data_root, args.seed, args.limit)
    space = LeaseCellSpace(**_space_kwargs(args, train))
    evaluator = lease_evaluator(
        dataset=args.dataset, data_root=args.data_root, gamma=args.gamma, epochs=args.epochs,
        batch_size=args.batch_size, max_batches=args.limit_batches, train_limit=args.limit, val_limit=args.limit,
        learning_rate=args.learning_rate, pgd_epsilon=args.pgd_epsilon, pgd_step_size=args.pgd_step_size,
        pgd_steps=args.pgd_steps, seed=args.seed,
    )
    strategy = LeaseMultiTrial(learning_rate=args.policy_learning_rate, seed=args.seed)
    return _run_nni_experiment(args, lambda on_started: run_multitrial(
        space, evaluator, strategy, port=args.port, host=args.host, max_trials=args.max_trials,
        concurrency=args.concurrency, training_service=args.training_service, experiment_dir=args.experiment_dir,
        experiment_id=args.resume, resume=args.resume is not None, keep_open=args.keep_open, on_started=on_started))


def _search_hpo(args: argparse.Namespace) -> int:
    from nni_lease.experiment import run_experiment
    from nni_lease.hpo import build_hpo_experiment

    search_args = ["--dataset", args.dataset, "--seed", str(args.seed), "--epochs", str(args.epochs),
                   "--width", str(args.width), "--cells", str(args.cells), "--nodes", str(args.nodes)]
    for flag, value in [("--data-root", args.data_root), ("--limit", args.limit), ("--limit-batches", args.limit_batches)]:
        if value is not None:
            search_args += [flag, str(value)]
    exp = build_hpo_experiment(max_trials=args.max_trials, concurrency=args.concurrency, search_args=search_args,
                               retrain_args=["--epochs", str(args.retrain_epochs)],
                               training_service=args.training_service, experiment_dir=args.experiment_dir)
    if args.resume is not None:
        exp.id = args.resume
    return _run_nni_experiment(args, lambda on_started: (run_experiment(
        exp, port=args.port, host=args.host, resume=args.resume is not None, keep_open=args.keep_open,
        on_started=on_started),
        [f"records: {Path(exp.config.canonical_copy().experiment_working_directory) / exp.id}"]))


#: Search modes of ``nni-lease search --mode``: name -> function(args) -> exit code.
SEARCH_MODES: dict[str, Callable[[argparse.Namespace], int]] = {
    "oneshot": _search_oneshot,
    "multi-trial": _search_multitrial,
    "hpo": _search_hpo,
}


def _search(args: argparse.Namespace) -> int:
    return SEARCH_MODES[args.mode](args)


# ------------------------------------------------------------------------------------------- retrain
def _retrain(args: argparse.Namespace) -> int:
    import torch

    from nni_lease.retrain import retrain
    from nni_lease.spaces import LeaseCellSpace

    path = Path(args.architecture)
    if not path.is_file():
        print(f"nni-lease retrain: architecture file {path} not found", file=sys.stderr)
        return 2
    record = json.loads(path.read_text())
    if record.get("space", {}).get("name") != "LeaseCellSpace" or "architecture" not in record:
        print(f"nni-lease retrain: {path} is not an architecture written by `nni-lease search`", file=sys.stderr)
        return 2
    dataset = record.get("dataset", "digits")
    root = args.data_root or record.get("data_root")
    train, val, test = _datasets(dataset, root, record.get("seed", 0), None)
    torch.manual_seed(args.seed)
    space = LeaseCellSpace(**record["space"]["kwargs"])
    result = retrain(space, record["architecture"], train, test, val=val, epochs=args.epochs,
                     batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
                     progress=args.progress)
    output = Path(args.output) if args.output else path.with_name(RETRAIN_FILE)
    output.write_text(json.dumps({"architecture": record["architecture"], "dataset": dataset,
                                  "epochs": args.epochs, "seed": args.seed, **result.as_dict()}, indent=2))
    print(f"test accuracy {result.test_accuracy:.4f} (val {result.val_accuracy:.4f}, "
          f"{result.n_parameters} parameters, {result.seconds:.1f} s); wrote {output}")
    return 0


# ------------------------------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=["digits", "cifar10"], default="digits",
                        help="data set (default: scikit-learn's embedded 8x8 digits)")
    parser.add_argument("--data-root", default=None,
                        help="folder with CIFAR-10 python batches (data_batch_1..5, test_batch); nothing is downloaded")
    parser.add_argument("--seed", type=int, default=0, help="seed of splits, initialisation and shuffling")
    parser.add_argument("--progress", action="store_true", help="show progress bars")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``nni-lease`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="nni-lease",
        description="LeaSE (Learning by Self-Explanation) neural architecture search on NNI.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    search = sub.add_parser("search", help="run a LeaSE architecture search",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    search.add_argument("--mode", choices=sorted(SEARCH_MODES), default="oneshot", help="search mode")
    search.add_argument("--output", default="lease-search", help="output folder")
    _add_data_args(search)
    search.add_argument("--limit", type=_positive_int, default=None, help="use only this many samples per split")
    search.add_argument("--epochs", type=_positive_int, default=5, help="search epochs")
    search.add_argument("--limit-batches", type=_positive_int, default=None,
                        help="training batches per epoch (default: all)")
    search.add_argument("--batch-size", type=_positive_int, default=64)
    search.add_argument("--learning-rate", type=float, default=3e-3, help="explainer weights (Adam)")
    search.add_argument("--width", type=_positive_int, default=8, help="channels in the cells")
    search.add_argument("--cells", type=_positive_int, default=2, help="number of cells")
    search.add_argument("--nodes", type=_positive_int, default=2, help="nodes per cell")
    lease = search.add_argument_group("LeaSE")
    lease.add_argument("--gamma", type=float, default=1.0, help="weight of the listener's loss (0: DARTS)")
    lease.add_argument("--hypergradient", choices=["first_order", "unrolled"], default="first_order")
    lease.add_argument("--pgd-steps", type=int, default=3)
    lease.add_argument("--pgd-epsilon", type=float, default=8 / 255, help="L-inf radius, input units")
    lease.add_argument("--pgd-step-size", type=float, default=None, help="default 2.5 * epsilon / steps")
    lease.add_argument("--arc-learning-rate", type=float, default=3e-4)
    lease.add_argument("--listener-learning-rate", type=float, default=1e-3)
    nni_exp = search.add_argument_group("NNI experiment (--mode multi-trial / hpo; web UI on --port)")
    nni_exp.add_argument("--max-trials", type=_positive_int, default=10, help="trials in the experiment")
    nni_exp.add_argument("--concurrency", type=_positive_int, default=1, help="trials at the same time")
    nni_exp.add_argument("--port", type=int, default=8080, help="NNI manager port (web UI and REST API)")
    nni_exp.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"],
                         help="where the NNI manager listens; 0.0.0.0 / :: expose it to the network, where anyone "
                              "who reaches the port can run code as you (README, Security notes)")
    nni_exp.add_argument("--experiment-dir", default=None, help="experiment records (default ~/nni-experiments)")
    nni_exp.add_argument("--training-service", default="local", help="'local' or a YAML/JSON training-service file")
    nni_exp.add_argument("--resume", default=None, metavar="EXPERIMENT_ID", help="continue a stopped experiment")
    nni_exp.add_argument("--keep-open", action="store_true", help="keep the web UI up after the search, until Ctrl-C")
    nni_exp.add_argument("--policy-learning-rate", type=float, default=0.5, help="multi-trial policy step size")
    nni_exp.add_argument("--retrain-epochs", type=_positive_int, default=3, help="hpo: retraining epochs per trial")
    search.set_defaults(func=_search)

    retrain = sub.add_parser("retrain", help="train an exported architecture from scratch",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    retrain.add_argument("architecture", help=f"the {ARCHITECTURE_FILE} written by `nni-lease search`")
    retrain.add_argument("--output", default=None, help=f"result JSON (default: {RETRAIN_FILE} beside the input)")
    retrain.add_argument("--data-root", default=None, help="CIFAR-10 folder (default: the one used in the search)")
    retrain.add_argument("--seed", type=int, default=0, help="seed of the initialisation and shuffling")
    retrain.add_argument("--epochs", type=_positive_int, default=20)
    retrain.add_argument("--batch-size", type=_positive_int, default=64)
    retrain.add_argument("--learning-rate", type=float, default=3e-3)
    retrain.add_argument("--progress", action="store_true", help="show a progress bar")
    retrain.set_defaults(func=_retrain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nni-lease`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # NNI configures its own log handlers; only nni_lease's messages get one here (no duplicates).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("nni_lease")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"nni-lease {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
