"""Whether a model's logits are piecewise linear in its input, read off its autograd graph.

For such a model (Linear / Conv layers, eval-mode BatchNorm, ReLU-like activations, max / average
pooling, reshapes, sums, residual additions) every second derivative with respect to the input vanishes
almost everywhere: the output-gradients ``∂z_c/∂o`` of any layer output ``o`` are locally constant in
``x``. :mod:`art_fisher._fast_sensitivity` uses this to compute the sensitivity with first-order
backward passes only.

The test is decided on the graph of one forward pass in which ``x`` is the only tensor that requires
grad (the parameters are detached): every node of the graph must be an operation that is linear or
piecewise linear in its inputs, and a product-like operation (multiplication, matrix product,
convolution, normalisation) may have at most one input that depends on ``x``. Anything else — a smooth
activation, a softmax, a LayerNorm, a custom ``autograd.Function`` — makes the answer False, and the
general (reverse-over-forward) path is used.
"""

from __future__ import annotations

import torch

from art_fisher._functional import FunctionalNet

# Nodes linear or piecewise linear in every input, whatever depends on x.
_ANY = frozenset(
    {
        "AccumulateGrad",
        "AddBackward0",
        "AddBackward1",
        "SubBackward0",
        "SubBackward1",
        "RsubBackward0",
        "RsubBackward1",
        "NegBackward0",
        "SumBackward0",
        "SumBackward1",
        "MeanBackward0",
        "MeanBackward1",
        "CatBackward0",
        "StackBackward0",
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "PermuteBackward0",
        "TransposeBackward0",
        "TransposeBackward1",
        "TBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "SqueezeBackward3",
        "UnsqueezeBackward0",
        "ExpandBackward0",
        "RepeatBackward0",
        "CloneBackward0",
        "ToCopyBackward0",
        "SelectBackward0",
        "SliceBackward0",
        "IndexBackward0",
        "GatherBackward0",
        "NarrowBackward0",
        "SplitBackward0",
        "SplitWithSizesBackward0",
        "UnbindBackward0",
        "AliasBackward0",
        "CopySlices",
        "ConstantPadNdBackward0",
        "MaskedFillBackward0",
        "WhereBackward0",
        "AvgPool1DBackward0",
        "AvgPool2DBackward0",
        "AvgPool3DBackward0",
        "AdaptiveAvgPool1DBackward0",
        "AdaptiveAvgPool2DBackward0",
        "AdaptiveAvgPool3DBackward0",
        "ReluBackward0",
        "ThresholdBackward0",
        "HardtanhBackward0",
        "LeakyReluBackward0",
        "ClampBackward0",
        "ClampBackward1",
        "ClampMinBackward0",
        "ClampMaxBackward0",
        "AbsBackward0",
        "MaxBackward0",
        "MaxBackward1",
        "MinBackward0",
        "MinBackward1",
        "MaximumBackward0",
        "MinimumBackward0",
        "AmaxBackward0",
        "AminBackward0",
        "MaxPool2DWithIndicesBackward0",
        "MaxPool3DWithIndicesBackward0",
        "AdaptiveMaxPool1DBackward0",
        "AdaptiveMaxPool2DBackward0",
        "AdaptiveMaxPool3DBackward0",
        "MulBackward1",  # times a Python number
        "DivBackward1",  # by a Python number
    }
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
# Nodes in which only the first input (the data) may depend on x: convolutions and eval-mode
# normalisation with constant statistics, division by a constant tensor.
_FIRST_ONLY = frozenset(
    {
        "ConvolutionBackward0",
        "NativeBatchNormBackward0",
        "CudnnBatchNormBackward0",
        "MiopenBatchNormBackward0",
        "DivBackward0",
    }
)


def _node_ok(node) -> bool:
    name = type(node).__name__
    depends = [fn is not None for fn, _i in node.next_functions]
    if name in _ANY:
        return True
    if name in _AT_MOST_ONE:
        return sum(depends[i] for i in _AT_MOST_ONE[name] if i < len(depends)) <= 1
    if name in _FIRST_ONLY:
        if getattr(node, "_saved_training", False):  # batch statistics: not affine per sample
            return False
        return not any(depends[1:])
    return False


def is_piecewise_linear(net: FunctionalNet, x: torch.Tensor) -> bool:
    """True if the logits of ``net`` are piecewise linear in the input (judged on ``x[:1]``).

    Parameters
    ----------
    net : FunctionalNet
    x : Tensor (n, ...)
        Inputs; one forward pass of the first sample builds the graph that is inspected.
    """
    with torch.enable_grad():
        xr = x[:1].detach().requires_grad_(True)
        z = net.logits(net.selected(), xr)
    if z.grad_fn is None:
        return True  # constant in x
    seen: set[int] = set()
    stack = [z.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if not _node_ok(node):
            return False
        stack.extend(fn for fn, _i in node.next_functions)
    return True
