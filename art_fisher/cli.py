"""Command line interface: ``art-fisher``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from art_fisher import __version__

logger = logging.getLogger(__name__)


def _not_implemented(args: argparse.Namespace) -> int:
    print(f"art-fisher {args.command}: not implemented yet", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    """Build the ``art-fisher`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="art-fisher",
        description="Fisher-information detectors of adversarial examples for ART.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    evaluate = sub.add_parser(
        "evaluate",
        help="attack a model with ART and report how well each detector catches each attack",
    )
    evaluate.set_defaults(func=_not_implemented)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``art-fisher`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
