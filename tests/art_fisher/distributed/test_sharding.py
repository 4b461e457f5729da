"""Sharding per-image work across torch.distributed ranks: two gloo processes on 127.0.0.1 give one process's rows."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from art_fisher import distributed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rows(x: np.ndarray, y: np.ndarray):
    return {"sum": x.reshape(len(x), -1).sum(axis=1) + y, "flag": x[:, 0, 0] > 0.5}, (x * 2).astype(np.float32)


def _worker(rank: int, size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu")
    try:
        rng = np.random.default_rng(0)
        x, y = rng.random((11, 2, 3, 3)), rng.integers(0, 5, 11)
        calls = []

        def fn(xb, yb):
            calls.append(len(xb))
            return _rows(xb, yb)

        result = distributed.map_rows(fn, x, y)
        scores = distributed.distributed_scores(lambda b: b.reshape(len(b), -1).mean(axis=1), x.astype(np.float32),
                                                batch_size=2)  # fmt: skip
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), s=result[0]["sum"], f=result[0]["flag"], d=result[1],
                 calls=np.array(calls), scores=np.zeros(0) if scores is None else scores,
                 writer=distributed.is_writer())  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: 15-20 s on the shared 2-core machine
def test_two_gloo_ranks_split_rows_and_gather_them_in_order(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rng = np.random.default_rng(0)
    x, y = rng.random((11, 2, 3, 3)), rng.integers(0, 5, 11)
    expected, doubled = _rows(x, y)
    for r in range(2):
        got = np.load(tmp_path / f"rank{r}.npz")
        np.testing.assert_array_equal(got["s"], expected["sum"])
        np.testing.assert_array_equal(got["f"], expected["flag"])
        np.testing.assert_array_equal(got["d"], doubled)
        assert got["calls"].tolist() == [[6], [5]][r]  # each rank computed only its block
        assert bool(got["writer"]) == (r == 0)
    scores = np.load(tmp_path / "rank0.npz")["scores"]
    np.testing.assert_allclose(scores, x.astype(np.float32).reshape(11, -1).mean(axis=1), rtol=1e-6)
    assert np.load(tmp_path / "rank1.npz")["scores"].size == 0


def test_without_a_process_group_it_is_the_plain_call():
    x = np.arange(6.0).reshape(3, 2)
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_writer()
    np.testing.assert_array_equal(distributed.map_rows(lambda a: a * 3, x), x * 3)
    np.testing.assert_array_equal(distributed.distributed_scores(lambda b: b.sum(axis=1), x, batch_size=2), x.sum(1))
    assert distributed.row_blocks(5, 2) == [(0, 2), (2, 5)] or distributed.row_blocks(5, 2) == [(0, 3), (3, 5)]
    with pytest.raises(ValueError, match="one number of rows"):
        distributed.map_rows(lambda a, b: a, x, x[:2])
    with pytest.raises(ValueError, match="batch_size"):
        distributed.distributed_scores(lambda b: b, x, batch_size=0)


class _LazyImages:
    """2,000 images of 3×32×32 float32 (24 MB in all), each made when asked for."""

    def __len__(self) -> int:
        return 2000

    def __getitem__(self, i: int) -> np.ndarray:
        return np.full((3, 32, 32), i / 2000, dtype=np.float32)


def test_scores_stream_memory_grows_with_the_batch_not_the_data_set():
    import tracemalloc

    tracemalloc.start()
    try:
        scores = distributed.distributed_scores(lambda b: b.mean(axis=(1, 2, 3)), _LazyImages(), batch_size=16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(scores, np.arange(2000) / 2000, rtol=1e-6)
    assert peak < 3_000_000  # the data set is 24.6 MB; a batch of 16 images is 197 KB
