"""Per-image work split across ``torch.distributed`` ranks (``torchrun``): gloo on CPU, NCCL on CUDA.

:func:`map_rows` computes a block of rows on each rank and all-gathers them, so that every rank holds the
whole result; :func:`distributed_scores` streams a data set through a ``DistributedSampler`` and gathers
its scores on rank 0; :func:`init_from_env` joins the process group torchrun describes, and
:func:`is_writer` says whether this process writes results.
"""

from art_fisher.distributed._sharding import (
    distributed_scores,
    init_from_env,
    is_writer,
    map_rows,
    rank,
    row_blocks,
    world_size,
)

__all__ = ["distributed_scores", "init_from_env", "is_writer", "map_rows", "rank", "row_blocks", "world_size"]
