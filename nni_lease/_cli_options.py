"""The options of ``nni-lease search`` and their checks: which modes take each option, and how each value is read.

:data:`SEARCH_OPTIONS` is the table :func:`nni_lease.cli.build_parser` turns into arguments; a value that
fails its check is an argparse error (one line, exit status 2), before any work.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nni_lease._limits import (
    MAX_BATCH_SIZE,
    MAX_CELLS,
    MAX_CONCURRENCY,
    MAX_EPOCHS,
    MAX_LIMIT,
    MAX_NODES,
    MAX_PGD_STEPS,
    MAX_RATE,
    MAX_SEED,
    MAX_TRIALS,
    MAX_WIDTH,
)

MODES: tuple[str, ...] = ("oneshot", "multi-trial", "hpo")
_ALL = frozenset(MODES)
_ONESHOT, _MULTI, _HPO = frozenset({"oneshot"}), frozenset({"multi-trial"}), frozenset({"hpo"})
_NNI = frozenset({"multi-trial", "hpo"})


# ------------------------------------------------------------------------------------------- types
# Each reads the text as a number, then checks it with art_fisher.utils (the checks of the Python API), so that
# the command line and the API refuse the same values with the same words.
def _checked(read: Callable[[str], Any], what: str, check: Callable[[Any, str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = read(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}; got {text[:40]!r}") from None
        try:
            return check(value, "the value")
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("the value ").rstrip(".")) from None

    return parse


# art_fisher.utils is imported when a value is checked, not with this module: importing art_fisher loads torch,
# which `nni-lease --help` and the one-line errors before any work do not need.
def _int_in(low: int, high: int) -> Callable[[str], int]:
    def check(value: int, name: str) -> int:
        from art_fisher.utils import check_int

        return check_int(value, name, low=low, high=high)

    return _checked(int, "an int", check)


def _real_in(low: float, high: float, *, low_open: bool) -> Callable[[str], float]:
    def check(value: float, name: str) -> float:
        from art_fisher.utils import check_real

        return check_real(value, name, low=low, high=high, low_open=low_open)

    return _checked(float, "a number", check)


_positive_float = _real_in(0.0, MAX_RATE, low_open=True)
_nonnegative_float = _real_in(0.0, MAX_RATE, low_open=False)
_fraction = _real_in(0.0, 1.0, low_open=False)
_seed = _int_in(0, MAX_SEED)
_port = _int_in(1, 65535)


def _limited(high: int) -> Callable[[str], int]:
    return _int_in(1, high)


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
            default=None,
            modes=_ALL,
            help="folder with mnist.npz (or the MNIST idx files) or the CIFAR-10 python batches "
            "(data_batch_1..5, test_batch); nothing is downloaded",
        ),
        _opt("--seed", default=0, modes=_ALL, type=_seed, help="seed of splits, initialisation, shuffling"),
        _opt(
            "--limit",
            default=None,
            modes=_ALL,
            type=_limited(MAX_LIMIT),
            help="use only this many samples per split (None: all)",
        ),
        _opt(
            "--epochs", default=5, modes=_ALL, type=_limited(MAX_EPOCHS), help="search epochs (per trial for NNI modes)"
        ),
        _opt(
            "--limit-batches",
            default=None,
            modes=_ALL,
            type=_limited(MAX_LIMIT),
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
            help="search space: lease_cell (nni_lease._spaces.LeaseCellSpace) or darts (NNI's hub DARTS cell "
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
    "LeaSE (nni_lease.core.LeaseConfig)": [
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
            help="first_order (approximation) or unrolled (the LeaSE paper's whole chain)",
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
            type=_limited(MAX_PGD_STEPS),
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
        _opt("--max-trials", default=10, modes=_NNI, type=_limited(MAX_TRIALS), help="trials in the experiment"),
        _opt("--concurrency", default=1, modes=_NNI, type=_limited(MAX_CONCURRENCY), help="trials at the same time"),
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
        _opt(
            "--retrain-epochs",
            default=3,
            modes=_HPO,
            type=_limited(MAX_EPOCHS),
            help="hpo: retraining epochs per trial",
        ),
    ],
}

#: The options that set LeaSE's settings (``LeaseConfig`` field names).
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
