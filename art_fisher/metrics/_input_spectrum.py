r"""The Fisher information of the prediction with respect to the input: its exact eigen-decomposition.

For one input ``x`` (D entries once flattened) with logits ``z`` (C,), ``p = softmax(z)`` and the
input Jacobian ``Jₓ = ∂z/∂x`` (C × D), the Fisher information of the predictive distribution with
respect to ``x`` (Zhao et al., AAAI 2019, arXiv:1810.03806) is

.. math::

    G(x) = J_x^\top S J_x, \qquad S = \operatorname{diag}(p) - p p^\top .

``G`` is D × D but has rank at most ``C − 1`` (``S 1 = 0``). With a factor ``W`` of ``S``
(``W Wᵀ = S``, ``art_fisher.metrics._basis``) and ``R = Wᵀ Jₓ`` (C' × D), ``G = Rᵀ R``: its non-zero
eigenvalues are those of the C' × C' matrix ``M = R Rᵀ = Wᵀ Jₓ Jₓᵀ W``, and an eigenvector ``u`` of ``M``
with eigenvalue ``λ > 0`` maps to the unit eigenvector ``v = Rᵀ u / √λ`` of ``G``. The rows of ``R`` are
the input gradients of ``⟨w_j, z⟩`` for the columns ``w_j`` of ``W``: one forward pass and ``C'``
backward passes to the input per chunk of samples (``C' = C − 1``; ``C`` with ``create_graph``, where
the factor must be smooth in ``p``). ``G`` itself is never formed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from art_fisher import _checks
from art_fisher.metrics._basis import factor, smooth_factor
from art_fisher.metrics._engine import _chunking as chunking
from art_fisher.metrics._engine._network import FunctionalNet

#: An eigenvalue below ``ZERO_TOLERANCE · C' · λ₁`` (in units of the dtype's machine epsilon) is rounding
#: noise of a zero eigenvalue: it is reported as 0 and its eigenvector, which ``G`` does not determine,
#: as the zero vector.
ZERO_TOLERANCE = 16.0


class InputSpectrum(NamedTuple):
    """The ``k`` largest eigenpairs of each sample's input Fisher matrix (unpacks as ``values, vectors``).

    Attributes
    ----------
    values : Tensor of shape (N, k)
        Eigenvalues of ``G(x)`` in descending order, ``≥ 0``.
    vectors : Tensor of shape (N, k, *x.shape[1:]) or None
        Unit eigenvectors shaped like one input (``vectors[n, i]`` belongs to ``values[n, i]``); the zero
        vector where the eigenvalue is 0. None when ``vectors=False`` was asked.
    """

    values: torch.Tensor
    vectors: torch.Tensor | None


def _setup(
    model: nn.Module, x: torch.Tensor, *, output: str, chunk_size: int | None, create_graph: bool
) -> tuple[FunctionalNet, int, int | None]:
    """Check the arguments (as every metric does; a model without parameters is allowed here)."""
    _checks.check_model(model)
    _checks.check_x(x)
    _checks.check_choice("output", output, _checks.OUTPUTS)
    size = _checks.check_chunk_size(chunk_size)
    _checks.check_bool("create_graph", create_graph)
    _checks.check_model_matches_x(model, [n for n, p in model.named_parameters() if p.is_floating_point()], x)
    n_classes = _checks.probe_output(model, x, output)
    return FunctionalNet(model, [], output), n_classes, size


def _check_k(k: object, n_classes: int, n_inputs: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be a positive int; got {type(k).__name__}.")
    rank = min(n_classes - 1, n_inputs)
    if not 1 <= k <= rank:
        raise ValueError(
            f"k must be in [1, {rank}]: G(x) = Jxᵀ S Jx has rank at most min(C - 1, D) = min({n_classes - 1}, "
            f"{n_inputs}) = {rank}, so it has no further non-zero eigenvalues; got k={k}."
        )
    return k


def _gradient_rows(net: FunctionalNet, xc: torch.Tensor, offset: int, x: torch.Tensor, create_graph: bool):
    """``R = Wᵀ Jₓ`` (n, C', D) of the chunk ``xc``: one forward, ``C'`` backward passes to the input."""
    z = net.logits(net.selected(), xc)
    _checks.check_finite_output(z, offset, net, x)
    p = torch.softmax(z, -1)
    w = smooth_factor(p) if create_graph else factor(p.detach())
    rows = [
        torch.autograd.grad(z, xc, grad_outputs=w[..., j], retain_graph=True, create_graph=create_graph)[0]
        for j in range(w.shape[-1])
    ]
    return torch.stack(rows, 1).flatten(2)


def _eigenpairs(r: torch.Tensor, k: int, vectors: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Top-``k`` eigenvalues (n, k) and unit eigenvectors (n, k, D) of ``Rᵀ R`` from ``M = R Rᵀ``."""
    m = r @ r.transpose(1, 2)
    m = (m + m.transpose(1, 2)) / 2
    tol = ZERO_TOLERANCE * m.shape[-1] * torch.finfo(m.dtype).eps
    if not vectors:
        evals = torch.linalg.eigvalsh(m).flip(-1)[:, :k]
        return torch.where(evals > tol * evals[:, :1], evals, torch.zeros_like(evals)), None
    evals, evecs = torch.linalg.eigh(m)
    evals, evecs = evals.flip(-1)[:, :k], evecs.flip(-1)[..., :k]
    positive = evals > tol * evals[:, :1]
    evals = torch.where(positive, evals, torch.zeros_like(evals))
    scale = torch.where(positive, evals, torch.ones_like(evals)).rsqrt() * positive
    v = (r.transpose(1, 2) @ evecs) * scale.unsqueeze(1)  # (n, D, k)
    return evals, v.transpose(1, 2)


def fisher_input_spectrum(
    model: nn.Module,
    x: torch.Tensor,
    *,
    k: int = 1,
    vectors: bool = True,
    output: str = "logits",
    chunk_size: int | None = None,
    create_graph: bool = False,
) -> InputSpectrum:
    r"""The ``k`` largest eigenvalues and eigenvectors of each sample's input Fisher matrix ``G(x) = Jₓᵀ S Jₓ``.

    Exact: from the C' × C' matrix ``Wᵀ Jₓ Jₓᵀ W`` (``W Wᵀ = S``), mapped back to input space through
    ``Jₓᵀ W``; the D × D matrix is never formed. ``G`` has rank at most
    ``min(C − 1, D)``; eigenvalues that are zero to rounding are reported as 0 with zero eigenvectors. A
    repeated eigenvalue gets an orthonormal basis of its eigenspace (its eigenvectors are not unique),
    and each eigenvector's sign is arbitrary.

    Parameters
    ----------
    model : nn.Module
        Maps ``x`` (N, ...) to (N, C); BatchNorm / Dropout modules in eval mode. Left as it was.
    x : Tensor of shape (N, ...)
        Finite float inputs with the model's dtype and device.
    k : int
        Eigenpairs per sample, ``1 ≤ k ≤ min(C − 1, D)``.
    vectors : bool
        Also return the eigenvectors (else ``vectors`` is None and only eigenvalues are solved for).
    output : {"logits", "log_probs", "probs"}
        What the model returns.
    chunk_size : int, optional
        Samples processed at once (bounds memory); default: chosen internally.
    create_graph : bool
        Keep the autograd graph to ``x`` (make ``x`` require grad first) so that the eigenvalues can be
        differentiated in ``x`` (mixed second derivatives; ``C`` backward passes with a factor of ``S``
        smooth in ``p``). Eigenvectors and the eigenvalues' derivatives are defined where the eigenvalue
        is simple.

    Returns
    -------
    InputSpectrum
        ``values`` (N, k), descending, and ``vectors`` (N, k, *x.shape[1:]) or None; on ``x``'s device,
        in ``x``'s dtype; detached unless ``create_graph``.

    Raises
    ------
    TypeError, ValueError
        For invalid arguments (before any computation), and for samples whose output or spectrum is not
        finite (naming them).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from art_fisher import fisher_input_spectrum
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    >>> x = torch.randn(3, 6, dtype=torch.float64)
    >>> values, vecs = fisher_input_spectrum(model, x, k=3)
    >>> jac = torch.func.vmap(torch.func.jacrev(lambda xi: model(xi)))(x)  # (N, C, D)
    >>> p = torch.softmax(model(x), -1)
    >>> s = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    >>> dense = torch.linalg.eigvalsh(jac.transpose(1, 2) @ s @ jac).flip(-1)[:, :3]  # D × D, small D only
    >>> bool(torch.allclose(values, dense, rtol=1e-10, atol=1e-14))
    True
    """
    net, n_classes, size = _setup(model, x, output=output, chunk_size=chunk_size, create_graph=create_graph)
    _checks.check_bool("vectors", vectors)
    n_inputs = x[0].numel()
    k = _check_k(k, n_classes, n_inputs)
    n_cols = n_classes if create_graph else n_classes - 1
    size = chunking.by_budget(4 * n_cols * n_inputs * x.element_size(), chunking.HOOK_BUDGET, size)
    values, vecs = [], []
    with torch.enable_grad():
        for sl in chunking.chunks(x.shape[0], size):
            keep = create_graph and x.requires_grad
            xc = x[sl] if keep else x[sl].detach().requires_grad_(True)
            r = _gradient_rows(net, xc, sl.start, x, create_graph)
            if not create_graph:
                r = r.detach()
            lam, v = _eigenpairs(r, k, vectors)
            values.append(lam)
            if v is not None:
                vecs.append(v.reshape(v.shape[0], k, *x.shape[1:]))
    lam = _checks.check_finite_result(torch.cat(values), "fisher_input_spectrum")
    out_vectors = _checks.check_finite_result(torch.cat(vecs), "fisher_input_spectrum") if vectors else None
    return InputSpectrum(lam, out_vectors)
