"""Every public metric function's docstring example: present, checked against a dense computation, passing.

The Sphinx doctest build runs the same examples; this runs them in the fast lane too.
"""

from __future__ import annotations

import doctest
import inspect

import pytest

from art_fisher import metrics

FUNCTIONS = [name for name in metrics.__all__ if inspect.isfunction(getattr(metrics, name))]


def test_every_metric_function_is_listed():
    assert "fisher_trace" in FUNCTIONS and "fisher_input_spectrum" in FUNCTIONS and len(FUNCTIONS) == 7


@pytest.mark.parametrize("name", FUNCTIONS)
def test_example_checks_against_a_dense_computation(name):
    doc = inspect.getdoc(getattr(metrics, name))
    assert "Examples\n--------\n>>> " in doc, f"{name} has no Examples section"
    assert "allclose(" in doc, f"{name}'s example does not compare with a dense computation"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_example_passes(name):
    func = getattr(metrics, name)
    finder = doctest.DocTestFinder(recurse=False)
    (test,) = finder.find(func, name, globs={})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    result = runner.run(test, out=lambda _s: None)
    assert result.attempted > 5 and result.failed == 0, f"{name}: {result.failed} of {result.attempted} failed"
