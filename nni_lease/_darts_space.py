"""NNI's hub DARTS cell space (:class:`nni.nas.hub.pytorch.DARTS`) for grey or colour 10-class images.

The hub space is the one DARTS and LeaSE's source search: cells of 4 nodes, each node the sum of two
operations chosen from :attr:`~nni.nas.hub.pytorch.DARTS.DARTS_OPS` (separable and dilated convolutions,
pooling, skip) applied to two chosen earlier states, a *normal* and a *reduce* cell shared by every cell
of their kind, three stages of ``cells // 3`` cells (the first cell of stages two and three halves
the side). Its CIFAR stem expects 3 channels and its head has 10 classes; :class:`DartsSpace` feeds a
grey image to all three stem channels (``x.expand(-1, 3, -1, -1)``, the same as a stem whose three input
channels share their weights), so MNIST and the 8×8 digits go through it unchanged.

Choice labels are NNI's: ``normal/op_{node}_{k}`` and ``normal/input_{node}_{k}`` (``k`` in 0, 1, nodes
2..5), the same with ``reduce/``; every NNI strategy that handles ``LayerChoice`` and ``InputChoice``
(DARTS, LeaSE, :class:`~nni_lease.multitrial.LeaseMultiTrial`) searches it.

Cost: NNI's own settings (width 16, 8 to 20 cells) are made for a GPU. On a CPU core, width 4 and 3 cells
(one per stage) train a one-shot supernet on MNIST at a few seconds per 64-image batch; these are the
command line's defaults for ``--space darts``.
"""

from __future__ import annotations

from typing import Any

import torch
from nni.nas.hub.pytorch import DARTS
from nni.nas.space import model_context

from art_fisher.utils import check_choice, check_int

#: Width (channels of the first stage's operations) and cell count the command line uses for ``--space darts``.
DARTS_DEFAULT_WIDTH = 4
DARTS_DEFAULT_CELLS = 3


class DartsSpace(DARTS):
    """NNI's hub DARTS space (CIFAR stem) that also takes 1-channel images; returns logits of 10 classes.

    Parameters
    ----------
    in_channels : {1, 3}
        Channels of the input images; 1-channel images are repeated to the 3 channels of the stem.
    n_classes : int
        Must be 10 (the hub space's CIFAR head).
    width : int
        Channels of the first stage's operations (doubled at each reduction; the stem has ``3 * width``).
    cells : int
        Cells in all (at least 3: one per stage, the first of stages two and three a reduce cell).

    Raises
    ------
    ValueError
        For ``in_channels`` other than 1 or 3, ``n_classes`` other than 10, or a non-positive size
        (``cells`` below 3).

    Examples
    --------
    >>> space = DartsSpace(in_channels=1, width=2, cells=3)
    >>> sorted(space.simplify())[:2]
    ['normal/input_2_0', 'normal/input_2_1']
    """

    def __init__(
        self,
        in_channels: int = 3,
        n_classes: int = 10,
        width: int = DARTS_DEFAULT_WIDTH,
        cells: int = DARTS_DEFAULT_CELLS,
    ) -> None:
        check_choice(in_channels, "in_channels", (1, 3))  # the hub DARTS stem takes 3
        check_choice(n_classes, "n_classes", (10,))  # the hub DARTS space's CIFAR head
        check_int(width, "width", low=1)
        check_int(cells, "cells", low=3)  # one cell per stage
        super().__init__(width=width, num_cells=cells, dataset="cifar")  # NNI's name for it
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, 10)`` for images of shape ``(N, in_channels, H, W)``, ``H, W >= 4``."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return super().forward(x)

    def freeze(self, sample: dict[str, Any]) -> DartsSpace:
        """The fixed network of ``sample`` (choice label → value), freshly initialised, as a :class:`DartsSpace`."""
        with model_context(sample):
            return DartsSpace(self.in_channels, 10, self.width, self.num_cells)
