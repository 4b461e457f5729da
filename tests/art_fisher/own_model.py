"""A model and data the project has never seen: 20 classes of 3×16×16 images, wrapped with preprocessing.

The images are class prototypes (smooth random colour patterns) plus noise, clipped to [0, 1]; a small CNN
(not one of :data:`art_fisher.models.ARCHITECTURES`: strided convolution, average pooling, a BatchNorm)
learns them in a few seconds. The ART classifier normalises with per-channel mean / std as its
``preprocessing``, so a run that dropped the preprocessing would see a worse classifier.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

N_CLASSES = 20
SHAPE = (3, 16, 16)
MEAN = (0.45, 0.5, 0.55)
STD = (0.22, 0.25, 0.2)


class TwentyClassNet(nn.Module):
    """Conv(3→12) → ReLU → Conv(12→24, stride 2) → BatchNorm → ReLU → AvgPool(4) → Linear(384→20)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 12, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(12, 24, 3, stride=2, padding=1),
            nn.BatchNorm2d(24),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(24 * 16, N_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def make_data(n: int, seed: int, noise: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (float32, (n, 3, 16, 16), in [0, 1]) and their labels; prototypes fixed, noise seeded."""
    protos = 0.4 + 0.2 * np.random.default_rng(12345).random((N_CLASSES, 3, 4, 4))
    protos = np.kron(protos, np.ones((1, 1, 4, 4)))  # smooth 16×16 colour patterns
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    x = np.clip(protos[y] + noise * rng.standard_normal((n, *SHAPE)), 0.0, 1.0).astype(np.float32)
    return x, y.astype(np.int64)


def trained_net(seed: int = 0, epochs: int = 6) -> nn.Module:
    """:class:`TwentyClassNet` trained on normalised images (the preprocessing the classifier applies)."""
    torch.manual_seed(seed)
    net = TwentyClassNet()
    x, y = make_data(1200, seed=seed + 1)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    xt, yt = (torch.from_numpy(x) - mean) / std, torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(yt), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net.eval()


def classifier(net: nn.Module):
    """ART ``PyTorchClassifier`` of ``net`` with the per-channel normalisation as its preprocessing."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        net, loss=nn.CrossEntropyLoss(), input_shape=SHAPE, nb_classes=N_CLASSES, clip_values=(0.0, 1.0),
        preprocessing=(np.array(MEAN).reshape(3, 1, 1), np.array(STD).reshape(3, 1, 1)),
    )  # fmt: skip


def exported(net: nn.Module, path) -> None:
    """Save ``net`` (without the normalisation: ``--mean`` / ``--std`` give it) as a ``torch.export`` archive."""
    batch = torch.export.Dim("batch")
    program = torch.export.export(net.eval(), (torch.zeros(2, *SHAPE),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
