"""Where a detector's per-input values come from: computed on the spot, or looked up where computed before.

A detector computes its features from quantities of each input (the Fisher metrics of the prediction,
the spectrum of the input Fisher matrix) and, for the layer-density parts, from statistics fitted on
clean reference images (the class Gaussians). It asks a *feature source* for each of them, with a key
that names the quantity and every setting it depends on, and a function that computes it:

- ``source.rows(key, x, compute)`` -> ndarray with one row per input of ``x``: ``compute(x[rows])`` for
  the rows it does not hold yet, the held values for the others;
- ``source.once(key, compute)`` -> ``compute()`` the first time a ``key`` is asked for, the same object
  after.

The keys are tuples whose first item names the quantity (``"fisher_metric"``, ``"input_fisher"``,
``"class_gaussians"``, ...) and whose other items are hashable settings; the inputs themselves are not in
``key`` (a source tells rows apart by their values). A source serves one classifier: its keys do not name
the model.

Without a source (``feature_source=None``) a detector computes everything itself
(:data:`COMPUTE`). :class:`FeatureCache` keeps every value it computed, so that several detectors of
one classifier (or the same detector fitted several times) compute each value once: pass the same cache
as ``feature_source`` to each of them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class FeatureSource(Protocol):
    """What a detector's ``feature_source`` provides (module docstring)."""

    def rows(self, key: Hashable, x: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Values of ``key`` for each row of ``x`` (shape (N, ...)), as ``compute(x)`` would give them."""
        ...  # pragma: no cover

    def once(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value of ``key``, as ``compute()`` gives it."""
        ...  # pragma: no cover


class _Compute:
    """The source that computes every value when asked (no memory)."""

    def rows(self, key: Hashable, x: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        return compute(x)

    def once(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        return compute()

    def __repr__(self) -> str:
        return "COMPUTE"


#: The source of a detector without one: computes every value when asked.
COMPUTE: FeatureSource = _Compute()


def check_feature_source(feature_source: Any) -> FeatureSource:
    """``feature_source``, or :data:`COMPUTE` for None; TypeError unless it has ``rows`` and ``once``."""
    if feature_source is None:
        return COMPUTE
    if not isinstance(feature_source, FeatureSource):
        raise TypeError(
            "feature_source must be None or an object with methods rows(key, x, compute) and once(key, compute) "
            f"(e.g. art_fisher.detection.FeatureCache); got {type(feature_source).__qualname__}."
        )
    return feature_source


def row_digests(x: np.ndarray) -> list[bytes]:
    """A 16-byte BLAKE2b digest of each row of ``x`` (its bytes: dtype and values)."""
    return [hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).digest() for row in x]


class FeatureCache:
    """A feature source that keeps every value it computed (see :mod:`art_fisher.detection`).

    Rows are told apart by a digest of their bytes (the detectors hand over their checked float32 inputs), so
    the same image gets its values once, whichever detector, fit or call asks for them. Each row also keeps the
    seconds its computation took (its share of the batch it was computed in), so that a caller can charge a
    detector for the cost of its features rather than for looking them up (``seconds_cost``).

    Parameters
    ----------
    map_rows : callable, optional
        How the rows not held yet are computed: ``map_rows(compute, x_missing)``, e.g.
        :func:`art_fisher.distributed.map_rows` to share the work among the ranks of a ``torchrun`` job.
        None: ``compute(x_missing)``.

    Attributes
    ----------
    seconds_spent : float
        Seconds spent computing, over every call so far.
    seconds_cost : float
        Over every call to :meth:`rows` so far: the seconds the returned rows took to compute, each at its
        share of its batch (rows looked up count as much as rows computed).

    Examples
    --------
    >>> cache = FeatureCache()
    >>> calls = []
    >>> def square(x):
    ...     calls.append(len(x))
    ...     return x**2
    >>> x = np.arange(3.0)[:, None]
    >>> cache.rows(("square",), x, square)[:, 0]
    array([0., 1., 4.])
    >>> cache.rows(("square",), x[::-1], square)[:, 0], calls   # looked up: computed once
    (array([4., 1., 0.]), [3])
    """

    def __init__(self, *, map_rows: Callable[..., Any] | None = None) -> None:
        if map_rows is not None and not callable(map_rows):
            raise TypeError(f"map_rows must be None or callable; got {type(map_rows).__qualname__}.")
        self.map_rows = map_rows
        self.seconds_spent = 0.0
        self.seconds_cost = 0.0
        self._rows: dict[Hashable, dict[bytes, tuple[np.ndarray, float]]] = {}
        self._once: dict[Hashable, Any] = {}

    def rows(self, key: Hashable, x: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Values of ``key`` for each row of ``x``, computing (by ``compute``) only the rows not held yet."""
        store = self._rows.setdefault(key, {})
        digests = row_digests(x)
        todo: dict[bytes, int] = {}
        for i, digest in enumerate(digests):
            if digest not in store and digest not in todo:
                todo[digest] = i
        if todo:
            start = time.perf_counter()
            missing = x[list(todo.values())]
            computed = compute(missing) if self.map_rows is None else self.map_rows(compute, missing)
            seconds = time.perf_counter() - start
            self.seconds_spent += seconds
            for digest, value in zip(todo, computed, strict=True):
                store[digest] = (value, seconds / len(todo))
        self.seconds_cost += sum(store[digest][1] for digest in digests)
        return np.stack([store[digest][0] for digest in digests])

    def once(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value of ``key``: ``compute()`` the first time, the same object after."""
        if key not in self._once:
            start = time.perf_counter()
            self._once[key] = compute()
            self.seconds_spent += time.perf_counter() - start
        return self._once[key]
