"""``.. cli-help:: package.module:build_parser [subcommand]``: a command's ``--help`` text, read from its parser.

The command-line reference is the argparse parser itself, formatted at build time, so it cannot drift
from the code.
"""

from __future__ import annotations

import importlib

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


class CliHelp(SphinxDirective):
    """The ``cli-help`` directive: ``module:parser_factory`` and an optional subcommand."""

    required_arguments = 1
    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        target, _, attr = self.arguments[0].partition(":")
        parser = getattr(importlib.import_module(target), attr)()
        if len(self.arguments) > 1:
            sub = self.arguments[1]
            actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
            if not actions or sub not in actions[0].choices:
                raise self.error(f"{self.arguments[0]} has no subcommand {sub!r}")
            parser = actions[0].choices[sub]
        text = parser.format_help()
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app) -> dict:
    """Register the directive."""
    app.add_directive("cli-help", CliHelp)
    return {"version": "1.0", "parallel_read_safe": True}
