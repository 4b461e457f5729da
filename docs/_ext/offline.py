"""The built site works offline: MathJax is served from it, and no page loads a script from the network.

Sphinx's ``sphinx.ext.mathjax`` loads MathJax from a CDN by default, so without a network every formula
shows as raw LaTeX. This extension copies MathJax 3's self-contained ``tex-svg-full.js`` (every TeX
extension built in, SVG output: no font files, nothing fetched later) from the ``django-static-mathjax``
wheel, which the ``docs`` extra installs, into ``_static`` and points ``mathjax_path`` at it. When the
build ends, it reads every HTML page and warns about any ``<script src>`` or stylesheet ``<link>`` that
points off the site, so ``sphinx-build -W`` fails on one.
"""

from __future__ import annotations

import re
from importlib.util import find_spec
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)

#: MathJax's combined component: TeX input with all extensions, SVG output, the menu; about 2.3 MB.
MATHJAX_FILE = "tex-svg-full.js"
_REMOTE = re.compile(
    r"""<script\b[^>]*\bsrc=["'](?:https?:)?//[^"']+["']|<link\b(?=[^>]*\bstylesheet\b)[^>]*\bhref=["'](?:https?:)?//[^"']+["']""",
    re.I,
)


def mathjax_script() -> Path | None:
    """The installed ``tex-svg-full.js`` of the ``django-static-mathjax`` wheel, or ``None``."""
    spec = find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "static" / "mathjax" / "es5" / MATHJAX_FILE
        if path.is_file():
            return path
    return None


def _serve_mathjax(app, config) -> None:
    script = mathjax_script()
    if script is None:
        logger.warning(
            "MathJax is not installed (the docs extra's django-static-mathjax): the pages load it from a CDN "
            'and show raw LaTeX offline; pip install -e ".[docs]"'
        )
        return
    config.html_static_path = [*config.html_static_path, str(script)]
    config.mathjax_path = MATHJAX_FILE


def remote_loads(html: str) -> list[str]:
    """The ``<script src>`` and stylesheet ``<link>`` tags of ``html`` that load from another host."""
    return [m.group(0) for m in _REMOTE.finditer(html)]


def _check_pages(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    for page in sorted(Path(app.outdir).rglob("*.html")):
        for tag in remote_loads(page.read_text(encoding="utf-8", errors="replace")):
            logger.warning("%s loads from the network: %s", page.relative_to(app.outdir), tag)


def setup(app) -> dict:
    """Serve MathJax from the site and check the built pages for remote scripts and stylesheets."""
    app.connect("config-inited", _serve_mathjax)
    app.connect("build-finished", _check_pages)
    return {"version": "1.0", "parallel_read_safe": True}
