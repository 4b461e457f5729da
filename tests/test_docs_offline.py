"""The documentation's offline check (docs/_ext/offline.py) finds what would load from the network."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "_ext"))
offline = pytest.importorskip("offline", reason="needs Sphinx (the docs extra)")


@pytest.mark.parametrize(
    ("html", "found"),
    [
        ('<script defer src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>', 1),
        ("<script src='//cdn.example.org/x.js'></script>", 1),
        ('<link rel="stylesheet" href="https://fonts.example.org/a.css">', 1),
        ('<script defer="defer" src="../_static/tex-svg-full.js?v=befb74b2"></script>', 0),
        ('<a href="https://arxiv.org/abs/1909.05527">paper</a>', 0),  # a link is not a load
        ('<link rel="canonical" href="https://example.org/page.html">', 0),
    ],
)
def test_remote_loads(html, found):
    assert len(offline.remote_loads(html)) == found


def test_mathjax_is_served_from_the_package_when_installed():
    script = offline.mathjax_script()
    if script is None:
        pytest.skip("django-static-mathjax (the docs extra) is not installed")
    assert script.name == "tex-svg-full.js" and script.stat().st_size > 1_000_000
