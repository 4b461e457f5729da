"""How many samples each pass of the metrics processes at once: the one chunking policy.

All exact paths hold, per sample, a number of "columns" (backward-pass cotangents, classes) times the
layers' output sizes (hook engine) or the selected parameters (``torch.func``). A chunk is the number
of samples whose working set fits the budget of its path; a caller's ``chunk_size`` overrides it. Why
the budgets are small: the metrics benchmark page.
"""

from __future__ import annotations

from collections.abc import Iterator

#: Bytes of per-column layer output-gradients of one chunk of the hook engine (Gram matrices, directional products).
HOOK_BUDGET = 48 * 2**20
#: Bytes of per-class layer output-gradients of one chunk of the hook sensitivity path (first order, piecewise linear).
FIRST_ORDER_BUDGET = 2 * 2**20
#: The same for the second-order hook sensitivity path, whose backward graph is kept for a second pass.
SECOND_ORDER_BUDGET = 16 * 2**20
#: Bytes of per-sample Jacobians held at once by the ``torch.func`` parts.
FUNC_BUDGET = 256 * 2**20
#: Samples per chunk of the ``torch.func`` sensitivity and of ``method="finite_difference"``.
FUNC_SENSITIVITY_CHUNK = 32
FINITE_DIFFERENCE_CHUNK = 64
#: Upper bound of every chunk.
MAX_CHUNK = 256
#: Output-sized tensors per sample alive at once when the columns are streamed (one column's
#: output-gradients, the backward pass's temporaries and the rule's working copies), which the hook
#: engine uses in place of the number of columns when only the diagonals of the Gram matrices are wanted.
STREAMED_COPIES = 5


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of ``size`` samples (the last one shorter) covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def by_budget(per_sample_bytes: int, budget: int, chunk_size: int | None = None) -> int:
    """Samples per chunk: ``chunk_size`` if given, else ``budget // per_sample_bytes`` within ``[1, MAX_CHUNK]``."""
    if chunk_size:
        return chunk_size
    return int(max(1, min(MAX_CHUNK, budget // max(1, per_sample_bytes))))


def hook_chunk(
    out_numel: int, n_cols: int, itemsize: int, chunk_size: int | None = None, budget: int = HOOK_BUDGET
) -> int:
    """Chunk of the hook engine: ``n_cols`` output-gradients of ``out_numel`` entries per sample."""
    return by_budget(n_cols * out_numel * itemsize, budget, chunk_size)


def func_chunk(n_params: int, n_classes: int, itemsize: int, chunk_size: int | None = None) -> int:
    """Chunk of ``torch.func`` per-sample Jacobians of ``n_params`` parameters (with working copies)."""
    return by_budget(3 * n_classes * n_params * itemsize, FUNC_BUDGET, chunk_size)
