"""Per-image work split across ``torch.distributed`` ranks: each rank computes a block of rows, all get every row.

Under ``torchrun --nproc-per-node N`` every rank runs the same program on the same data. The work that is
done image by image (an attack, a Fisher metric, a detector's score) goes through :func:`map_rows`: rank ``r``
computes the ``r``-th of ``N`` contiguous blocks of the rows, and the blocks are gathered (``all_gather`` of
tensors, no pickling) so that every rank holds the full result, in row order. What follows (fitting
detectors, thresholds, tables) is then the same on every rank, and only rank 0 writes (:func:`is_writer`).
Outside a process group (``WORLD_SIZE`` unset or 1) :func:`map_rows` is the plain call.

:func:`distributed_scores` is the streaming form for a user's own data set: a ``DataLoader`` with a
``DistributedSampler`` feeds each rank its share in batches; only the per-image scores are kept and gathered
on rank 0, so memory grows with the batch and the number of images, not with the images themselves.

Backends: gloo on CPU, NCCL when the run's device is CUDA (:func:`init_from_env`).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from art_fisher.utils import check_int

logger = logging.getLogger(__name__)


_MAX_TRAILING_DIMS = 8


def world_size() -> int:
    """Number of ranks of the default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """The rank of this process in the default process group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_writer() -> bool:
    """Whether this process writes results: rank 0, or the only process."""
    return rank() == 0


def init_from_env(device: torch.device | str = "cpu") -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment); True if one is joined.

    Uses NCCL for a CUDA ``device`` (and sets this rank's CUDA device from ``LOCAL_RANK``), gloo otherwise.
    Does nothing and returns False when ``WORLD_SIZE`` is unset or 1; returns True if a group already exists.

    Raises
    ------
    ValueError
        If ``WORLD_SIZE`` or ``LOCAL_RANK`` is not an integer, or torch has no distributed support.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise ValueError(f"WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun); {exc}.") from exc
    if size <= 1:
        return False
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE is {size} but this torch build has no torch.distributed.")
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(local if dev.index is None else dev.index)
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")
    logger.info("rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), dist.get_backend())
    return True


def row_blocks(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``(start, stop)`` blocks covering ``range(n)``, sizes differing by at most one."""
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_blocks(local: np.ndarray, blocks: list[tuple[int, int]]) -> np.ndarray:
    """All-gather every rank's block (rows ``blocks[r]`` on rank ``r``) into one array, on every rank."""
    dev = _device()
    local = np.ascontiguousarray(local)
    is_bool = local.dtype == np.bool_
    # Every rank checks that all blocks have the same trailing shape and dtype before gathering data.
    meta = torch.full((2 + _MAX_TRAILING_DIMS,), -1, dtype=torch.int64, device=dev)
    if local.ndim - 1 > _MAX_TRAILING_DIMS:
        raise ValueError(f"rows of at most {_MAX_TRAILING_DIMS} dimensions can be gathered; got {local.shape[1:]}.")
    meta[0], meta[1] = local.ndim, local.dtype.num
    meta[2 : 1 + local.ndim] = torch.as_tensor(local.shape[1:], dtype=torch.int64)
    metas = [torch.empty_like(meta) for _ in blocks]
    dist.all_gather(metas, meta)
    if any(not torch.equal(m, meta) for m in metas):
        raise RuntimeError(
            f"ranks computed rows of different shapes or dtypes; this rank's: {local.dtype} {local.shape}."
        )
    tensor = torch.from_numpy(local.view(np.uint8) if is_bool else local)
    longest = max(b - a for a, b in blocks)
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=dev)
    padded[: len(tensor)] = tensor.to(dev)
    parts = [torch.empty_like(padded) for _ in blocks]
    dist.all_gather(parts, padded)
    out = torch.cat([p[: b - a] for p, (a, b) in zip(parts, blocks, strict=True)]).cpu().numpy()
    return out.view(np.bool_) if is_bool else out


def map_rows(fn: Callable[..., Any], *arrays: np.ndarray) -> Any:
    """``fn(*arrays)`` computed block-wise across the ranks, every rank receiving the whole result.

    Parameters
    ----------
    fn : callable
        Maps arrays of ``n`` rows (the same rows of each of ``arrays``) to an array with ``n`` rows, or to
        tuples, lists and dicts (nested) of such arrays; row ``i`` of the result may depend only on row ``i``
        of the inputs (and on state that is the same on every rank).
    *arrays : ndarray
        Inputs with the same number of rows ``n``.

    Returns
    -------
    Same structure as ``fn``'s result, with all ``n`` rows in order.

    Notes
    -----
    Every rank must call it with the same ``n``, in the same order (it is a collective call). With fewer rows
    than ranks, or without a process group, every rank computes everything.

    Examples
    --------
    >>> import numpy as np
    >>> map_rows(lambda a, b: a + b, np.arange(4.0), np.ones(4))
    array([1., 2., 3., 4.])
    """
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"map_rows needs arrays with one number of rows; got {[len(a) for a in arrays]}.")
    size = world_size()
    if size == 1 or n < size:
        return fn(*arrays)
    blocks = row_blocks(n, size)
    start, stop = blocks[rank()]
    return _gather_tree(fn(*(a[start:stop] for a in arrays)), blocks)


def _gather_tree(local: Any, blocks: list[tuple[int, int]]) -> Any:
    if isinstance(local, dict):
        return {key: _gather_tree(local[key], blocks) for key in sorted(local)}
    if isinstance(local, tuple | list):
        return type(local)(_gather_tree(value, blocks) for value in local)
    return _gather_blocks(np.asarray(local), blocks)


def distributed_scores(
    score: Callable[[np.ndarray], np.ndarray],
    dataset: Any,
    *,
    batch_size: int = 128,
    num_workers: int = 0,
) -> np.ndarray | None:
    """Score a map-style data set of images across the ranks, streaming; the scores in order on rank 0.

    Parameters
    ----------
    score : callable
        ``score(x) -> ndarray (b,)`` for a batch ``x`` of shape ``(b, C, H, W)``, e.g.
        ``lambda x: detector.detect(x)[0]["decision_scores"]``.
    dataset : torch.utils.data.Dataset
        Indexable; item ``i`` is an image (array or tensor of shape ``(C, H, W)``) or a tuple whose first
        element is one.
    batch_size : int
        Images per batch on each rank.
    num_workers : int
        ``DataLoader`` worker processes per rank.

    Returns
    -------
    ndarray of shape (len(dataset),) on rank 0 (also without a process group); None on the other ranks.

    Examples
    --------
    >>> import numpy as np
    >>> images = np.random.default_rng(0).random((5, 1, 2, 2)).astype(np.float32)
    >>> distributed_scores(lambda x: x.reshape(len(x), -1).sum(axis=1), images, batch_size=2).shape
    (5,)
    """
    from torch.utils.data import DataLoader, DistributedSampler

    check_int(batch_size, "batch_size", low=1)
    n = len(dataset)
    size, me = world_size(), rank()
    indices: list[int] = list(range(n))
    if size > 1:
        indices = list(DistributedSampler(_Indexed(dataset), num_replicas=size, rank=me, shuffle=False))
    loader: DataLoader[Any] = DataLoader(
        _Indexed(dataset), batch_size=batch_size, sampler=indices, num_workers=num_workers
    )
    local_idx, local_scores = [], []
    for idx, x in loader:
        local_idx.append(idx.numpy())
        local_scores.append(np.asarray(score(x.numpy()), dtype=np.float64).reshape(len(idx)))
    idx_all = np.concatenate(local_idx) if local_idx else np.zeros(0, np.int64)
    scores_all = np.concatenate(local_scores) if local_scores else np.zeros(0)
    if size > 1:
        # DistributedSampler gives every rank the same count (padding with repeated indices).
        blocks = [(r * len(idx_all), (r + 1) * len(idx_all)) for r in range(size)]
        idx_all, scores_all = _gather_blocks(idx_all, blocks), _gather_blocks(scores_all, blocks)
    if me != 0:
        return None
    out = np.full(n, np.nan)
    out[idx_all] = scores_all
    return out


class _Indexed(Dataset[tuple[int, torch.Tensor]]):
    """A data set whose items are ``(index, image)``: the index travels with the batch."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        item = self.dataset[i]
        image = item[0] if isinstance(item, tuple | list) else item
        return i, torch.as_tensor(np.asarray(image))
