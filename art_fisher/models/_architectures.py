"""Model definitions and a small training loop.

The architectures here are the ones ``art-fisher evaluate --arch`` knows; every one returns
**logits** (no softmax), which is what :func:`art_fisher.metrics` expects with ``output="logits"``
and what ART's ``PyTorchClassifier`` expects with ``nn.CrossEntropyLoss``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from art_fisher._threads import check_threads
from art_fisher.utils import check_choice

logger = logging.getLogger(__name__)


class _TwoConvCNN(nn.Module):
    """Two 3×3 ReLU convolutions (``width`` and ``2 * width`` channels), an adaptive max-pool, two linear layers."""

    def __init__(self, in_channels: int, n_classes: int, width: int, *, pool_first: bool, grid: int) -> None:
        super().__init__()
        first: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
        if pool_first:
            first.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(
            *first,
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(grid),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * grid * grid, 96),
            nn.ReLU(),
            nn.Linear(96, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, n_classes)`` for images of shape ``(N, in_channels, H, W)``."""
        return self.classifier(self.features(x))


class SmallCNN(_TwoConvCNN):
    """A small ReLU / max-pool CNN for 8×8 digits and 28×28 MNIST (about 55k parameters at width 16).

    Parameters
    ----------
    in_channels : int
        Channels of the input images.
    n_classes : int
        Number of classes (size of the logits).
    width : int
        Channels of the first convolution; the second has ``2 * width``.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10, width: int = 16) -> None:
        super().__init__(in_channels, n_classes, width, pool_first=False, grid=4)


class MnistCNN(_TwoConvCNN):
    """:class:`SmallCNN` with a 2×2 max-pool after the first convolution, for 28×28 MNIST (about 160k parameters).

    The second convolution runs at 14×14 instead of 28×28, which makes every forward and backward pass
    (training, attacks, Fisher metrics) about four times cheaper than :class:`SmallCNN` on MNIST at the
    same widths; the classifier sees the 7×7 feature map of the second convolution.

    Parameters
    ----------
    in_channels : int
        Channels of the input images.
    n_classes : int
        Number of classes (size of the logits).
    width : int
        Channels of the first convolution; the second has ``2 * width``.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10, width: int = 16) -> None:
        super().__init__(in_channels, n_classes, width, pool_first=True, grid=7)


class CifarCNN(nn.Module):
    """A CIFAR-size CNN with BatchNorm (3×32×32 inputs, about 0.5M parameters).

    Parameters
    ----------
    in_channels : int
        Channels of the input images.
    n_classes : int
        Number of classes (size of the logits).
    """

    def __init__(self, in_channels: int = 3, n_classes: int = 10) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            *block(in_channels, 32),
            *block(32, 64),
            nn.MaxPool2d(2),
            *block(64, 128),
            nn.MaxPool2d(2),
            *block(128, 128),
            nn.AdaptiveMaxPool2d(4),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128 * 16, 128), nn.ReLU(), nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, n_classes)`` for images of shape ``(N, in_channels, H, W)``."""
        return self.classifier(self.features(x))


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "mnist_cnn": MnistCNN,
    "cifar_cnn": CifarCNN,
}


def build_model(arch: str, *, in_channels: int, n_classes: int) -> nn.Module:
    """Instantiate one of :data:`ARCHITECTURES` by name.

    Raises
    ------
    ValueError
        If ``arch`` is not a known architecture.
    """
    check_choice(arch, "arch", sorted(ARCHITECTURES))
    return ARCHITECTURES[arch](in_channels=in_channels, n_classes=n_classes)


def train_model(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> nn.Module:
    """Train ``model`` in place with Adam on cross-entropy and return it in eval mode.

    Parameters
    ----------
    model : nn.Module
        A module returning logits.
    x : ndarray of shape (N, C, H, W)
        Float inputs.
    y : ndarray of shape (N,)
        Integer labels.
    epochs, batch_size, lr : int, int, float
        Optimiser settings.
    seed : int
        Seed of the shuffling generator (initialise the model's weights under your own seed).
    device : str or torch.device
        Where to train.
    progress : bool
        Show a tqdm bar over epochs; without it, each epoch's mean loss is logged at INFO level.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length; got {len(x)} and {len(y)}.")
    if torch.device(device).type == "cpu":
        check_threads("training")
    gen = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    bar = tqdm(range(epochs), desc="training", disable=not progress, leave=False)
    for epoch in bar:
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(xt), batch_size):
            idx = perm[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx].to(device)), yt[idx].to(device))
            if not bool(torch.isfinite(loss)):
                raise ValueError(
                    f"training diverged: the loss is {float(loss)} at epoch {epoch + 1}; lower the learning rate "
                    f"(lr={lr:g}) or check the data."
                )
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        bar.set_postfix(loss=f"{total / len(xt):.4f}")
        if not progress:
            logger.info("training epoch %d/%d: mean loss %.4f", epoch + 1, epochs, total / len(xt))
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model
