"""Command line interface: ``nni-lease search`` and ``nni-lease retrain``.

``nni-lease search --mode oneshot`` calls :func:`nni_lease.oneshot.search_oneshot` (files:
``architecture.json``, ``metrics.csv``, ``curves.png`` in ``--output``); ``--mode multi-trial`` runs
:class:`nni_lease.multitrial.LeaseMultiTrial` under the NNI manager (web UI); ``--mode hpo`` tunes LeaSE's
γ, ε and steps in an NNI HPO experiment (:mod:`nni_lease.runtime`). ``nni-lease retrain ARCHITECTURE_JSON``
calls :func:`nni_lease.oneshot.retrain_architecture` and writes ``retrain.json``.

Every option belongs to the modes that use it (:data:`SEARCH_OPTIONS`); an option given to a mode that
would ignore it is an error, as is any bad value, and all of this is checked before any folder, file
or NNI experiment is created.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nni_lease import __version__, _requirements_problem
from nni_lease._cli_options import (
    _LEASE_DESTS,
    MODES,
    SEARCH_OPTIONS,
    _dest,
    _limited,
    _modes_text,
    _positive_float,
    _seed,
)
from nni_lease._limits import MAX_BATCH_SIZE, MAX_EPOCHS

logger = logging.getLogger(__name__)

_VERBOSE_HELP = (
    "also show NNI's and Lightning's INFO lines and the Python warnings raised in their code (by default only "
    "their warnings, each once, without colour codes)"
)


def _lease_config(args: argparse.Namespace, names: Sequence[str]) -> Any:
    from nni_lease.core._config import LeaseConfig

    return LeaseConfig.from_settings(**{n: getattr(args, n) for n in names}, seed=args.seed)


def _search_config(args: argparse.Namespace) -> Any:
    from nni_lease.oneshot._config import SearchConfig

    return SearchConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        seed=args.seed,
        limit=args.limit,
        epochs=args.epochs,
        limit_batches=args.limit_batches,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        arc_learning_rate=args.arc_learning_rate,
        width=args.width,
        cells=args.cells,
        nodes=args.nodes,
        progress=args.progress,
        space=args.space,
    )


def _search_oneshot(args: argparse.Namespace) -> int:
    from nni_lease.oneshot._workflow import ARCHITECTURE_FILE, CURVES_FILE, METRICS_FILE, search_oneshot

    config, lease = _search_config(args), _lease_config(args, _LEASE_DESTS)
    result = search_oneshot(args.output, config=config, lease=lease)
    out = result.output
    print(f"architecture: {json.dumps(result.architecture)}")
    if result.rows:
        last = result.rows[-1]
        print("last epoch: " + ", ".join(f"{k}={float(v):.4f}" for k, v in last.items() if k != "epoch" and v))
    print(
        f"search took {result.seconds:.1f} s; wrote {out / ARCHITECTURE_FILE}, {out / METRICS_FILE}, "
        f"{out / CURVES_FILE}"
    )
    return 0


def _run_nni_experiment(args: argparse.Namespace, start: Callable[..., Any]) -> int:
    """Shared part of the modes that run under the NNI manager: messages, Ctrl-C / SIGTERM, exit code."""
    from nni_lease.runtime._experiment import sigterm_as_interrupt
    from nni_lease.runtime._manager import PortInUseError

    def started(url: str, experiment_id: str) -> None:  # an exposure warning (--host) is logged just before
        print(f"experiment {experiment_id}: web UI at {url}  (Ctrl-C stops the experiment)", flush=True)

    try:
        with sigterm_as_interrupt():
            result = start(on_started=started)
    except (PortInUseError, RuntimeError) as exc:  # a taken port; a manager that died or listened beyond --host
        print(f"nni-lease search: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(result, tuple):  # (interrupted, lines to print)
        interrupted, lines = result
    else:
        scored = [r for r in result.strategy_state.get("history", []) if r.get("metric") is not None]
        best = max(scored, key=lambda r: r["metric"], default=None)
        interrupted, lines = (
            result.interrupted,
            [
                f"trials with a result: {len(scored)}; best: "
                + (f"{json.dumps(best['sample'])} (metric {best['metric']:.4f}, higher is better)" if best else "none"),
                f"most probable architecture under the learnt policy: {json.dumps(result.best_sample)}",
                f"records: {result.record_dir}",
            ],
        )
    print("\n".join(lines) + ("\nstopped by Ctrl-C" if interrupted else "\nexperiment stopped"))
    return 130 if interrupted else 0


def _search_multitrial(args: argparse.Namespace) -> int:
    from nni_lease._spaces import build_space
    from nni_lease.multitrial._strategy import LeaseMultiTrial
    from nni_lease.multitrial._trial import TRIAL_LEASE_SETTINGS, lease_evaluator
    from nni_lease.oneshot._config import SearchConfig
    from nni_lease.oneshot._workflow import load_splits, space_kwargs
    from nni_lease.runtime._config import build_config
    from nni_lease.runtime._experiment import run_multitrial

    config = SearchConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        seed=args.seed,
        limit=args.limit,
        epochs=args.epochs,
        limit_batches=args.limit_batches,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        width=args.width,
        cells=args.cells,
        nodes=args.nodes,
        space=args.space,
    )
    lease = {name: getattr(args, name) for name in TRIAL_LEASE_SETTINGS}
    evaluator = lease_evaluator(
        dataset=config.dataset,
        data_dir=config.data_dir,
        epochs=config.epochs,
        batch_size=config.batch_size,
        limit=config.limit,
        limit_batches=config.limit_batches,
        learning_rate=config.learning_rate,
        seed=config.seed,
        **lease,
    )
    strategy = LeaseMultiTrial(learning_rate=args.policy_learning_rate, seed=args.seed)
    build_config(
        max_trials=args.max_trials,
        concurrency=args.concurrency,
        training_service=args.training_service,
        experiment_dir=args.experiment_dir,
    )  # every check before the data is read
    train, _, _ = load_splits(config)
    space = build_space(config.space, **space_kwargs(config, train))
    return _run_nni_experiment(
        args,
        lambda on_started: run_multitrial(
            space,
            evaluator,
            strategy,
            port=args.port,
            host=args.host,
            max_trials=args.max_trials,
            concurrency=args.concurrency,
            training_service=args.training_service,
            experiment_dir=args.experiment_dir,
            experiment_id=args.resume,
            resume=args.resume is not None,
            keep_open=args.keep_open,
            on_started=on_started,
        ),
    )


def _search_hpo(args: argparse.Namespace) -> int:
    from nni_lease.oneshot._config import RetrainConfig
    from nni_lease.runtime._experiment import run_experiment
    from nni_lease.runtime._hpo import TUNED_SETTINGS, TrialConfig, build_hpo_experiment, check_resumable

    fixed = [n for n in _LEASE_DESTS if n not in TUNED_SETTINGS and n in args.given]
    config = TrialConfig(
        search=_search_config(args),
        lease={n: getattr(args, n) for n in fixed},
        retrain=RetrainConfig(epochs=args.retrain_epochs, seed=args.seed, data_dir=args.data_dir),
    )
    exp = build_hpo_experiment(
        max_trials=args.max_trials,
        concurrency=args.concurrency,
        config=config,
        training_service=args.training_service,
        experiment_dir=args.experiment_dir,
    )
    if args.resume is not None:
        check_resumable(exp, args.resume)
    # The NNI experiment (manager, web UI) starts here.
    return _run_nni_experiment(
        args,
        lambda on_started: (
            run_experiment(
                exp,
                port=args.port,
                host=args.host,
                resume=args.resume is not None,
                keep_open=args.keep_open,
                on_started=on_started,
            ),
            [f"records: {Path(exp.config.canonical_copy().experiment_working_directory) / exp.id}"],
        ),
    )


#: Search modes of ``nni-lease search --mode``: name -> function(args) -> exit code.
SEARCH_MODES: dict[str, Callable[[argparse.Namespace], int]] = {
    "oneshot": _search_oneshot,
    "multi-trial": _search_multitrial,
    "hpo": _search_hpo,
}


def _check_mode_options(args: argparse.Namespace) -> None:
    """Refuse options the chosen mode ignores (ValueError); then fill in the defaults of the others."""
    if not hasattr(args, "mode"):
        args.mode = "oneshot"
    args.given = {k for k in vars(args) if k not in ("command", "func", "mode")}
    for options in SEARCH_OPTIONS.values():
        for option in options:
            dest = _dest(option)
            if dest in args.given and args.mode not in option.modes:
                why = (
                    " (the HPO experiment tunes it)"
                    if args.mode == "hpo" and dest in ("gamma", "pgd_epsilon", "pgd_steps", "pgd_step_size")
                    else ""
                )
                raise ValueError(
                    f"{option.flags[0]} is not used by --mode {args.mode}{why}; "
                    f"it applies to {_modes_text(option.modes)}."
                )
            if dest not in args.given:
                setattr(args, dest, option.default)


def _search(args: argparse.Namespace) -> int:
    _check_mode_options(args)
    return SEARCH_MODES[args.mode](args)


# ------------------------------------------------------------------------------------------- retrain
def _retrain(args: argparse.Namespace) -> int:
    from nni_lease.oneshot._config import RetrainConfig
    from nni_lease.oneshot._workflow import retrain_architecture

    config = RetrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        data_dir=args.data_dir,
        progress=args.progress,
    )
    output = Path(args.output) if args.output else None
    summary = retrain_architecture(args.architecture, config=config, output=output)
    written = output or Path(args.architecture).with_name("retrain.json")
    print(
        f"test accuracy {summary['test_accuracy']:.4f} (val {summary['val_accuracy']:.4f}, "
        f"{summary['n_parameters']} parameters, {summary['seconds']:.1f} s); wrote {written}"
    )
    return 0


# ------------------------------------------------------------------------------------------- parser
class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (``PROG: error: ...; see PROG --help``), exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``nni-lease`` argument parser."""
    parser = _OneLineParser(
        prog="nni-lease",
        description="LeaSE (Learning by Self-Explanation) neural architecture search on NNI.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_OneLineParser)

    search = sub.add_parser(
        "search",
        help="run a LeaSE architecture search",
        argument_default=argparse.SUPPRESS,
        epilog="An option given to a --mode that does not use it is an error.",
    )
    search.add_argument("--mode", choices=list(MODES), default="oneshot", help="search mode (default: oneshot)")
    search.add_argument("--verbose", action="store_true", default=False, help=_VERBOSE_HELP)
    for title, options in SEARCH_OPTIONS.items():
        group = search.add_argument_group(title)
        for option in options:
            shown = "" if option.kwargs.get("action") == "store_true" else f"; default: {option.default}"
            group.add_argument(
                *option.flags, help=f"{option.help} [{_modes_text(option.modes)}{shown}]", **option.kwargs
            )
    search.set_defaults(func=_search)

    retrain = sub.add_parser(
        "retrain",
        help="train an exported architecture from scratch",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    retrain.add_argument("architecture", help="the architecture.json written by `nni-lease search`")
    retrain.add_argument("--output", default=None, help="result JSON (default: retrain.json beside the input)")
    retrain.add_argument(
        "--data-dir",
        default=None,
        help="MNIST / CIFAR-10 folder (default: the one used in the search)",
    )
    retrain.add_argument("--seed", type=_seed, default=0, help="seed of the initialisation and shuffling")
    retrain.add_argument("--epochs", type=_limited(MAX_EPOCHS), default=20)
    retrain.add_argument("--batch-size", type=_limited(MAX_BATCH_SIZE), default=64)
    retrain.add_argument("--learning-rate", type=_positive_float, default=3e-3)
    retrain.add_argument("--progress", action="store_true", help="show a progress bar")
    retrain.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)
    retrain.set_defaults(func=_retrain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nni-lease`` command line; returns the exit code (2 for a usage or setting error)."""
    problem = _requirements_problem()
    if problem is not None:  # one line naming the lease extra, not a traceback from deep inside an import
        print(f"nni-lease: error: {problem}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from nni_lease._cli_logging import cli_logging

    with cli_logging(verbose=getattr(args, "verbose", False)):
        try:
            return int(args.func(args))
        except (ValueError, FileNotFoundError) as exc:
            print(f"nni-lease {args.command}: error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
