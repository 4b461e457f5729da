"""Command line interface: ``nni-lease``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from nni_lease import __version__

logger = logging.getLogger(__name__)


def _not_implemented(args: argparse.Namespace) -> int:
    print(f"nni-lease {args.command}: not implemented yet", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    """Build the ``nni-lease`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="nni-lease",
        description="LeaSE (Learning by Self-Explanation) neural architecture search on NNI.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    search = sub.add_parser("search", help="run a LeaSE architecture search")
    search.set_defaults(func=_not_implemented)
    retrain = sub.add_parser("retrain", help="train an exported architecture from scratch")
    retrain.set_defaults(func=_not_implemented)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nni-lease`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
