"""A small cell-based search space for 8×8 digits, MNIST and 32×32 CIFAR-10, and the registry of spaces.

:func:`build_space` builds any space of :data:`SPACES` by name: this module's :class:`LeaseCellSpace`
(``"lease_cell"``) or NNI's hub DARTS space (``"darts"``, :mod:`nni_lease`).

The space is deliberately tiny so that a one-shot supernet trains on a laptop CPU in seconds. It uses
only NNI's two basic mutation primitives, :class:`~nni.nas.nn.pytorch.LayerChoice` (which operation a
node applies) and :class:`~nni.nas.nn.pytorch.InputChoice` (which earlier state a node reads), so every
NNI strategy — DARTS, LeaSE, random search, evolution — can search it.

Structure (``H`` = image side, ``C`` = ``width``)::

    stem: 3×3 conv (in_channels → C) + BatchNorm
    cells × cell, a 2× max-pool after every cell but the last while the side is ≥ 4
    global average pool → linear (C → n_classes), logits

A cell has ``nodes`` nodes. Node 0 applies a chosen operation to the cell input; node ``k ≥ 1``
first chooses one of the ``k + 1`` earlier states (cell input, nodes ``0..k-1``) and then applies a chosen
operation to it. The cell output is a fixed 1×1 convolution of the concatenated nodes plus the cell input
(a residual connection). Choice labels are ``"{prefix}op{k}"`` and ``"{prefix}input{k}"``; with
``shared_cells=True`` (default, like DARTS's normal cell) every cell uses the same labels and therefore the
same architecture, otherwise the prefix is ``"cell{i}_"``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace
from torch import nn

from art_fisher.utils import check_choice, check_int, is_integer
from nni_lease._darts_space import DartsSpace
from nni_lease._limits import MAX_CELLS, MAX_CHANNELS, MAX_CLASSES, MAX_IMAGE_SIZE, MAX_NODES, MAX_PARAMETERS, MAX_WIDTH

logger = logging.getLogger(__name__)

#: Names of the candidate operations, in the order they appear in each ``LayerChoice``.
OPERATIONS: tuple[str, ...] = (
    "conv_3x3",
    "sep_conv_3x3",
    "dil_conv_3x3",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
)


class _ReLUConvBN(nn.Sequential):
    def __init__(self, channels: int, kernel_size: int, dilation: int = 1, separable: bool = False) -> None:
        padding = dilation * (kernel_size - 1) // 2
        groups = channels if separable else 1
        layers: list[nn.Module] = [
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size, padding=padding, dilation=dilation, groups=groups, bias=False),
        ]
        if separable:
            layers.append(nn.Conv2d(channels, channels, 1, bias=False))
        layers.append(nn.BatchNorm2d(channels))
        super().__init__(*layers)


def build_operation(name: str, channels: int) -> nn.Module:
    """Build one candidate operation by name; every one keeps the shape ``(N, channels, H, W)``.

    Parameters
    ----------
    name : str
        One of ``OPERATIONS``.
    channels : int
        Number of input and output channels.

    Raises
    ------
    ValueError
        If ``name`` is not in ``OPERATIONS``.
    """
    if name == "conv_3x3":
        return _ReLUConvBN(channels, 3)
    if name == "sep_conv_3x3":
        return _ReLUConvBN(channels, 3, separable=True)
    if name == "dil_conv_3x3":
        return _ReLUConvBN(channels, 3, dilation=2, separable=True)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=1, padding=1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    if name == "skip_connect":
        return nn.Identity()
    raise ValueError(f"operation name must be one of {list(OPERATIONS)}; got {name!r}.")


class _Cell(nn.Module):
    def __init__(self, channels: int, nodes: int, operations: Sequence[str], prefix: str) -> None:
        super().__init__()
        self.ops = nn.ModuleList()
        self.inputs = nn.ModuleList()
        for k in range(nodes):
            self.ops.append(
                LayerChoice({name: build_operation(name, channels) for name in operations}, label=f"{prefix}op{k}")
            )
            if k > 0:
                self.inputs.append(InputChoice(k + 1, n_chosen=1, reduction="sum", label=f"{prefix}input{k}"))
        self.combine = nn.Sequential(nn.Conv2d(nodes * channels, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [x]
        for k, op in enumerate(self.ops):
            node_input = x if k == 0 else self.inputs[k - 1](states)
            states.append(op(node_input))
        return x + self.combine(torch.cat(states[1:], dim=1))


class LeaseCellSpace(ModelSpace):
    """Small cell search space (stem, ``cells`` searchable cells, classifier) returning logits.

    Parameters
    ----------
    in_channels : int
        Channels of the input images (1 for digits/MNIST, 3 for CIFAR-10).
    n_classes : int
        Number of classes (size of the logits).
    width : int
        Channels inside the cells.
    cells : int
        Number of cells; a 2× max-pool follows every cell but the last while the side is at least 4.
    nodes : int
        Nodes per cell (each one ``LayerChoice``; nodes after the first also one ``InputChoice``).
    image_size : int
        Side of the square input images (8 for digits, 32 for CIFAR-10); decides the pooling.
    operations : sequence of str
        Candidate operations, a non-empty subset of ``OPERATIONS`` without repeats.
    shared_cells : bool
        Whether all cells share one architecture (same choice labels) or each has its own.

    Raises
    ------
    ValueError
        For a non-positive size argument or an unknown / repeated / empty ``operations``.

    Examples
    --------
    >>> space = LeaseCellSpace(in_channels=1, n_classes=10, width=8, cells=2, nodes=2, image_size=8)
    >>> sorted(space.simplify())
    ['input1', 'op0', 'op1']
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        width: int = 16,
        cells: int = 2,
        nodes: int = 3,
        image_size: int = 8,
        operations: Sequence[str] = OPERATIONS,
        shared_cells: bool = True,
    ) -> None:
        super().__init__()
        for name, value, high in [
            ("in_channels", in_channels, MAX_CHANNELS),
            ("n_classes", n_classes, MAX_CLASSES),
            ("width", width, MAX_WIDTH),
            ("cells", cells, MAX_CELLS),
            ("nodes", nodes, MAX_NODES),
            ("image_size", image_size, MAX_IMAGE_SIZE),
        ]:
            check_int(value, name, low=1, high=high)
        operations = list(operations)
        if not operations:
            raise ValueError("operations must not be empty.")
        unknown = [op for op in operations if op not in OPERATIONS]
        if unknown:
            raise ValueError(f"operations must be drawn from {list(OPERATIONS)}; got unknown {unknown}.")
        if len(set(operations)) != len(operations):
            raise ValueError(f"operations must not repeat; got {operations}.")
        if len(operations) == 1 and nodes == 1:
            raise ValueError("the space has nothing to search: one operation and nodes=1.")

        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        blocks: list[nn.Module] = []
        side = image_size
        for i in range(cells):
            prefix = "" if shared_cells else f"cell{i}_"
            blocks.append(_Cell(width, nodes, operations, prefix))
            if i < cells - 1 and side >= 4:
                blocks.append(nn.MaxPool2d(2))
                side //= 2
        self.cells = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, n_classes)`` for images of shape ``(N, in_channels, image_size, image_size)``."""
        h = self.cells(self.stem(x))
        return self.classifier(torch.flatten(self.pool(h), 1))


#: The searchable spaces by command-line name (``--space``) → the class name recorded in ``architecture.json``.
#: The search spaces by the names the command line and :class:`~nni_lease.oneshot.SearchConfig` use.
SpaceName = Literal["lease_cell", "darts"]
SPACES: dict[str, str] = {"lease_cell": "LeaseCellSpace", "darts": "DartsSpace"}


def _space_class(class_name: str) -> type[ModelSpace]:
    if class_name == "DartsSpace":
        return DartsSpace
    if class_name == "LeaseCellSpace":
        return LeaseCellSpace
    raise ValueError(f"space name must be one of {sorted(SPACES.values())}; got {class_name!r}.")


def build_space(name: str, **kwargs: int) -> ModelSpace:
    """Build a space by command-line name (a key of :data:`SPACES`) or recorded class name.

    Parameters
    ----------
    name : str
        ``"lease_cell"`` / ``"LeaseCellSpace"`` (:class:`LeaseCellSpace`) or ``"darts"`` / ``"DartsSpace"``
        (:class:`nni_lease.DartsSpace`, NNI's hub DARTS space).
    **kwargs
        The class's keyword arguments.

    Raises
    ------
    TypeError
        If ``name`` is not a str.
    ValueError
        For an unknown name or a bad argument of the space.
    """
    if not isinstance(name, str):
        raise TypeError(f"space name must be a str from {sorted(SPACES)}; got {type(name).__name__}.")
    space_class = _space_class(SPACES.get(name, name))
    check_space_size(name, kwargs)  # nothing allocated
    return space_class(**kwargs)


def build_space_on_meta(name: str, *, check_size: bool = True, **kwargs: Any) -> ModelSpace:
    """:func:`build_space` on PyTorch's meta device (shapes only, no memory).

    ``check_size``: first refuse a space over the size limit (:func:`check_space_size`); retraining checks the
    chosen network instead.

    Raises
    ------
    TypeError, ValueError
        As :func:`build_space`, and ValueError for a space over the size limit.
    """
    if not isinstance(name, str):
        raise TypeError(f"space name must be a str from {sorted(SPACES)}; got {type(name).__name__}.")
    space_class = _space_class(SPACES.get(name, name))
    if check_size and space_class is LeaseCellSpace:
        check_space_size(name, kwargs)
    try:
        with torch.device("meta"):
            space = space_class(**kwargs)
    except TypeError as exc:  # e.g. an architecture file's unknown keyword
        raise ValueError(f"{SPACES.get(name, name)} cannot be built from {kwargs}: {exc}") from exc
    if check_size:
        check_model_size(space, f"the {SPACES.get(name, name)} search space {kwargs}")
    return space


def check_space_size(name: str, kwargs: dict[str, Any], architecture: dict[str, Any] | None = None) -> None:
    """Refuse (ValueError) a space of ``name`` and ``kwargs`` over ``nni_lease._limits.MAX_PARAMETERS`` parameters.

    For :class:`LeaseCellSpace`, counted from its sizes (:func:`lease_cell_parameters`, no module built): the
    supernet, or with ``architecture`` the network it chooses. For NNI's DARTS space, on the meta device.
    """
    class_name = SPACES.get(name, name)
    space = f"the {class_name} search space {kwargs}"
    what = space if architecture is None else f"the network the architecture chooses from {space}"
    if class_name == "LeaseCellSpace":
        try:
            n = lease_cell_parameters(**kwargs, architecture=architecture)
        except TypeError as exc:
            raise ValueError(f"{class_name} cannot be built from {kwargs}: {exc}") from exc
        _check_parameter_count(n, what)
        return
    build_space_on_meta(name, check_size=True, **kwargs)


def check_model_size(model: nn.Module, what: str) -> int:
    """The number of parameters of ``model`` (ValueError naming ``what`` above the limit).

    Counted from the shapes alone, so ``model`` may live on the meta device.
    """
    return _check_parameter_count(sum(p.numel() for p in model.parameters()), what)


def _check_parameter_count(n: int, what: str) -> int:
    if n > MAX_PARAMETERS:
        what = what if len(what) <= 160 else what[:157] + "..."
        raise ValueError(
            f"{what} has {n:,} parameters ({4 * n / 2**30:.1f} GiB in float32, before gradients and optimiser "
            f"state), over the limit of {MAX_PARAMETERS:,}; choose a smaller width, fewer cells or nodes."
        )
    return n


def _operation_parameters(name: str, width: int) -> int:
    """Parameters of :func:`build_operation` ``(name, width)``: convolution weights and BatchNorm affine terms."""
    convolution = {"conv_3x3": 9 * width * width, "sep_conv_3x3": 9 * width + width * width}
    convolution["dil_conv_3x3"] = convolution["sep_conv_3x3"]
    return convolution[name] + 2 * width if name in convolution else 0


def lease_cell_parameters(
    *,
    in_channels: int = 1,
    n_classes: int = 10,
    width: int = 16,
    cells: int = 2,
    nodes: int = 3,
    image_size: int = 8,
    operations: Sequence[str] = OPERATIONS,
    shared_cells: bool = True,
    architecture: dict[str, Any] | None = None,
) -> int:
    """The parameters of ``LeaseCellSpace(...)`` from its sizes alone, or of the network ``architecture`` chooses.

    An operation the architecture does not name counts as the largest candidate. Sizes that the space would
    refuse count 0 (its constructor then says why).
    """
    del image_size
    sizes = ((in_channels, MAX_CHANNELS), (n_classes, MAX_CLASSES), (width, MAX_WIDTH), (cells, MAX_CELLS),
             (nodes, MAX_NODES))  # fmt: skip
    if any(not is_integer(v) or not 1 <= v <= high for v, high in sizes):
        return 0
    ops = [o for o in operations if o in OPERATIONS] if isinstance(operations, (list, tuple)) else list(OPERATIONS)
    largest = max((_operation_parameters(o, width) for o in ops), default=0)
    total = 9 * in_channels * width + 2 * width + width * n_classes + n_classes
    for i in range(cells):
        prefix = "" if shared_cells else f"cell{i}_"
        total += nodes * width * width + 2 * width  # the cell's 1x1 combination and its BatchNorm
        for k in range(nodes):
            if architecture is None:
                total += sum(_operation_parameters(o, width) for o in ops)
            else:
                chosen = architecture.get(f"{prefix}op{k}")
                total += _operation_parameters(chosen, width) if chosen in ops else largest
    return total


#: Per space: default ``width``, number of cells and nodes per cell (the DARTS space's cells always have 4 nodes).
SPACE_DEFAULTS: dict[str, dict[str, int]] = {
    "lease_cell": {"width": 8, "cells": 2, "nodes": 2},
    "darts": {"width": 4, "cells": 3, "nodes": 4},
}


def space_kwargs_for(
    name: str, *, in_channels: int, n_classes: int, image_size: int, width: int, cells: int, nodes: int
) -> dict[str, int]:
    """The keyword arguments of space ``name`` (a key of :data:`SPACES`) for these data and sizes.

    Raises
    ------
    ValueError
        For an unknown ``name``, or ``nodes`` other than 4 for ``"darts"``.
    """
    if name == "lease_cell":
        return {
            "in_channels": in_channels,
            "n_classes": n_classes,
            "width": width,
            "cells": cells,
            "nodes": nodes,
            "image_size": image_size,
        }
    if name == "darts":
        if nodes != SPACE_DEFAULTS["darts"]["nodes"]:
            raise ValueError(f"nodes must be 4 for space 'darts' (NNI's DARTS cells have 4 nodes); got {nodes!r}.")
        return {"in_channels": in_channels, "n_classes": n_classes, "width": width, "cells": cells}
    check_choice(name, "space", SpaceName)
    raise AssertionError(name)  # unreachable: every space is handled above
