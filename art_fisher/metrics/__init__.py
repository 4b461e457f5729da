r"""Exact, batched Fisher-information metrics of a classifier's prediction (the public functions).

For one input ``x`` with logits ``z`` (C,), class probabilities ``p = softmax(z)`` and the Jacobian
``J = ∂z/∂θ`` (C × P) over the selected parameters ``θ``, the Fisher information of the predictive
distribution is

.. math::

    F(x) = \sum_c p_c \nabla_θ \log p_c \nabla_θ \log p_c^\top = J^\top S J,
    \qquad S = \operatorname{diag}(p) - p p^\top .

``F`` is never formed. Each metric lives in its own module: :mod:`~art_fisher.metrics.trace` (trace,
per-tensor traces, λ_max), :mod:`~art_fisher.metrics.quadratic_form`,
:mod:`~art_fisher.metrics.sensitivity`; :mod:`~art_fisher.metrics.basis` holds ``S`` and its factors,
:mod:`~art_fisher.metrics.engine` the per-sample Gram blocks ``K_k = J_k J_kᵀ`` of each parameter
tensor (forward hooks and one module per layer type, ``torch.func`` for everything else), and
:mod:`~art_fisher.metrics.finite_difference` the original algorithm.

The model may return logits, log-probabilities or probabilities (``output=``); a terminal
``log_softmax`` / ``softmax`` is read through to its logits. The model is never modified:
parameters, ``.grad``, ``requires_grad`` flags and train/eval mode come back as they were. Models
with BatchNorm or Dropout must be in eval mode (a ValueError names the module otherwise): in
training mode one sample's output depends on the batch or on chance. Every sample's output and
result is checked: a non-finite one is a ValueError naming the samples.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import NamedTuple

import torch
from torch import nn

from art_fisher import _checks
from art_fisher.metrics import quadratic_form as _quadratic
from art_fisher.metrics import sensitivity as _sensitivity
from art_fisher.metrics import trace as _trace
from art_fisher.metrics.directions import Direction
from art_fisher.metrics.engine import chunking
from art_fisher.metrics.engine.network import FunctionalNet
from art_fisher.metrics.engine.recorder import Plan, make_plan
from art_fisher.metrics.finite_difference import per_class_trace
from art_fisher.metrics.top_mass import TraceEstimate, fisher_trace_estimate, selection

__all__ = [
    "BlockTraces",
    "TraceEstimate",
    "fisher_block_traces",
    "fisher_max_eigenvalue",
    "fisher_quadratic_form",
    "fisher_sensitivity",
    "fisher_trace",
    "fisher_trace_estimate",
]


class BlockTraces(NamedTuple):
    """Per-parameter-tensor traces of the Fisher matrix (unpacks as ``values, names``).

    Attributes
    ----------
    values : Tensor of shape (N, K)
        ``tr F_kk(x)``: the trace of each selected parameter tensor's own diagonal block.
    names : tuple of str
        The K parameter names, in ``model.named_parameters()`` order.
    """

    values: torch.Tensor
    names: tuple[str, ...]


def _setup(
    model: nn.Module,
    x: torch.Tensor,
    *,
    output: str,
    params: Iterable[str] | None,
    method: str = "exact",
    epsilon: float = 1e-3,
    batch_size: int | None = None,
    create_graph: bool = False,
) -> tuple[FunctionalNet, int, float, int | None]:
    _checks.check_model(model)
    _checks.check_x(x)
    _checks.check_choice("output", output, _checks.OUTPUTS)
    _checks.check_choice("method", method, _checks.METHODS)
    eps = _checks.check_epsilon(epsilon)
    bs = _checks.check_batch_size(batch_size)
    _checks.check_bool("create_graph", create_graph)
    if create_graph and method != "exact":
        raise ValueError(f"create_graph=True needs method='exact'; got method={method!r}.")
    names = _checks.check_params(model, params)
    _checks.check_model_matches_x(model, names, x)
    n_classes = _checks.probe_output(model, x, output)
    return FunctionalNet(model, names, output), n_classes, eps, bs


def _grad_mode(create_graph: bool) -> AbstractContextManager:
    return torch.enable_grad() if create_graph else torch.no_grad()


def _input(x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    return x if create_graph else x.detach()


def fisher_trace(
    model: nn.Module,
    x: torch.Tensor,
    *,
    output: str = "logits",
    params: Iterable[str] | None = None,
    method: str = "exact",
    epsilon: float = 1e-3,
    batch_size: int | None = None,
    create_graph: bool = False,
    tau: float | None = None,
) -> torch.Tensor:
    r"""Trace of each sample's Fisher matrix, ``tr F(x) = Σ_c p_c ‖∇θ log p_c‖²``.

    Computed as ``Σ_k tr(Wᵀ K_k W)`` (``W Wᵀ = S``, C − 1 columns): the squared norms of per-sample
    gradients along the columns of ``W``, from C − 1 batched backward passes.

    Parameters
    ----------
    model : nn.Module
        Maps ``x`` (N, ...) to (N, C); BatchNorm / Dropout modules in eval mode.
    x : Tensor of shape (N, ...)
        Finite float inputs with the model's dtype and device.
    output : {"logits", "log_probs", "probs"}
        What the model returns.
    params : iterable of str, optional
        Names (as in ``model.named_parameters()``) of the parameters the Fisher matrix is taken over,
        whether or not they require grad; default: every parameter with ``requires_grad``, or every
        parameter when none requires grad (a frozen model).
    method : {"exact", "finite_difference"}
        ``"finite_difference"`` reproduces the original algorithm, which for the trace sums per-class
        products of backward-pass gradients ``Σ_c ⟨∇θ z_c, ∇θ p_c⟩`` (it has no finite difference, so
        it equals the exact trace up to rounding and ignores ``epsilon``); it is slower.
    epsilon : float
        Validated only (the trace has no finite difference).
    batch_size : int, optional
        Samples processed at once (bounds memory); default: chosen internally.
    create_graph : bool
        Return a tensor whose autograd graph reaches ``x`` (make ``x`` require grad first), so that
        ``torch.autograd.grad(tr.sum(), x)`` is the exact input gradient of the trace (mixed second
        derivatives). Uses C backward passes (a factor of ``S`` smooth in ``p``). ``method="exact"`` only.
    tau : float in (0, 1), optional
        Many-class heads: keep each sample's most probable classes holding ``1 − tau`` of its
        probability and merge the rest into one class (:mod:`art_fisher.metrics.top_mass`): about as
        many backward passes as kept classes instead of ``C − 1``, and a certain lower bound of the
        exact value (``F_τ ≼ F``). None (default): exact.

    Returns
    -------
    Tensor of shape (N,)
        On ``x``'s device, in ``x``'s dtype; detached unless ``create_graph``.

    Raises
    ------
    TypeError, ValueError
        For invalid arguments (before any computation), and for samples whose output or trace is
        not finite (naming them).
    """
    net, _n_classes, _eps, bs = _setup(
        model, x, output=output, params=params, method=method, epsilon=epsilon, batch_size=batch_size,
        create_graph=create_graph,
    )
    classes = selection(tau, method=method)
    x = _input(x, create_graph)
    with _grad_mode(create_graph):
        if method == "finite_difference":
            n_params = sum(net.base[n].numel() for n in net.names)  # Jacobians of logits and probabilities
            size = bs or max(1, chunking.func_chunk(n_params, _n_classes, x.element_size()) // 2)
            values = torch.cat([per_class_trace(net, x[sl]) for sl in chunking.chunks(x.shape[0], size)])
        else:
            values = _trace.block_traces(
                net, make_plan(net, x), x, batch_size=bs, create_graph=create_graph, classes=classes
            ).sum(1)
    return _checks.check_finite_result(values, "fisher_trace")


def fisher_block_traces(
    model: nn.Module,
    x: torch.Tensor,
    *,
    output: str = "logits",
    params: Iterable[str] | None = None,
    batch_size: int | None = None,
    create_graph: bool = False,
    tau: float | None = None,
) -> BlockTraces:
    r"""Trace of each selected parameter tensor's own diagonal block of each sample's Fisher matrix.

    ``tr F_kk(x) = Σ_c p_c ‖∇θ_k log p_c‖²`` for every parameter tensor ``k``; the values sum over
    ``k`` to :func:`fisher_trace`. They cost the same as the trace.

    Parameters
    ----------
    model, x, output, params, batch_size, create_graph, tau
        As in :func:`fisher_trace`.

    Returns
    -------
    BlockTraces
        ``values`` of shape (N, K) (detached unless ``create_graph``) and the K parameter ``names``.

    Raises
    ------
    TypeError, ValueError
        As :func:`fisher_trace`.
    """
    net, _n_classes, _eps, bs = _setup(
        model, x, output=output, params=params, batch_size=batch_size, create_graph=create_graph
    )
    classes = selection(tau)
    x = _input(x, create_graph)
    with _grad_mode(create_graph):
        values = _trace.block_traces(
            net, make_plan(net, x), x, batch_size=bs, create_graph=create_graph, classes=classes
        )
    return BlockTraces(_checks.check_finite_result(values, "fisher_block_traces"), tuple(net.names))


def fisher_max_eigenvalue(
    model: nn.Module,
    x: torch.Tensor,
    *,
    output: str = "logits",
    params: Iterable[str] | None = None,
    batch_size: int | None = None,
    create_graph: bool = False,
    tau: float | None = None,
) -> torch.Tensor:
    r"""Largest eigenvalue ``λ_max(F(x))`` of each sample's Fisher matrix.

    The non-zero eigenvalues of ``F = Jᵀ S J`` are those of the small matrix ``Wᵀ (J Jᵀ) W`` with
    ``W Wᵀ = S``; the cost is that of :func:`fisher_trace` plus one symmetric eigensolve per sample.
    ``tr F ≥ λ_max(F) ≥ uᵀ F u`` for every unit vector ``u``.

    Parameters
    ----------
    model, x, output, params, batch_size, create_graph, tau
        As in :func:`fisher_trace` (the input gradient of ``λ_max`` is defined where it is a simple
        eigenvalue).

    Returns
    -------
    Tensor of shape (N,)
        On ``x``'s device; detached unless ``create_graph``.

    Raises
    ------
    TypeError, ValueError
        As :func:`fisher_trace`.
    """
    net, _n_classes, _eps, bs = _setup(
        model, x, output=output, params=params, batch_size=batch_size, create_graph=create_graph
    )
    classes = selection(tau)
    x = _input(x, create_graph)
    with _grad_mode(create_graph):
        values = _trace.max_eigenvalue(
            net, make_plan(net, x), x, batch_size=bs, create_graph=create_graph, classes=classes
        )
    return _checks.check_finite_result(values, "fisher_max_eigenvalue")


def fisher_quadratic_form(
    model: nn.Module,
    x: torch.Tensor,
    *,
    direction: Direction = "predicted",
    y: torch.Tensor | None = None,
    blockwise: bool = False,
    normalize: bool = True,
    classes: str = "all",
    output: str = "logits",
    params: Iterable[str] | None = None,
    method: str = "exact",
    epsilon: float = 1e-3,
    batch_size: int | None = None,
    create_graph: bool = False,
    tau: float | None = None,
) -> torch.Tensor:
    r"""Quadratic form ``vᵀ F(x) v`` of each sample's Fisher matrix along a direction ``v``.

    With ``direction="predicted"`` (default) ``v = ∇θ log p_ŷ`` for the predicted class ``ŷ``;
    ``"label"`` uses the given ``y``; ``"top_eigenvector"`` uses the top eigenvector of ``F(x)`` (then
    the normalised form equals :func:`fisher_max_eigenvalue`); a sequence of tensors (one per
    selected parameter, same shapes) is one fixed direction for every sample. With ``normalize=True``
    (default) ``v`` is scaled to unit length over all selected parameters together, so the result is
    the Rayleigh quotient ``vᵀFv / vᵀv``; ``normalize=False`` gives ``‖v‖²`` times that (the authors'
    package passes the raw gradient). A zero gradient gives 0.

    ``blockwise=False`` (default) is the full form ``vᵀ F v``; ``blockwise=True`` is the layer-wise sum
    ``Σ_k v_kᵀ F_kk v_k`` over parameter tensors ``k`` that the original code computes (``v`` still
    normalised over all tensors together). They agree when one tensor is selected.

    Parameters
    ----------
    model, x, output, params, batch_size
        As in :func:`fisher_trace`.
    direction : {"predicted", "label", "top_eigenvector"} or sequence of Tensor
        The direction ``v``.
    y : Tensor of shape (N,), optional
        Integer labels in ``[0, C)``; required by (and only allowed with) ``direction="label"``.
    blockwise : bool
        Layer-wise (block-diagonal) sum instead of the full form.
    normalize : bool
        Scale ``v`` to unit length.
    classes : {"all", "predicted_vs_rest"}
        ``"predicted_vs_rest"`` first reduces the output to two classes, ``(log p_ŷ, log(1 − p_ŷ))``,
        with ``ŷ`` the predicted class (or ``y`` for ``direction="label"``), as the authors' package
        does for the sensitivity; the Fisher matrix is then that of the two-class distribution.
    method : {"exact", "finite_difference"}
        ``"finite_difference"`` reproduces the original algorithm: central differences of the outputs
        at ``θ ± ε v_k`` (per tensor when ``blockwise``, all tensors together otherwise). It is
        inexact on ReLU / max-pool networks (``ε`` crosses kinks). Not available with
        ``"top_eigenvector"``.
    epsilon : float
        Step of the finite differences.
    create_graph : bool
        As in :func:`fisher_trace`: the value as a function of ``x``, with ``v`` (which depends on
        ``x``) differentiated too; along ``"top_eigenvector"`` defined where the top eigenvalue is
        simple.
    tau : float in (0, 1), optional
        As in :func:`fisher_trace` (with ``classes="all"``): ``vᵀ F_τ v ≤ vᵀ F v``.

    Returns
    -------
    Tensor of shape (N,)
        On ``x``'s device; detached unless ``create_graph``.

    Raises
    ------
    TypeError, ValueError
        As :func:`fisher_trace`.
    """
    net, n_classes, eps, bs = _setup(
        model, x, output=output, params=params, method=method, epsilon=epsilon, batch_size=batch_size,
        create_graph=create_graph,
    )
    direction, yt = _check_direction_args(
        direction, y, net, x, n_classes, allow_top=True, blockwise=blockwise, normalize=normalize, classes=classes
    )
    classes = selection(tau, classes=classes, method=method)
    top = isinstance(direction, str) and direction == "top_eigenvector"
    if method == "finite_difference" and top:
        raise ValueError('method="finite_difference" does not support direction="top_eigenvector".')
    x = _input(x, create_graph)
    with _grad_mode(create_graph):
        if method == "finite_difference":
            values = _quadratic.by_finite_differences(
                net, x, direction=direction, y=yt, blockwise=blockwise, normalize=normalize, classes=classes,
                epsilon=eps, batch_size=bs,
            )
        elif top:
            values = _quadratic.along_top_eigenvector(
                net, make_plan(net, x), x, blockwise=blockwise, classes=classes, batch_size=bs,
                create_graph=create_graph,
            )
        else:
            values = _quadratic.quadratic_form(
                net, make_plan(net, x), x, direction=direction, y=yt, blockwise=blockwise, normalize=normalize,
                classes=classes, batch_size=bs, create_graph=create_graph,
            )
    return _checks.check_finite_result(values, "fisher_quadratic_form")


def _check_direction_args(
    direction: object,
    y: object,
    net: FunctionalNet,
    x: torch.Tensor,
    n_classes: int,
    *,
    allow_top: bool,
    blockwise: object,
    normalize: object,
    classes: object,
) -> tuple[Direction, torch.Tensor | None]:
    _checks.check_bool("blockwise", blockwise)
    _checks.check_bool("normalize", normalize)
    _checks.check_choice("classes", classes, _checks.CLASSES)
    direction = _checks.check_direction(direction, net.model, net.names, x, allow_top=allow_top)
    if isinstance(direction, str) and direction == "label":
        if y is None:
            raise ValueError('direction="label" needs y (integer labels of shape (N,)); got y=None.')
        yt = _checks.check_y(y, x.shape[0], n_classes, x.device)
        if net.output != "logits":  # a zero probability is an exact -inf logit only through log p
            _checks.check_label_probabilities(net, x.detach(), yt)
        return direction, yt
    if y is not None:
        raise ValueError(
            f"y is only used with direction='label'; got y together with direction={direction!r}"
            if isinstance(direction, str)
            else "y is only used with direction='label'; got y together with a tensor direction."
        )
    return direction, None


def fisher_sensitivity(
    model: nn.Module,
    x: torch.Tensor,
    *,
    direction: Direction = "predicted",
    y: torch.Tensor | None = None,
    blockwise: bool = True,
    normalize: bool = True,
    classes: str = "all",
    output: str = "logits",
    params: Iterable[str] | None = None,
    method: str = "exact",
    epsilon: float = 1e-3,
    batch_size: int | None = None,
) -> torch.Tensor:
    r"""Fisher information sensitivity (FIS) of every input entry.

    For input entry ``i`` and a parameter direction ``v`` (chosen as in
    :func:`fisher_quadratic_form`, held fixed, i.e. not differentiated with respect to ``x``):

    .. math::

        \mathrm{FIS}_i = \sum_c \partial_{x_i}\big(v^\top \nabla_θ p_c\big)\,
                                \partial_{x_i}\big(v^\top \nabla_θ \log p_c\big).

    With ``blockwise=True`` (default, what the original code computes) the sum also runs over
    parameter tensors ``k`` with ``v`` restricted to tensor ``k``; ``blockwise=False`` uses the whole
    ``v`` at once. Computed exactly (:mod:`art_fisher.metrics.sensitivity`): for a model whose logits
    are piecewise linear in ``x`` (ReLU-type activations, max / average pooling, Linear / Conv / eval
    BatchNorm, a declared terminal ``log_softmax`` / ``softmax``; judged from its autograd graph) with
    first-order backward passes from each layer down to ``x``; for other models of such layers with a
    second-order backward pass (any activation with a double-backward formula, SiLU and Mish
    included); otherwise with ``torch.func``. ``normalize=False`` uses the raw gradient and gives
    ``‖v‖²`` times the normalised value.

    Parameters
    ----------
    model, x, output, params, batch_size
        As in :func:`fisher_trace`.
    direction : {"predicted", "label"} or sequence of Tensor
        The direction ``v``.
    y, blockwise, normalize, classes
        As in :func:`fisher_quadratic_form`; ``classes="predicted_vs_rest"`` (the authors' package's
        default) sums over the two classes ``(ŷ, rest)`` instead of all ``C``.
    method : {"exact", "finite_difference"}
        ``"finite_difference"`` reproduces the original algorithm: input-gradients of ``z_c`` and
        ``p_c`` at ``θ ± ε v_k``, differenced centrally. Far off on ReLU / max-pool networks.
    epsilon : float
        Step of the finite differences.

    Returns
    -------
    Tensor of x's shape
        Detached, on ``x``'s device.

    Raises
    ------
    TypeError, ValueError
        As :func:`fisher_trace`.
    NotImplementedError
        For ``method="exact"`` when the ``torch.func`` path is needed on a model with LayerNorm /
        InstanceNorm modules: torch.func's mixed second derivatives through them are wrong in torch
        2.13 (verified against plain autograd).
    """
    net, n_classes, eps, bs = _setup(
        model, x, output=output, params=params, method=method, epsilon=epsilon, batch_size=batch_size
    )
    direction, yt = _check_direction_args(
        direction, y, net, x, n_classes, allow_top=False, blockwise=blockwise, normalize=normalize, classes=classes
    )
    x = x.detach()
    plan = make_plan(net, x) if method == "exact" else _no_plan(n_classes)
    if method == "exact" and plan.rest:
        _checks.check_second_order(model)
    values = _sensitivity.sensitivity(
        net, plan, x, direction=direction, y=yt, blockwise=blockwise, normalize=normalize, classes=classes,
        method=method, epsilon=eps, batch_size=bs,
    )
    return _checks.check_finite_result(values, "fisher_sensitivity")


def _no_plan(n_classes: int) -> Plan:
    return Plan({}, {}, [], 0, n_classes, (torch.zeros(()), torch.zeros(())))
