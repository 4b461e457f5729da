"""Whether a model is piecewise linear in its input, read off the autograd graph of a probe pass.

:func:`is_piecewise_linear` decides the sensitivity's path (:mod:`art_fisher.metrics._sensitivity`): on a
piecewise-linear network the second derivatives in ``x`` vanish almost everywhere, so first-order terms give
the exact sensitivity.
"""

from __future__ import annotations

import torch
from torch.autograd.graph import Node, get_gradient_edge

# Nodes linear or piecewise linear in every input, whatever depends on x.
_ANY = frozenset(
    """AccumulateGrad AddBackward0 AddBackward1 SubBackward0 SubBackward1 RsubBackward0 RsubBackward1
    NegBackward0 SumBackward0 SumBackward1 MeanBackward0 MeanBackward1 CatBackward0 StackBackward0
    ViewBackward0 UnsafeViewBackward0 ReshapeAliasBackward0 PermuteBackward0 TransposeBackward0
    TransposeBackward1 TBackward0 SqueezeBackward0 SqueezeBackward1 SqueezeBackward2 SqueezeBackward3
    UnsqueezeBackward0 ExpandBackward0 RepeatBackward0 CloneBackward0 ToCopyBackward0 SelectBackward0
    SliceBackward0 IndexBackward0 GatherBackward0 NarrowBackward0 SplitBackward0 SplitWithSizesBackward0
    UnbindBackward0 AliasBackward0 CopySlices ConstantPadNdBackward0 MaskedFillBackward0 WhereBackward0
    AvgPool1DBackward0 AvgPool2DBackward0 AvgPool3DBackward0 AdaptiveAvgPool1DBackward0
    AdaptiveAvgPool2DBackward0 AdaptiveAvgPool3DBackward0 ReluBackward0 ThresholdBackward0
    HardtanhBackward0 LeakyReluBackward0 ClampBackward0 ClampBackward1 ClampMinBackward0 ClampMaxBackward0
    AbsBackward0 MaxBackward0 MaxBackward1 MinBackward0 MinBackward1 MaximumBackward0 MinimumBackward0
    AmaxBackward0 AminBackward0 MaxPool2DWithIndicesBackward0 MaxPool3DWithIndicesBackward0
    AdaptiveMaxPool1DBackward0 AdaptiveMaxPool2DBackward0 AdaptiveMaxPool3DBackward0
    MulBackward1 DivBackward1""".split()  # the last two: by a Python number
)
# Product-like nodes: of the inputs at these positions at most one may depend on x.
_AT_MOST_ONE = {
    "MulBackward0": (0, 1),
    "MmBackward0": (0, 1),
    "BmmBackward0": (0, 1),
    "MvBackward0": (0, 1),
    "DotBackward0": (0, 1),
    "AddmmBackward0": (1, 2),
    "AddmvBackward0": (1, 2),
    "BaddbmmBackward0": (1, 2),
    "LinearBackward0": (0, 1, 2),
}
# Nodes in which only the first input (the data) may depend on x: convolutions, eval-mode
# normalisation with constant statistics, division by a tensor that does not depend on x.
_FIRST_ONLY = frozenset(
    {
        "ConvolutionBackward0",
        "NativeBatchNormBackward0",
        "CudnnBatchNormBackward0",
        "MiopenBatchNormBackward0",
        "DivBackward0",
    }
)


def _x_dependence(root, x_node) -> dict[int, bool]:
    """Node id → whether the node's value depends on ``x`` (iterative post-order over the graph)."""
    dep: dict[int, bool] = {}
    stack = [root]
    while stack:
        node = stack[-1]
        if id(node) in dep:
            stack.pop()
            continue
        children = [fn for fn, _i in node.next_functions if fn is not None]
        pending = [c for c in children if id(c) not in dep]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        dep[id(node)] = node is x_node or any(dep[id(c)] for c in children)
    return dep


def _node_ok(node, dep: dict[int, bool]) -> bool:
    name = type(node).__name__
    depends = [fn is not None and dep[id(fn)] for fn, _i in node.next_functions]
    if name in _ANY:
        return True
    if name in _AT_MOST_ONE:
        return sum(depends[i] for i in _AT_MOST_ONE[name] if i < len(depends)) <= 1
    if name in _FIRST_ONLY:
        if getattr(node, "_saved_training", False):  # batch statistics: not affine per sample
            return False
        return not any(depends[1:])
    return False


def is_piecewise_linear(probe: tuple[torch.Tensor, torch.Tensor]) -> bool:
    """True if the logits are piecewise linear in the input, judged on the autograd graph of a probe pass.

    ``probe`` is the probe's logits (with their graph) and its input leaf (``HookCoverage.probe``).

    Every node that depends on ``x`` must be linear or piecewise linear in its inputs, and a
    product-like node (multiplication, matrix product, convolution, normalisation) may have at most
    one input that depends on ``x``. Anything else — a smooth activation, a softmax that is not the
    declared head, a LayerNorm, batch statistics, a custom ``autograd.Function`` — says no.
    """
    z, xr = probe
    if z.grad_fn is None:
        return True  # constant in x
    dep = _x_dependence(z.grad_fn, get_gradient_edge(xr).node)
    seen: set[int] = set()
    stack: list[Node | None] = [z.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen or not dep[id(node)]:
            continue
        seen.add(id(node))
        if not _node_ok(node, dep):
            return False
        stack.extend(fn for fn, _i in node.next_functions)
    return True
