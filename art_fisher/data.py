"""Data sets: the embedded scikit-learn digits (default) and local files.

Nothing is ever downloaded. Images come as float32 arrays of shape ``(N, C, H, W)`` scaled to
``[0, 1]`` and integer labels of shape ``(N,)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Dataset", "load_digits"]


@dataclass(frozen=True)
class Dataset:
    """Images and labels of one data set.

    Attributes
    ----------
    x : ndarray of shape (N, C, H, W), float32 in [0, 1]
    y : ndarray of shape (N,), int64
    name : str
    n_classes : int
    """

    x: np.ndarray
    y: np.ndarray
    name: str
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, ``(C, H, W)``."""
        return tuple(self.x.shape[1:])


def load_digits() -> Dataset:
    """scikit-learn's 1797 8×8 grey-level digits, shape ``(1797, 1, 8, 8)``, scaled to ``[0, 1]``."""
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return Dataset(x=x, y=bunch.target.astype(np.int64), name="digits", n_classes=10)
