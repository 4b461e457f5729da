"""A functional view of a classifier: its logits as a function of (selected parameters, input).

A model declared to return log-probabilities or probabilities whose forward ends in a ``log_softmax`` /
``softmax`` over the classes is used through that call's input, read off each forward pass with a
:class:`~torch.overrides.TorchFunctionMode`; otherwise log-probabilities are used as they are and
probabilities through ``z = log p`` (``−∞`` with a zero derivative where ``p = 0``). Either way the
Fisher matrix is unchanged, as it is invariant to a per-sample shift of ``z``.

The model is never modified: calls go through :func:`torch.func.functional_call` with detached copies
of the parameters.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

_LOG_SOFTMAX = frozenset({F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax, torch.special.log_softmax})
_SOFTMAX = frozenset({F.softmax, torch.softmax, torch.Tensor.softmax, torch.special.softmax})
_HEADS = {"log_probs": _LOG_SOFTMAX, "probs": _SOFTMAX}


class _HeadRecorder(TorchFunctionMode):
    """Remembers the last ``log_softmax`` / ``softmax`` call of a forward pass.

    As (function, input, dim, dtype, result).
    """

    def __init__(self) -> None:
        super().__init__()
        self.last: tuple | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func in _LOG_SOFTMAX or func in _SOFTMAX:
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            dtype = kwargs.get("dtype", args[3] if len(args) > 3 else None)
            self.last = (func, args[0], dim, dtype, result)
        return result

    def logits_under(self, out: torch.Tensor, output: str) -> torch.Tensor | None:
        """The input of the head that produced ``out`` over its last dimension, or None."""
        if self.last is None:
            return None
        func, inp, dim, dtype, result = self.last
        if result is not out or func not in _HEADS[output] or dtype is not None or not isinstance(dim, int):
            return None
        return inp if dim % out.dim() == out.dim() - 1 and inp.shape == out.shape else None


def safe_log(p: torch.Tensor) -> torch.Tensor:
    """``log p`` with ``−∞`` and a zero derivative where ``p == 0``."""
    positive = p > 0
    z = torch.log(torch.where(positive, p, torch.ones_like(p)))
    return torch.where(positive, z, torch.full_like(p, float("-inf")))


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
        #: Whether the last forward pass read the logits under a terminal (log_)softmax.
        self.head_stripped = False

    def groups(self, blockwise: bool) -> list[list[str]]:
        """The parameter groups of the Fisher matrix's blocks: one per selected tensor, or all of them as one."""
        return [[name] for name in self.names] if blockwise else [list(self.names)]

    def selected(self) -> dict[str, torch.Tensor]:
        """Detached current values of the selected parameters."""
        return {n: self.base[n] for n in self.names}

    def logits(self, sel: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits (N, C) at input ``x`` (N, ...) with the selected parameters replaced by ``sel``."""
        return self.outputs(sel, x)[1]

    def outputs(self, sel: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[object, torch.Tensor]:
        """The model's own output at ``x`` and the logits read from it (as :meth:`logits`).

        The output is whatever ``forward`` returned, for the output checks; the logits are only
        meaningful where it is an (N, C) tensor.
        """
        params = {**self.base, **sel}
        if self.output == "logits":
            out = functional_call(self.model, params, (x,))
            return out, out
        with _HeadRecorder() as head:
            out = functional_call(self.model, params, (x,))
        z = head.logits_under(out, self.output)
        self.head_stripped = z is not None
        if z is not None:
            return out, z
        if not isinstance(out, torch.Tensor):
            return out, cast("torch.Tensor", out)  # not logits at all: the output checks refuse it
        return out, (out if self.output == "log_probs" else safe_log(out))

    def logits_one(self, sel: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        """Logits (C,) of one sample ``xi`` (no batch dimension); used under ``torch.func.vmap``."""
        return self.logits(sel, xi.unsqueeze(0))[0]
