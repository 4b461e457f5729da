"""Command line interface: ``art-fisher``."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from art_fisher import __version__
from art_fisher.utils import check_int

if TYPE_CHECKING:  # the evaluation imports ART and torch: loaded only when a command runs
    from art_fisher.evaluation import EvaluationConfig

logger = logging.getLogger(__name__)

_DEFAULT_OUTPUT = "art_fisher_results"


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or len(values) > 64 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers such as 0.5,0.5,0.5; got {text!r}")
    return values


def _clip(text: str) -> tuple[float, float]:
    values = _floats(text)
    if len(values) != 2 or not values[0] < values[1]:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with LOW < HIGH, such as 0,1; got {text!r}")
    return values[0], values[1]


def _threads(text: str) -> int:
    try:
        return check_int(int(text), "the value", low=1, high=1024)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be an int in [1, 1024]; got {text[:40]!r}") from None


_MODEL_STATUS = {
    "given": "given with --model",
    "cached": "loaded from the cache",
    "trained": "trained here and cached",
    "rebuilt": "trained again: the cache file was unusable, now replaced",
    "uncached": "trained here; the cache could not be written",
}


def _config(args: argparse.Namespace, progress: bool) -> EvaluationConfig:
    """The run's :class:`~art_fisher.evaluation.EvaluationConfig`, built once from the options."""
    from art_fisher import evaluation

    return evaluation.EvaluationConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        model=args.model,
        arch=args.arch,
        attacks=_names(args.attacks),
        eps=args.eps,
        detectors=None if args.detectors is None else _names(args.detectors),
        n_samples=args.n_samples,
        seed=args.seed,
        device=args.device,
        output_dir=args.output,
        epochs=args.epochs,
        batch_size=args.batch_size,
        target_fpr=args.target_fpr,
        progress=progress,
        tau=args.tau,
        adaptive=args.adaptive,
        data=args.data,
        clip_values=args.clip_values,
        mean=args.mean,
        std=args.std,
    )


def _run_evaluate(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    from art_fisher import distributed

    torch.set_num_threads(args.threads)
    progress = not args.quiet and sys.stderr.isatty()
    try:
        distributed.init_from_env(args.device)
    except (ValueError, RuntimeError) as exc:
        return _error(exc)
    try:
        return _evaluate_once(args, progress)
    finally:
        if distributed.world_size() > 1:
            dist.destroy_process_group()


def _error(message: object) -> int:
    """Print one error line (on rank 0 only, under torchrun) and return exit code 2."""
    from art_fisher.distributed import is_writer

    if is_writer():
        print(f"art-fisher evaluate: error: {message}", file=sys.stderr)
    return 2


def _evaluate_once(args: argparse.Namespace, progress: bool) -> int:
    from art_fisher import evaluation
    from art_fisher.distributed import is_writer

    try:  # settings, files and data / model loading: a user error gets one line, not a traceback
        config = _config(args, progress)
        if args.seeds is not None:
            return _run_seeds(args, config)
        plan = evaluation.prepare(config)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        return _error(exc)
    try:
        result = evaluation.run_plan(plan)
    except ValueError as exc:  # e.g. a model whose outputs are not finite: refused with its name
        return _error(exc)
    if not is_writer():
        return 0
    settings = result.settings
    print(
        f"{settings['dataset']} / {settings['arch']}: clean test accuracy {settings['clean_test_accuracy']:.4f}, "
        f"{settings['n_samples']} images attacked, eps {settings['eps']:.4g} (FGSM/PGD), seed {settings['seed']}, "
        f"{result.timings['total']:.1f} s"
    )
    print(result.format_table())
    model_path = result.paths.get("model", "given in memory")
    print(f"model: {model_path} ({_MODEL_STATUS.get(settings['model_status'], settings['model_status'])})")
    print(f"report: {result.paths['report_md']}")
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (``PROG: error: ...; see PROG --help``), exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _run_seeds(args: argparse.Namespace, config: EvaluationConfig) -> int:
    from art_fisher.distributed import is_writer
    from art_fisher.evaluation import evaluate_seeds
    from art_fisher.evaluation._seeds import parse_seeds

    try:
        seeds = parse_seeds(args.seeds)
        result = evaluate_seeds(config, seeds=seeds)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        return _error(exc)
    if not is_writer():
        return 0
    print(f"seeds {', '.join(map(str, seeds))}: mean ± sd")
    print(result.format_table())
    print(f"report: {result.paths['report_md']}")
    return 0


def _add_run_arguments(ev: argparse.ArgumentParser) -> None:
    """The options of ``evaluate`` that set how the run goes (sizes, seeds, device, operating point, output)."""
    ev.add_argument("--n-samples", type=int, default=300, help="test images to attack (default: %(default)s)")
    ev.add_argument("--seed", type=int, default=0, help="seed of everything (default: %(default)s)")
    ev.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds, e.g. 0,1,2: one run per seed (model, images, splits) and every table as "
        "mean ± sd, with the detection-aware security curve (replaces --seed)",
    )
    ev.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    ev.add_argument(
        "--threads",
        type=_threads,
        default=1,
        help="torch's intra-op CPU threads, 1 to 1024 (default: %(default)s: these small models gain little from "
        "more, and more threads than free cores slow torch down several times on a shared CPU)",
    )
    ev.add_argument("--epochs", type=int, default=None, help="epochs when the model is trained here")
    ev.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="batch size of attacks and detectors, 1 to 65536 (default: %(default)s)",
    )
    ev.add_argument(
        "--target-fpr",
        type=float,
        default=0.05,
        help="the operating point: every TPR / FPR / flag rate is taken at the threshold flagging this share of "
        "held-out clean images (default: %(default)s)",
    )
    ev.add_argument(
        "--tau",
        type=float,
        default=None,
        help="many-class heads: Fisher metrics over the classes holding 1 - TAU of each sample's probability "
        "(a lower bound at fewer backward passes; default: exact)",
    )
    ev.add_argument(
        "--adaptive",
        action="store_true",
        help="also attack classifier + detector together (ART's PGD L-inf at --eps and L2 on DetectorClassifier) "
        "for every detector with input gradients; several minutes",
    )
    ev.add_argument("--output", default=_DEFAULT_OUTPUT, help="output folder (default: ./%(default)s)")
    talk = ev.add_mutually_exclusive_group()
    talk.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar and no log lines below warnings; the tables, the model path and the report path",
    )
    talk.add_argument(
        "--verbose",
        action="store_true",
        help="log every step (training epochs, each attack's batches, each detector fit), not only one line per stage",
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the ``art-fisher`` argument parser."""
    from art_fisher.data._loaders import DATASETS
    from art_fisher.evaluation import ATTACKS, DEFAULT_ATTACKS, DEFAULT_DETECTORS, DETECTORS
    from art_fisher.models._architectures import ARCHITECTURES

    parser = _OneLineParser(
        prog="art-fisher",
        description="Fisher-information detectors of adversarial examples for ART.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_OneLineParser)
    ev = sub.add_parser(
        "evaluate",
        help="attack a model with ART and report how well each detector catches each attack",
        description=(
            "Attack a classifier with ART, keep the successful adversarial examples, fit every detector on "
            "half of the source images (each supervised detector once per attack; *_clean detectors on clean "
            "images only) and report, on the other half and for every attack, ROC-AUC, TPR at 5 % FPR, the "
            "detector's own TPR / FPR and time per sample; then the mean ROC-AUC on attacks a detector was not "
            "fitted on. Writes results.json, results.csv, report.md and plots to --output."
        ),
    )
    ev.add_argument("--dataset", choices=DATASETS, default="digits", help="data set (default: %(default)s)")
    ev.add_argument("--data-dir", default=None, help="folder with the MNIST / CIFAR-10 files (nothing is downloaded)")
    ev.add_argument(
        "--data",
        default=None,
        metavar="FILE.npz",
        help="your images instead of --dataset: an .npz with x_train, y_train, x_test, y_test (images (N, C, H, W), "
        "uint8 or floats in [0, 1]; integer or one-hot labels); x_test is attacked, x_train is the reference",
    )
    ev.add_argument(
        "--model",
        default=None,
        help="a torch.export archive (.pt2, torch.export.save of the model in eval mode with a dynamic batch size), "
        "or a state dict of --arch (loaded with torch.load(weights_only=True)); default: train --arch here",
    )
    ev.add_argument(
        "--clip-values",
        type=_clip,
        default=None,
        metavar="LOW,HIGH",
        help="the range of --model's inputs, the attacks' clip range (default: 0,1)",
    )
    ev.add_argument(
        "--mean",
        type=_floats,
        default=None,
        metavar="M[,M,...]",
        help="--model's input standardisation (x - mean) / std, one value or one per channel, applied as ART's "
        "preprocessing (attacks and detectors see inputs in the clip range)",
    )
    ev.add_argument("--std", type=_floats, default=None, metavar="S[,S,...]", help="see --mean (default: 1)")
    ev.add_argument(
        "--arch",
        choices=sorted(ARCHITECTURES),
        default=None,
        help="architecture of --model or of the model trained here "
        "(default: small_cnn; mnist_cnn for mnist, cifar_cnn for cifar10)",
    )
    ev.add_argument(
        "--attacks",
        default=",".join(DEFAULT_ATTACKS),
        help=f"comma-separated, from {', '.join(ATTACKS)} (default: %(default)s)",
    )
    ev.add_argument(
        "--eps",
        type=float,
        default=None,
        help="L-inf budget of FGSM and PGD in [0, 1] pixel units (default: 0.2 digits, 0.3 mnist, 8/255 cifar10)",
    )
    ev.add_argument(
        "--detectors",
        default=None,
        help=f"comma-separated, from {', '.join(DETECTORS)} (default: all of them except "
        f"{', '.join(d for d in DETECTORS if d not in DEFAULT_DETECTORS) or 'none'})",
    )
    _add_run_arguments(ev)
    ev.set_defaults(func=_run_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``art-fisher`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(_stages_and_warnings)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=[handler])
    # ART logs at INFO on every estimator it builds; keep its chatter to warnings.
    logging.getLogger("art").setLevel(logging.WARNING)
    return int(args.func(args))


def _stages_and_warnings(record: logging.LogRecord) -> bool:
    """The default verbosity: warnings, and the one INFO line per stage that the evaluation marks."""
    return record.levelno >= logging.WARNING or bool(getattr(record, "stage", False))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
