"""A small synthetic ``mnist.npz`` (Keras layout) for tests: no test needs the real MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_fake_mnist(folder: Path, *, n_train: int = 240, n_test: int = 80, seed: int = 0) -> Path:
    """Write ``folder/mnist.npz``: 28×28 uint8 noise with a bright bar on the row of the label; returns ``folder``.

    A small CNN learns it in one or two epochs, so runs on it have correctly classified images to attack.
    """
    rng = np.random.default_rng(seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, size=n)
        x = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(y):
            x[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        return x, y.astype(np.uint8)

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return folder
