"""Sphinx configuration of the art-fisher / nni-lease documentation.

Build: ``pip install -e ".[docs]" && sphinx-build -b html docs docs/_build/html`` (CI adds ``-W --keep-going``);
the docstring examples and the guides' code run with ``sphinx-build -b doctest docs docs/_build/doctest``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent / "_ext"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["COLUMNS"] = "72"  # the width of the command-line help texts (docs/_static/custom.css wraps longer lines)

from art_fisher import __version__  # noqa: E402

project = "art-fisher & nni-lease"
author = "art-fisher / nni-lease developers"
copyright = "art-fisher / nni-lease developers"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "apipages",
    "benchmarks",
    "clihelp",
    "offline",
    "choosing",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_templates", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]
root_doc = "index"

# Every cross-reference must resolve (``-W`` makes a broken one fail the build). The build has no network,
# so no intersphinx inventories: references into these external packages (and the standard library modules
# the docstrings name) stay unresolved and are ignored, scoped to those packages only.
nitpicky = True
_EXTERNAL = r"(torch|numpy|sklearn|art|nni|pathlib|typing|pickle|collections|os)"
nitpick_ignore_regex = [(r"py:.*", _EXTERNAL + r"(\..+)?")]

# --- API reference (docs/_ext/apipages.py writes api/*.rst from each module's __all__) -----------------
api_intro = (
    "Every public name of both packages, generated from the modules' ``__all__``. A name exported by "
    "several modules is documented once, under the first module listed here that exports it; the other "
    "modules link to it. ``art_fisher`` and ``nni_lease`` import their names lazily: "
    "``from art_fisher import FisherInformationDetector`` is the object documented under "
    ":mod:`art_fisher.detection`."
)
api_modules = [
    (
        "art_fisher",
        [
            "art_fisher",
            "art_fisher.metrics",
            "art_fisher.detection",
            "art_fisher.adversarial",
            "art_fisher.data",
            "art_fisher.models",
            "art_fisher.evaluation",
            "art_fisher.evaluation.detectors",
            "art_fisher.evaluation.report",
            "art_fisher.utils",
        ],
    ),
    (
        "nni_lease",
        ["nni_lease", "nni_lease.core", "nni_lease.oneshot", "nni_lease.multitrial", "nni_lease.runtime"],
    ),
]
# Packages first, so that a name is documented where users import it from; the lazy top-level packages last.
api_canonical_order = [m for _, mods in api_modules for m in mods if m not in ("art_fisher", "nni_lease")]
api_canonical_order += ["art_fisher", "nni_lease"]
api_submodules = {
    "art_fisher.evaluation": ["art_fisher.evaluation.detectors", "art_fisher.evaluation.report"],
}

autosummary_generate = True
autosummary_imported_members = True
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
autodoc_preserve_defaults = False
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# --- benchmark pages (docs/_ext/benchmarks.py renders tests/benchmarks/results/*.json) ------------------
benchmark_results_dir = str(ROOT / "tests" / "benchmarks" / "results")

# --- doctest: the docstring examples and the guides' code blocks marked as doctests ---------------------
doctest_global_setup = """
import os
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import torch
torch.manual_seed(0)
"""

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "pydata_sphinx_theme"
html_title = "art-fisher & nni-lease"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_show_sourcelink = False


class _EmptyGuideGlob(logging.Filter):
    """The user guide lists its pages in order, then globs ``guides/*`` for pages added later.

    Sphinx leaves the listed pages out of that glob, so it is empty until a new page appears; that one
    warning (which ``suppress_warnings`` cannot reach) is dropped, every other warning stays.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("toctree glob pattern"):
            return True
        location = getattr(record, "location", None)
        source = location if isinstance(location, str) else getattr(location, "source", None) or ""
        return not str(source).replace("\\", "/").endswith("guides/index.rst")


def setup(app) -> None:
    """Drop the empty-glob warning of the user guide's toctree (see :class:`_EmptyGuideGlob`)."""
    logging.getLogger("sphinx.sphinx.directives.other").addFilter(_EmptyGuideGlob())
