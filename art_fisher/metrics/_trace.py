r"""The trace of the Fisher matrix, per parameter tensor and in total, and its largest eigenvalue.

With the Gram matrices ``K_k = J_k J_kᵀ`` (C × C) of each parameter tensor ``k`` and a factor ``W`` of
``S = diag p − p pᵀ`` (``W Wᵀ = S``, :mod:`art_fisher.metrics._basis`):

- the trace of tensor ``k``'s diagonal block of ``F`` is ``tr(J_kᵀ S J_k) = tr(Wᵀ K_k W)``, which needs
  only the diagonal of ``Wᵀ K_k W``: the squared norms of per-sample gradients, one per column of ``W``;
- ``tr F`` is their sum;
- the non-zero eigenvalues of ``F = Jᵀ W Wᵀ J`` are those of the C' × C' matrix ``Wᵀ K W``
  (``K = Σ_k K_k``), so ``λ_max(F)`` is one small symmetric eigensolve per sample. Its eigenvector ``w``
  gives the top eigenvector ``Jᵀ W w`` of ``F``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, NamedTuple, overload

import torch
from torch import nn

from art_fisher import _checks
from art_fisher.metrics._basis import ClassSelection, make_basis
from art_fisher.metrics._engine import _chunking as chunking
from art_fisher.metrics._engine._grams import tensor_grams
from art_fisher.metrics._engine._network import FunctionalNet
from art_fisher.metrics._engine._recorder import HookCoverage
from art_fisher.metrics._finite_difference import per_class_trace
from art_fisher.metrics._setup import grad_mode, input_for, setup
from art_fisher.metrics._top_mass import selection


def block_traces(
    net: FunctionalNet,
    coverage: HookCoverage,
    x: torch.Tensor,
    *,
    chunk_size: int | None,
    create_graph: bool = False,
    classes: str | ClassSelection = "all",
) -> torch.Tensor:
    """``tr F_kk`` (N, n_tensors) for each selected parameter tensor ``k`` (in ``net.names`` order)."""
    _z, diag, _w = tensor_grams(
        net,
        coverage,
        x,
        basis=make_basis(classes, smooth=create_graph),
        chunk_size=chunk_size,
        diagonal=True,
        create_graph=create_graph,
    )
    return diag.sum(-1)


def basis_grams(
    net: FunctionalNet,
    coverage: HookCoverage,
    x: torch.Tensor,
    *,
    chunk_size: int | None,
    classes: str | ClassSelection = "all",
    create_graph: bool = False,
) -> torch.Tensor:
    """The Gram matrices ``Wᵀ K_k W`` (N, n_tensors, C', C') in the basis of ``classes``.

    ``"predicted_vs_rest"`` reduces at the predicted class.
    """
    basis = make_basis(classes, smooth=create_graph)
    return tensor_grams(net, coverage, x, basis=basis, chunk_size=chunk_size, create_graph=create_graph)[1]


@overload
def top_eigen(k: torch.Tensor, *, vectors: Literal[True] = ...) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def top_eigen(k: torch.Tensor, *, vectors: Literal[False]) -> tuple[torch.Tensor, None]: ...
def top_eigen(k: torch.Tensor, *, vectors: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``λ_max(F)`` (N,) and, if ``vectors``, its unit eigenvector ``w`` (N, C') of ``K̃ = Σ_k K̃_k``.

    The eigenvector of ``F`` is ``Jᵀ W w``, i.e. ``v = Jᵀ r`` with ``r = W w``. Without vectors only
    eigenvalues are computed, whose derivative is defined even where other eigenvalues coincide.
    """
    m = k.sum(1)
    m = (m + m.transpose(-1, -2)) / 2
    if not vectors:
        return torch.linalg.eigvalsh(m)[..., -1].clamp_min(0), None
    evals, evecs = torch.linalg.eigh(m)
    return evals[..., -1].clamp_min(0), evecs[..., -1]


def max_eigenvalue(
    net: FunctionalNet,
    coverage: HookCoverage,
    x: torch.Tensor,
    *,
    chunk_size: int | None,
    create_graph: bool = False,
    classes: str | ClassSelection = "all",
) -> torch.Tensor:
    """``λ_max(F(x))`` (N,)."""
    k = basis_grams(net, coverage, x, chunk_size=chunk_size, classes=classes, create_graph=create_graph)
    return top_eigen(k, vectors=False)[0]


def _exact_setup(
    model: nn.Module,
    x: torch.Tensor,
    *,
    output: str,
    params: Iterable[str] | None,
    chunk_size: int | None,
    create_graph: bool,
) -> tuple[FunctionalNet, HookCoverage, int | None, torch.Tensor]:
    """:func:`~art_fisher.metrics._setup.setup` of an exact-only metric: net, coverage, chunk size and input."""
    net, _n_classes, _eps, chunk, coverage = setup(
        model,
        x,
        output=output,
        params=params,
        chunk_size=chunk_size,
        create_graph=create_graph,
        first_row_in_chunks=True,
    )
    assert coverage is not None  # method="exact"
    return net, coverage, chunk, input_for(x, create_graph)


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


def fisher_trace(
    model: nn.Module,
    x: torch.Tensor,
    *,
    output: str = "logits",
    params: Iterable[str] | None = None,
    method: str = "exact",
    fd_step: float = 1e-3,
    chunk_size: int | None = None,
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
        it equals the exact trace up to rounding and ignores ``fd_step``); it is slower.
    fd_step : float
        Validated only (the trace has no finite difference).
    chunk_size : int, optional
        Samples processed at once (bounds memory); default: chosen internally.
    create_graph : bool
        Return a tensor whose autograd graph reaches ``x`` (make ``x`` require grad first), so that
        ``torch.autograd.grad(tr.sum(), x)`` is the exact input gradient of the trace (mixed second
        derivatives). Uses C backward passes (a factor of ``S`` smooth in ``p``). ``method="exact"`` only.
    tau : float in (0, 1), optional
        Many-class heads: keep each sample's most probable classes holding ``1 − tau`` of its
        probability and merge the rest into one class (:doc:`/guides/model_families`, "Many classes"):
        about as many backward passes as kept classes instead of ``C − 1``, and a certain lower bound
        of the exact value (``F_τ ≼ F``). None (default): exact.


    Returns
    -------
    Tensor of shape (N,)
        On ``x``'s device, in ``x``'s dtype; detached unless ``create_graph``.

    Raises
    ------
    TypeError, ValueError
        For invalid arguments (before any computation), and for samples whose output or trace is
        not finite (naming them).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from art_fisher.metrics import fisher_trace
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    >>> x = torch.randn(5, 4, dtype=torch.float64)
    >>> params = dict(model.named_parameters())
    >>> def log_probs(theta, xi):  # log p(c | xi) as a function of the parameters
    ...     return torch.log_softmax(torch.func.functional_call(model, theta, (xi,)), -1)
    >>> grads = torch.func.vmap(torch.func.jacrev(log_probs), in_dims=(None, 0))(params, x)
    >>> g = torch.cat([t.flatten(2) for t in grads.values()], 2).detach()  # (N, C, P): ∇θ log p_c
    >>> p = log_probs(params, x).exp().detach()
    >>> fisher = torch.einsum("nc,ncp,ncq->npq", p, g, g)  # dense F = Σ_c p_c ∇log p_c ∇log p_cᵀ
    >>> trace = fisher_trace(model, x)
    >>> torch.allclose(trace, fisher.diagonal(dim1=1, dim2=2).sum(-1), rtol=1e-10)
    True
    >>> bool((fisher_trace(model, x, tau=0.5) <= trace * (1 + 1e-12)).all())  # F_τ ≼ F
    True
    """
    net, _n_classes, _eps, chunk, coverage = setup(
        model,
        x,
        output=output,
        params=params,
        method=method,
        fd_step=fd_step,
        chunk_size=chunk_size,
        create_graph=create_graph,
        first_row_in_chunks=True,
    )
    classes = selection(tau, method=method)
    x = input_for(x, create_graph)
    with grad_mode(create_graph):
        if method == "finite_difference":
            n_params = sum(net.base[n].numel() for n in net.names)  # Jacobians of logits and probabilities
            size = chunk or max(1, chunking.func_chunk(n_params, _n_classes, x.element_size()) // 2)
            values = torch.cat([per_class_trace(net, x[sl]) for sl in chunking.chunks(x.shape[0], size)])
        else:
            assert coverage is not None  # method="exact"
            values = block_traces(net, coverage, x, chunk_size=chunk, create_graph=create_graph, classes=classes).sum(1)
    return _checks.check_finite_result(values, "fisher_trace")


def fisher_block_traces(
    model: nn.Module,
    x: torch.Tensor,
    *,
    output: str = "logits",
    params: Iterable[str] | None = None,
    chunk_size: int | None = None,
    create_graph: bool = False,
    tau: float | None = None,
) -> BlockTraces:
    r"""Trace of each selected parameter tensor's own diagonal block of each sample's Fisher matrix.

    ``tr F_kk(x) = Σ_c p_c ‖∇θ_k log p_c‖²`` for every parameter tensor ``k``; the values sum over
    ``k`` to :func:`fisher_trace`. They cost the same as the trace.

    Parameters
    ----------
    model, x, output, params, chunk_size, create_graph, tau
        As in :func:`fisher_trace`.


    Returns
    -------
    BlockTraces
        ``values`` of shape (N, K) (detached unless ``create_graph``) and the K parameter ``names``.

    Raises
    ------
    TypeError, ValueError
        As :func:`fisher_trace`.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from art_fisher.metrics import fisher_block_traces
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    >>> x = torch.randn(5, 4, dtype=torch.float64)
    >>> params = dict(model.named_parameters())
    >>> def log_probs(theta, xi):  # log p(c | xi) as a function of the parameters
    ...     return torch.log_softmax(torch.func.functional_call(model, theta, (xi,)), -1)
    >>> grads = torch.func.vmap(torch.func.jacrev(log_probs), in_dims=(None, 0))(params, x)
    >>> g = torch.cat([t.flatten(2) for t in grads.values()], 2).detach()  # (N, C, P): ∇θ log p_c
    >>> p = log_probs(params, x).exp().detach()
    >>> fisher = torch.einsum("nc,ncp,ncq->npq", p, g, g)  # dense F = Σ_c p_c ∇log p_c ∇log p_cᵀ
    >>> values, names = fisher_block_traces(model, x)
    >>> names
    ('0.weight', '0.bias', '2.weight', '2.bias')
    >>> sizes = [t.numel() for t in params.values()]
    >>> dense = torch.stack([d.sum(-1) for d in fisher.diagonal(dim1=1, dim2=2).split(sizes, -1)], 1)
    >>> torch.allclose(values, dense, rtol=1e-10)
    True
    """
    net, coverage, chunk, x = _exact_setup(
        model, x, output=output, params=params, chunk_size=chunk_size, create_graph=create_graph
    )
    with grad_mode(create_graph):
        values = block_traces(net, coverage, x, chunk_size=chunk, create_graph=create_graph, classes=selection(tau))
    return BlockTraces(_checks.check_finite_result(values, "fisher_block_traces"), tuple(net.names))


def fisher_max_eigenvalue(
    model: nn.Module,
    x: torch.Tensor,
    *,
    output: str = "logits",
    params: Iterable[str] | None = None,
    chunk_size: int | None = None,
    create_graph: bool = False,
    tau: float | None = None,
) -> torch.Tensor:
    r"""Largest eigenvalue ``λ_max(F(x))`` of each sample's Fisher matrix.

    The non-zero eigenvalues of ``F = Jᵀ S J`` are those of the small matrix ``Wᵀ (J Jᵀ) W`` with
    ``W Wᵀ = S``; the cost is that of :func:`fisher_trace` plus one symmetric eigensolve per sample.
    ``tr F ≥ λ_max(F) ≥ uᵀ F u`` for every unit vector ``u``.

    Parameters
    ----------
    model, x, output, params, chunk_size, create_graph, tau
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

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from art_fisher.metrics import fisher_max_eigenvalue
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    >>> x = torch.randn(5, 4, dtype=torch.float64)
    >>> params = dict(model.named_parameters())
    >>> def log_probs(theta, xi):  # log p(c | xi) as a function of the parameters
    ...     return torch.log_softmax(torch.func.functional_call(model, theta, (xi,)), -1)
    >>> grads = torch.func.vmap(torch.func.jacrev(log_probs), in_dims=(None, 0))(params, x)
    >>> g = torch.cat([t.flatten(2) for t in grads.values()], 2).detach()  # (N, C, P): ∇θ log p_c
    >>> p = log_probs(params, x).exp().detach()
    >>> fisher = torch.einsum("nc,ncp,ncq->npq", p, g, g)  # dense F = Σ_c p_c ∇log p_c ∇log p_cᵀ
    >>> torch.allclose(fisher_max_eigenvalue(model, x), torch.linalg.eigvalsh(fisher)[:, -1], rtol=1e-10)
    True
    """
    net, coverage, chunk, x = _exact_setup(
        model, x, output=output, params=params, chunk_size=chunk_size, create_graph=create_graph
    )
    with grad_mode(create_graph):
        values = max_eigenvalue(net, coverage, x, chunk_size=chunk, create_graph=create_graph, classes=selection(tau))
    return _checks.check_finite_result(values, "fisher_max_eigenvalue")
