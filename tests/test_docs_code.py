"""The Python code that users copy runs as written: every block of README.md, and the guides' blocks.

Each README block runs alone, unchanged, in a fresh folder (``HOME`` there too, for NNI's records), in a
new interpreter whose environment sets no thread count: the code must set what it needs itself. A guide's
blocks run in order in one interpreter, as a reader pasting them one after the other would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: README sections whose block takes more than a few seconds (training, attacks, a search): the slow lane.
_SLOW_SECTIONS = {"Quick start: a detector in ART", "Quick start: a LeaSE search"}
#: Guides whose Python blocks run here (lease_nni_experiments.md's block starts an NNI experiment of 20 trials:
#: tests/nni_lease/test_experiment.py runs that path at a small size).
_GUIDES = [
    "docs/guides/fisher_metrics.md",
    "docs/guides/detectors_in_art.md",
    "docs/guides/scikit_learn.md",
    pytest.param("docs/guides/lease_oneshot.md", marks=pytest.mark.needs_nni),
]
#: The README's promise: each quick start finishes within this many seconds on a 2-core machine.
_BUDGET_S = 300


def python_blocks(path: Path) -> list[tuple[str, str]]:
    """``(section heading, code)`` of each fenced ``python`` block of a Markdown file, in order."""
    blocks, heading = [], ""
    for match in re.finditer(r"^(#+ [^\n]+)$|^```python\n(.*?)^```$", path.read_text(), re.M | re.S):
        if match.group(1):
            heading = match.group(1).lstrip("#").strip()
        else:
            blocks.append((heading, match.group(2)))
    return blocks


def _readme_cases() -> list:
    cases = []
    for heading, code in python_blocks(ROOT / "README.md"):
        section = heading.split(" (")[0]
        marks = [pytest.mark.slow] if section in _SLOW_SECTIONS else []
        if "[lease]" in heading:
            marks.append(pytest.mark.needs_nni)
        cases.append(pytest.param(code, id=section, marks=marks))
    return cases


def _run(code: str, folder: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k not in {"OMP_NUM_THREADS", "MKL_NUM_THREADS"}}
    env.update(HOME=str(folder), MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=2 * _BUDGET_S, check=False)  # fmt: skip
    return proc, time.perf_counter() - start


def test_readme_has_the_three_quick_starts():
    sections = [heading for heading, _ in python_blocks(ROOT / "README.md")]
    assert sections[:3] == [
        "Quick start: Fisher metrics",
        "Quick start: a detector in ART",
        'Quick start: a LeaSE search (`pip install -e ".[lease]"`)',
    ]


@pytest.mark.parametrize("code", _readme_cases())
def test_readme_block_runs_as_written(code, tmp_path):
    proc, seconds = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "each quick start prints what it found"
    assert seconds < _BUDGET_S, f"took {seconds:.0f} s"


@pytest.mark.slow
@pytest.mark.parametrize("guide", _GUIDES)
def test_guide_blocks_run_in_order(guide, tmp_path):
    blocks = python_blocks(ROOT / guide)
    assert blocks, f"{guide} has no python block"
    proc, seconds = _run("\n".join(code for _, code in blocks), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert seconds < _BUDGET_S, f"took {seconds:.0f} s"
