"""The listener: a fixed, human-designed network that learns the task from the explainer's explanations.

In LeaSE the listener is part of the *strategy*, not of the search space: its architecture never
changes, only its weights ``W`` are trained on explained inputs ``δ ⊙ x``. Any ``nn.Module`` mapping
inputs ``(N, C, H, W)`` to logits ``(N, n_classes)`` can serve; :func:`default_listener` builds a small
CNN sized from the input shape.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from art_fisher.models import SmallCNN

logger = logging.getLogger(__name__)


class PerSampleStandardize(nn.Module):
    """Standardise each sample to zero mean and unit standard deviation (no parameters, no buffers).

    Explained inputs ``δ ⊙ x`` are about ``ε`` times smaller than images; this puts them back on the
    scale a CNN trains well on, whatever ``ε`` is.

    .. math:: z_i = (x_i - \\bar x_i) / (s_i + 10^{-6}),

    with :math:`\\bar x_i`, :math:`s_i` the mean and standard deviation over all entries of sample ``i``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised tensor of the same shape ``(N, ...)``."""
        flat = x.flatten(1)
        mean = flat.mean(dim=1)
        std = flat.std(dim=1, unbiased=False)
        shape = (-1,) + (1,) * (x.dim() - 1)
        return (x - mean.view(shape)) / (std.view(shape) + 1e-6)


def default_listener(input_shape: Sequence[int], n_classes: int, *, width: int | None = None) -> nn.Module:
    """The default listener: per-sample standardisation followed by :class:`art_fisher.models.SmallCNN`.

    Parameters
    ----------
    input_shape : sequence of int
        Shape of one input, ``(C, H, W)``.
    n_classes : int
        Number of classes (size of the logits).
    width : int or None
        Channels of the first convolution; default 16 for images up to 16×16, 32 above.

    Returns
    -------
    nn.Module
        Maps ``(N, C, H, W)`` to logits ``(N, n_classes)``; freshly initialised from the global torch RNG
        (seed it, or fork the RNG, for reproducibility).

    Raises
    ------
    ValueError
        If ``input_shape`` is not ``(C, H, W)`` with positive entries or ``n_classes < 2``.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes; got {tuple(input_shape)}.")
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2; got {n_classes}.")
    if width is None:
        width = 16 if max(shape[1:]) <= 16 else 32
    return nn.Sequential(PerSampleStandardize(), SmallCNN(in_channels=shape[0], n_classes=n_classes, width=width))


def check_listener(listener: nn.Module, input_shape: Sequence[int], n_classes: int) -> None:
    """Check that ``listener`` maps a batch of shape ``(2, *input_shape)`` to logits ``(2, n_classes)``.

    Runs one forward pass in eval mode without gradients on zeros and restores the listener's mode.

    Raises
    ------
    ValueError
        If ``listener`` is not an ``nn.Module``, fails on such input, or its output shape differs.
    """
    if not isinstance(listener, nn.Module):
        raise ValueError(f"listener must be a torch.nn.Module; got {type(listener).__name__}.")
    try:
        param = next(listener.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    was_training = listener.training
    listener.eval()
    try:
        with torch.no_grad():
            out = listener(torch.zeros((2, *input_shape), device=device, dtype=dtype))
    except Exception as exc:  # report which argument is at fault, keep the cause
        raise ValueError(f"listener failed on inputs of shape (N, {', '.join(map(str, input_shape))}): {exc}") from exc
    finally:
        listener.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"listener output must have shape (N, n_classes) = (N, {n_classes}); got {got} for N = 2.")
