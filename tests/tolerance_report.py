"""Opt-in pytest plugin: how much of its tolerance each numerical comparison used.

Run a lane with ``python -m pytest -p tests.tolerance_report`` and set ``TOLERANCE_REPORT=path.json``. Every call of
``numpy.testing.assert_allclose``, ``torch.testing.assert_close`` and every ``pytest.approx`` comparison is measured
as ``max |actual - expected| / (atol + rtol * |expected|)`` (1.0 means the comparison was exactly at its limit) and
recorded under its call site in the test files, with the floating-point types compared. The JSON lists each call
site once with the largest fraction any of its calls used, so that runs under other thread counts or chunkings can
be merged and the comparisons closest to their limits found (``CONTRIBUTING.md``, "Choosing test tolerances").
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _pytest import approx as pytest_approx

_TESTS = str(Path(__file__).resolve().parent)
_SITES: dict[str, dict[str, Any]] = {}
_CURRENT = {"test": ""}

# torch.testing.assert_close's defaults per dtype (rtol, atol), as documented by PyTorch.
_TORCH_DEFAULTS = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
}


def _call_site() -> str:
    """The innermost frame of a test file (not this plugin) that led to the comparison."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_TESTS) and not name.endswith("tolerance_report.py"):
            return f"{os.path.relpath(name, _TESTS)}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return "<outside tests>"


def _as_array(value: Any) -> np.ndarray | None:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.double().numpy() if value.is_floating_point() else value.numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError):
        return None


def _dtype_name(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return str(value.dtype).replace("torch.", "")
    if isinstance(value, np.ndarray | np.generic):
        return str(value.dtype)
    if isinstance(value, float):
        return "python-float"
    return type(value).__name__


def _usage(actual: Any, expected: Any, rtol: float, atol: float) -> float | None:
    a, e = _as_array(actual), _as_array(expected)
    if a is None or e is None or a.dtype.kind not in "fciu" or e.dtype.kind not in "fciu":
        return None
    try:
        a, e = np.broadcast_arrays(a.astype(np.float64), e.astype(np.float64))
    except ValueError:
        return None
    finite = np.isfinite(a) & np.isfinite(e)
    if not finite.any():
        return 0.0
    diff = np.abs(a[finite] - e[finite])
    allowed = atol + rtol * np.abs(e[finite])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / allowed)
    return float(np.max(ratio)) if ratio.size else 0.0


def _record(kind: str, actual: Any, expected: Any, rtol: float, atol: float) -> None:
    try:
        used = _usage(actual, expected, rtol, atol)
    except Exception:  # noqa: BLE001  (the measurement must never change a test's outcome)
        return
    if used is None:
        return
    site = _call_site()
    dtypes = sorted({_dtype_name(actual), _dtype_name(expected)})
    entry = _SITES.setdefault(
        site, {"kind": kind, "dtypes": dtypes, "rtol": rtol, "atol": atol, "used": 0.0, "calls": 0, "test": ""}
    )
    entry["calls"] += 1
    entry["dtypes"] = sorted(set(entry["dtypes"]) | set(dtypes))
    if used > entry["used"] or (math.isinf(used) and not math.isinf(entry["used"])):
        entry.update(used=used, rtol=rtol, atol=atol, test=_CURRENT["test"])


def _wrap_numpy(original: Any) -> Any:
    def assert_allclose(actual: Any, desired: Any, rtol: float = 1e-7, atol: float = 0, *args: Any, **kw: Any) -> Any:
        _record("numpy.assert_allclose", actual, desired, rtol, atol)
        return original(actual, desired, rtol, atol, *args, **kw)

    return assert_allclose


def _wrap_torch(original: Any) -> Any:
    def assert_close(actual: Any, expected: Any, *args: Any, **kw: Any) -> Any:
        rtol, atol = kw.get("rtol"), kw.get("atol")
        if rtol is None or atol is None:
            dtypes = [t.dtype for t in (actual, expected) if isinstance(t, torch.Tensor)]
            defaults = max((_TORCH_DEFAULTS.get(d, (0.0, 0.0)) for d in dtypes), default=(1e-7, 1e-7))
            rtol = defaults[0] if rtol is None else rtol
            atol = defaults[1] if atol is None else atol
        _record("torch.assert_close", actual, expected, rtol, atol)
        return original(actual, expected, *args, **kw)

    return assert_close


def _wrap_approx_eq(original: Any) -> Any:
    def __eq__(self: Any, actual: Any) -> bool:
        result = original(self, actual)
        try:
            tolerance = float(self.tolerance)
            if isinstance(actual, numbers.Real) and isinstance(self.expected, numbers.Real):
                diff = abs(float(actual) - float(self.expected))
                used = 0.0 if diff == 0 else diff / tolerance if tolerance > 0 else math.inf
                _record("pytest.approx", np.float64(used), np.float64(0.0), 0.0, 1.0)
        except Exception:  # noqa: BLE001  (the measurement must never change a test's outcome)
            pass
        return result

    return __eq__


def pytest_configure(config: pytest.Config) -> None:
    np.testing.assert_allclose = _wrap_numpy(np.testing.assert_allclose)
    torch.testing.assert_close = _wrap_torch(torch.testing.assert_close)
    pytest_approx.ApproxScalar.__eq__ = _wrap_approx_eq(pytest_approx.ApproxScalar.__eq__)  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    _CURRENT["test"] = item.nodeid
    return (yield)


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("TOLERANCE_REPORT")
    if not path:
        return
    Path(path).write_text(json.dumps(_SITES, indent=1, sort_keys=True), encoding="utf-8")


def main(paths: list[str], *, top: int = 30) -> None:
    """Print the call sites of several reports, merged, closest to their tolerance first."""
    merged: dict[str, dict[str, Any]] = {}
    for path in paths:
        for site, entry in json.loads(Path(path).read_text(encoding="utf-8")).items():
            if site not in merged or entry["used"] > merged[site]["used"]:
                merged[site] = entry
    rows = sorted(merged.items(), key=lambda item: -item[1]["used"])[:top]
    for site, entry in rows:
        dtypes = ",".join(entry["dtypes"])
        limits = f"rtol={entry['rtol']:g} atol={entry['atol']:g}"
        sys.stdout.write(f"{entry['used']:9.3g}  {site:55s} {entry['kind']:22s} {dtypes:22s} {limits}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
