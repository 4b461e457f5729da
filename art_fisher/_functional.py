"""A functional view of a classifier: its "logits" as a function of (selected parameters, input).

Everything in :mod:`art_fisher.metrics` is expressed through the logits ``z`` of the predictive
distribution ``p = softmax(z)``. The Fisher matrix ``Jᵀ (diag p − p pᵀ) J`` (``J = ∂z/∂θ``) does not
change when ``z`` is shifted by a per-sample constant, so a model returning log-probabilities is used
as it is and a model returning probabilities is used through ``z = log p``.

The model is never modified: calls go through :func:`torch.func.functional_call` with detached copies
of the parameters, so no graph, ``.grad`` or ``requires_grad`` change reaches the user's tensors.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap


class FunctionalNet:
    """Logits of ``model`` as a pure function of the selected parameters and the input.

    Parameters
    ----------
    model : nn.Module
        Maps inputs (N, ...) to (N, C) logits, log-probabilities or probabilities.
    names : list of str
        The selected parameters (the variables of the Fisher matrix).
    output : {"logits", "log_probs", "probs"}
        What the model returns.
    """

    def __init__(self, model: nn.Module, names: list[str], output: str) -> None:
        self.model = model
        self.names = list(names)
        self.output = output
        self.base = {n: p.detach() for n, p in model.named_parameters()}

    def selected(self) -> dict[str, torch.Tensor]:
        """Detached current values of the selected parameters."""
        return {n: self.base[n] for n in self.names}

    def to_logits(self, out: torch.Tensor) -> torch.Tensor:
        """Map the model's output to logits (identity unless ``output="probs"``)."""
        return torch.log(out) if self.output == "probs" else out

    def logits(self, sel: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits (N, C) at input ``x`` (N, ...) with the selected parameters replaced by ``sel``."""
        return self.to_logits(functional_call(self.model, {**self.base, **sel}, (x,)))

    def logits_one(self, sel: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        """Logits (C,) of one sample ``xi`` (no batch dimension); used under ``torch.func.vmap``."""
        return self.logits(sel, xi.unsqueeze(0))[0]


def predicted_vs_rest(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Two-class reduction ``(log p_y, log(1 − p_y))`` of logits ``z`` (..., C) at class ``y`` (...).

    ``log(1 − p_y)`` is computed as the log-sum-exp of the other classes' log-probabilities, which
    stays finite when ``p_y`` rounds to 1.
    """
    # Explicit exp / sum / log: the forward-mode formulas of log_softmax and logsumexp are not
    # differentiable again in reverse mode (they work in place), and the sensitivity needs that.
    mask = torch.arange(z.shape[-1], device=z.device) == y.unsqueeze(-1)  # one_hot fails under vmap
    shift = z.amax(-1, keepdim=True).detach()
    e = torch.exp(z - shift)
    total = torch.log(e.sum(-1))
    own = (z - shift).gather(-1, y.unsqueeze(-1)).squeeze(-1) - total
    rest_shift = z.masked_fill(mask, float("-inf")).amax(-1, keepdim=True).detach()
    rest = torch.log((torch.exp(z - rest_shift) * (~mask)).sum(-1)) + (rest_shift - shift).squeeze(-1) - total
    return torch.stack([own, rest], dim=-1)


def predicted_vs_rest_jacobian(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``A = ∂z₂/∂z`` (n, 2, C) of :func:`predicted_vs_rest` at logits ``z`` (n, C) and classes ``y`` (n,)."""
    return vmap(jacrev(predicted_vs_rest))(z, y)
