"""The exact cases of the metrics tests, one fixture per case."""

from __future__ import annotations

import pytest

from tests.art_fisher.metrics_cases import EXACT_CASES, cached_refs, make_case


@pytest.fixture(scope="module", params=EXACT_CASES)
def case(request):
    model, x = make_case(request.param)
    return request.param, model, x, cached_refs(request.param)
