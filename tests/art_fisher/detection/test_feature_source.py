"""Feature sources: COMPUTE computes every time, FeatureCache computes each row once and accounts for its cost."""

from __future__ import annotations

import numpy as np
import pytest

from art_fisher.detection import FeatureCache, FeatureSource
from art_fisher.detection._feature_source import COMPUTE, check_feature_source


class _Counting:
    def __init__(self) -> None:
        self.rows: list[int] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.rows.append(len(x))
        return np.column_stack([x.sum(axis=1), x.max(axis=1)])


def test_the_cache_computes_each_row_once_per_key_and_returns_them_in_order():
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    cache, compute = FeatureCache(), _Counting()
    first = cache.rows(("stat",), x[:4], compute)
    np.testing.assert_array_equal(first, compute(x[:4]))
    compute.rows.clear()
    got = cache.rows(("stat",), np.concatenate([x[::-1], x[:2]]), compute)
    np.testing.assert_array_equal(got, compute(np.concatenate([x[::-1], x[:2]])))
    assert compute.rows[0] == 2  # only rows 4 and 5 were new
    cache.rows(("other",), x[:1], compute)
    assert compute.rows[2] == 1  # another key: computed again
    duplicated = np.repeat(x[5:], 3, axis=0)
    compute.rows.clear()
    np.testing.assert_array_equal(cache.rows(("third",), duplicated, compute), compute(duplicated))
    assert compute.rows[0] == 1  # copies of one row: computed once


def test_the_cache_accounts_for_time_and_uses_map_rows():
    calls = []

    def map_rows(fn, rows):
        calls.append(len(rows))
        return fn(rows)

    cache = FeatureCache(map_rows=map_rows)
    x = np.arange(8.0).reshape(4, 2)
    cache.rows(("k",), x, _Counting())
    spent, cost = cache.seconds_spent, cache.seconds_cost
    assert calls == [4] and spent > 0 and cost == pytest.approx(spent, rel=1e-9)
    cache.rows(("k",), x[:2], _Counting())
    assert calls == [4] and cache.seconds_spent == spent  # looked up: no time spent, half the rows' cost charged
    assert cache.seconds_cost - cost == pytest.approx(cost / 2, rel=1e-9)
    assert cache.once(("fit",), lambda: [1, 2]) is cache.once(("fit",), lambda: [3])
    with pytest.raises(TypeError, match="map_rows must be None or callable"):
        FeatureCache(map_rows=3)


def test_compute_is_the_default_source_and_sources_are_checked():
    assert check_feature_source(None) is COMPUTE and isinstance(FeatureCache(), FeatureSource)
    compute = _Counting()
    COMPUTE.rows(("k",), np.ones((2, 2)), compute)
    COMPUTE.rows(("k",), np.ones((2, 2)), compute)
    assert compute.rows == [2, 2] and COMPUTE.once(("k",), lambda: 5) == 5
    with pytest.raises(TypeError, match="got dict"):
        check_feature_source({})
