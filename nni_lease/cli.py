"""Command line interface: ``nni-lease search`` and ``nni-lease retrain``.

``nni-lease search --mode oneshot`` calls :func:`nni_lease.oneshot.workflow.search_oneshot` (files:
``architecture.json``, ``metrics.csv``, ``curves.png`` in ``--output``); ``--mode multi-trial`` runs
:class:`nni_lease.multitrial.strategy.LeaseMultiTrial` under the NNI manager (web UI); ``--mode hpo`` tunes LeaSE's
γ, ε and steps in an NNI HPO experiment (:mod:`nni_lease.runtime.hpo`). ``nni-lease retrain ARCHITECTURE_JSON``
calls :func:`nni_lease.oneshot.workflow.retrain_architecture` and writes ``retrain.json``.

Every option belongs to the modes that use it (:data:`SEARCH_OPTIONS`); an option given to a mode that
would ignore it is an error, as is any bad value, and all of this is checked before any folder, file
or NNI experiment is created.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nni_lease import __version__
from nni_lease.limits import MAX_BATCH_SIZE, MAX_CELLS, MAX_COUNT, MAX_EPOCHS, MAX_NODES, MAX_SEED, MAX_WIDTH

logger = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("oneshot", "multi-trial", "hpo")
_ALL = frozenset(MODES)
_ONESHOT, _MULTI, _HPO = frozenset({"oneshot"}), frozenset({"multi-trial"}), frozenset({"hpo"})
_NNI = frozenset({"multi-trial", "hpo"})


# ------------------------------------------------------------------------------------------- types
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def _bounded_int(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}; got {text[:40]!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {what}; got {text[:40]}")
        return value

    return parse


def _float_in(low: float, high: float, *, low_open: bool, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
            raise argparse.ArgumentTypeError(f"must be {what}; got {text}")
        return value

    return parse


_positive_float = _float_in(0.0, math.inf, low_open=True, what="a positive finite number")
_nonnegative_float = _float_in(0.0, math.inf, low_open=False, what="a finite number >= 0")
_fraction = _float_in(0.0, 1.0, low_open=False, what="a number in [0, 1]")


_seed = _bounded_int(0, MAX_SEED, f"an integer from 0 to {MAX_SEED}")


def _limited(high: int) -> Callable[[str], int]:
    return _bounded_int(1, high, f"a positive integer (at most {high})")


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in [1, 65535]; got {text}")
    return value


class _FormerSpellings(argparse.Action):
    """An option whose first flag is its name; the others are former spellings, accepted with a warning."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        if option_string is not None and option_string != self.option_strings[0]:
            print(f"{parser.prog}: warning: {option_string} is deprecated and will stop working in the next release; "
                  f"use {self.option_strings[0]}.", file=sys.stderr)  # fmt: skip
        setattr(namespace, self.dest, values)


@dataclass(frozen=True)
class _Option:
    flags: tuple[str, ...]
    default: Any
    modes: frozenset[str]
    help: str
    kwargs: dict


def _opt(*flags: str, default: Any, modes: frozenset[str], help: str, **kwargs: Any) -> _Option:
    return _Option(flags, default, modes, help, kwargs)


#: ``nni-lease search`` options: group → [option]; each says which ``--mode`` values use it.
SEARCH_OPTIONS: dict[str, list[_Option]] = {
    "data and space": [
        _opt(
            "--dataset",
            default="digits",
            modes=_ALL,
            choices=["digits", "mnist", "cifar10"],
            help="data set (digits: scikit-learn's embedded 8x8 digits)",
        ),
        _opt(
            "--data-dir",
            "--data-root",
            default=None,
            modes=_ALL,
            action=_FormerSpellings,
            help="folder with mnist.npz (or the MNIST idx files) or the CIFAR-10 python batches "
            "(data_batch_1..5, test_batch); nothing is downloaded",
        ),
        _opt("--seed", default=0, modes=_ALL, type=_seed, help="seed of splits, initialisation, shuffling"),
        _opt(
            "--limit",
            default=None,
            modes=_ALL,
            type=_limited(MAX_COUNT),
            help="use only this many samples per split (None: all)",
        ),
        _opt(
            "--epochs", default=5, modes=_ALL, type=_limited(MAX_EPOCHS), help="search epochs (per trial for NNI modes)"
        ),
        _opt(
            "--limit-batches",
            default=None,
            modes=_ALL,
            type=_limited(MAX_COUNT),
            help="training batches per epoch (None: all)",
        ),
        _opt("--batch-size", default=64, modes=_ALL, type=_limited(MAX_BATCH_SIZE), help="batch size"),
        _opt(
            "--learning-rate",
            default=3e-3,
            modes=_ALL,
            type=_positive_float,
            help="explainer weights (Adam); multi-trial: also the listener",
        ),
        _opt(
            "--space",
            default="lease_cell",
            modes=_ALL,
            choices=["lease_cell", "darts"],
            help="search space: lease_cell (nni_lease.spaces.LeaseCellSpace) or darts (NNI's hub DARTS cell "
            "space, nni.nas.hub.pytorch.DARTS)",
        ),
        _opt(
            "--width",
            default=None,
            modes=_ALL,
            type=_limited(MAX_WIDTH),
            help="channels in the cells (None: 8 for lease_cell, 4 for darts)",
        ),
        _opt(
            "--cells",
            default=None,
            modes=_ALL,
            type=_limited(MAX_CELLS),
            help="number of cells (None: 2 for lease_cell, 3 for darts, at least 3)",
        ),
        _opt(
            "--nodes",
            default=None,
            modes=_ALL,
            type=_limited(MAX_NODES),
            help="nodes per cell (None: 2 for lease_cell; darts cells have 4)",
        ),
    ],
    "one-shot": [
        _opt("--output", default="lease-search", modes=_ONESHOT, help="output folder"),
        _opt(
            "--arc-learning-rate",
            default=3e-4,
            modes=_ONESHOT | _HPO,
            type=_positive_float,
            help="architecture weights (DARTS's Adam)",
        ),
        _opt("--progress", default=False, modes=_ONESHOT, action="store_true", help="show progress bars"),
    ],
    "LeaSE (nni_lease.core.settings.LeaseSettings)": [
        _opt(
            "--gamma",
            default=1.0,
            modes=_ONESHOT | _MULTI,
            type=_nonnegative_float,
            help="weight of the listener's loss (0: DARTS); hpo tunes it",
        ),
        _opt(
            "--hypergradient",
            default="first_order",
            modes=_ONESHOT | _HPO,
            choices=["first_order", "unrolled"],
            help="first_order (approximation) or unrolled (the seed's whole chain)",
        ),
        _opt(
            "--pgd-epsilon",
            default=0.5,
            modes=_ONESHOT | _MULTI,
            type=_positive_float,
            help="explanation ball radius, input units; hpo tunes it",
        ),
        _opt("--pgd-norm", default="l2", modes=_ALL, choices=["l2", "linf"], help="explanation ball"),
        _opt(
            "--pgd-steps",
            default=2,
            modes=_ONESHOT | _MULTI,
            type=_positive_int,
            help="explanation ascent steps; hpo tunes it",
        ),
        _opt(
            "--pgd-step-size",
            default=None,
            modes=_ONESHOT | _MULTI,
            type=_positive_float,
            help="ascent step (default 2.5 * epsilon / steps)",
        ),
        _opt(
            "--pgd-random-start",
            default=0.25,
            modes=_ALL,
            type=_fraction,
            help="random start radius, fraction of epsilon",
        ),
        _opt(
            "--pgd-objective",
            default="predicted_label",
            modes=_ALL,
            choices=["predicted_label", "soft_prediction"],
            help="target of the explanation's cross entropy",
        ),
        _opt(
            "--weighting",
            default="reweight",
            modes=_ALL,
            choices=["reweight", "product"],
            help="listener input: x*(1-delta/max|delta|) or delta*x",
        ),
        _opt(
            "--listener-learning-rate",
            default=1e-3,
            modes=_ONESHOT | _HPO,
            type=_positive_float,
            help="listener weights (Adam)",
        ),
        _opt(
            "--unrolled-step-size",
            default=None,
            modes=_ONESHOT | _HPO,
            type=_positive_float,
            help="virtual step of --hypergradient unrolled (default: each network's learning rate)",
        ),
    ],
    "NNI experiment (--mode multi-trial / hpo; web UI on --port)": [
        _opt("--max-trials", default=10, modes=_NNI, type=_positive_int, help="trials in the experiment"),
        _opt("--concurrency", default=1, modes=_NNI, type=_positive_int, help="trials at the same time"),
        _opt("--port", default=8080, modes=_NNI, type=_port, help="NNI manager port (web UI and REST API)"),
        _opt(
            "--host",
            default="127.0.0.1",
            modes=_NNI,
            choices=["127.0.0.1", "0.0.0.0", "::"],
            help="where the NNI manager listens; 0.0.0.0 / :: expose it to the network, where anyone who "
            "reaches the port can run code as you (README, Security notes)",
        ),
        _opt("--experiment-dir", default=None, modes=_NNI, help="experiment records (default ~/nni-experiments)"),
        _opt("--training-service", default="local", modes=_NNI, help="'local' or a YAML/JSON training-service file"),
        _opt("--resume", default=None, modes=_NNI, metavar="EXPERIMENT_ID", help="continue a stopped experiment"),
        _opt(
            "--keep-open",
            default=False,
            modes=_NNI,
            action="store_true",
            help="keep the web UI up after the search, until Ctrl-C",
        ),
        _opt(
            "--policy-learning-rate",
            default=0.5,
            modes=_MULTI,
            type=_positive_float,
            help="multi-trial policy step size",
        ),
        _opt("--retrain-epochs", default=3, modes=_HPO, type=_positive_int, help="hpo: retraining epochs per trial"),
    ],
}

#: LeaSE options (``LeaseSettings`` field names) the command line sets.
_LEASE_DESTS: tuple[str, ...] = (
    "gamma",
    "hypergradient",
    "pgd_epsilon",
    "pgd_norm",
    "pgd_steps",
    "pgd_step_size",
    "pgd_random_start",
    "pgd_objective",
    "weighting",
    "listener_learning_rate",
    "unrolled_step_size",
)


def _dest(option: _Option) -> str:
    return option.flags[0].lstrip("-").replace("-", "_")


def _modes_text(modes: frozenset[str]) -> str:
    return "all modes" if modes == _ALL else "/".join(m for m in MODES if m in modes)


# ------------------------------------------------------------------------------------------- search modes
def _lease_settings(args: argparse.Namespace, names: Sequence[str]) -> Any:
    from nni_lease.core.settings import LeaseSettings

    return LeaseSettings.from_options(**{n: getattr(args, n) for n in names}, seed=args.seed)


def _search_config(args: argparse.Namespace) -> Any:
    from nni_lease.oneshot.workflow import SearchConfig

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
    from nni_lease.oneshot.workflow import ARCHITECTURE_FILE, CURVES_FILE, METRICS_FILE, search_oneshot

    config, settings = _search_config(args), _lease_settings(args, _LEASE_DESTS)
    result = search_oneshot(args.output, config=config, settings=settings)
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
    from nni_lease.runtime.experiment import PortInUseError, sigterm_as_interrupt

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
    from nni_lease.multitrial.strategy import LeaseMultiTrial
    from nni_lease.multitrial.trial import TRIAL_LEASE_OPTIONS, lease_evaluator
    from nni_lease.oneshot.workflow import SearchConfig, load_splits, space_kwargs
    from nni_lease.runtime.experiment import build_config, run_multitrial
    from nni_lease.spaces import build_space

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
    lease = {name: getattr(args, name) for name in TRIAL_LEASE_OPTIONS}
    evaluator = lease_evaluator(
        dataset=config.dataset,
        data_dir=config.data_dir,
        epochs=config.epochs,
        batch_size=config.batch_size,
        max_batches=config.limit_batches,
        train_limit=config.limit,
        val_limit=config.limit,
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
    from nni_lease.oneshot.workflow import RetrainConfig
    from nni_lease.runtime.experiment import run_experiment
    from nni_lease.runtime.hpo import TUNED_OPTIONS, TrialConfig, build_hpo_experiment, check_resumable

    fixed = [n for n in _LEASE_DESTS if n not in TUNED_OPTIONS and n in args.given]
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
    from nni_lease.oneshot.workflow import RetrainConfig, retrain_architecture

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
        "--data-root",
        default=None,
        action=_FormerSpellings,
        help="MNIST / CIFAR-10 folder (default: the one used in the search)",
    )
    retrain.add_argument("--seed", type=_seed, default=0, help="seed of the initialisation and shuffling")
    retrain.add_argument("--epochs", type=_limited(MAX_EPOCHS), default=20)
    retrain.add_argument("--batch-size", type=_limited(MAX_BATCH_SIZE), default=64)
    retrain.add_argument("--learning-rate", type=_positive_float, default=3e-3)
    retrain.add_argument("--progress", action="store_true", help="show a progress bar")
    retrain.set_defaults(func=_retrain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nni-lease`` command line; returns the exit code (2 for a usage or setting error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # NNI configures its own log handlers; only nni_lease's messages get one here (no duplicates).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("nni_lease")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    # retraining runs art_fisher.models.train_model, which logs each epoch when there is no progress bar
    train_logger = logging.getLogger("art_fisher.models")
    train_logger.addHandler(handler)
    train_logger.setLevel(logging.INFO)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"nni-lease {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        package_logger.removeHandler(handler)
        train_logger.removeHandler(handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
