"""Upper bounds on sizes a user sets (search space, training loop, seeds), checked before any work.

They keep a typo such as ``--width 100000000`` (a 3.6e17-byte allocation) or a 20-digit batch size from
reaching PyTorch or NNI, where they fail late with an unrelated error or exhaust memory. Each bound is far
beyond what the search spaces and data sets of this package use.
"""

from __future__ import annotations

#: Seeds: NumPy's and Lightning's seeding take 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
#: Channels in the cells of :class:`~nni_lease.LeaseCellSpace` (DARTS uses 16 to 36).
MAX_WIDTH = 4096
#: Cells (DARTS: 8 to 20) and nodes per cell (DARTS: 4).
MAX_CELLS = 64
MAX_NODES = 16
#: Input channels and classes of a space.
MAX_CHANNELS = 4096
MAX_CLASSES = 100_000
#: Image side of a space.
MAX_IMAGE_SIZE = 4096
#: Batch size (as art_fisher's evaluation).
MAX_BATCH_SIZE = 2**16
#: Epochs.
MAX_EPOCHS = 100_000
#: The caps ``limit`` (samples per split) and ``limit_batches`` (training batches per epoch).
MAX_LIMIT = 10**9
#: Parameters of a model space (the supernet) or of an architecture built from one, counted on PyTorch's meta
#: device before anything is allocated: 10**8 float32 parameters are 400 MB, before gradients and optimiser state
#: (NNI's DARTS space at its own width 16 and 20 cells has about 4 million).
MAX_PARAMETERS = 10**8
#: Explanation ascent steps (LeaSE uses 2; the SANAS example 7).
MAX_PGD_STEPS = 10_000
#: Trials of an NNI experiment, and trials run at the same time.
MAX_TRIALS = 1_000_000
MAX_CONCURRENCY = 1024
#: Learning rates, step sizes, ``gamma`` and ``pgd_epsilon``: beyond this a float32 update overflows or the
#: search diverges at the first step (a NaN loss stops a search in any case).
MAX_RATE = 1e6
