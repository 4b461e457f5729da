"""The original Fisher algorithm, as a plain reference.

Class ``FISHER_OPERATION`` of the code of the Fisher paper (Martin & Elster, "Inspecting adversarial examples
using the Fisher information", arXiv 1909.05527), as a walkthrough of that code presents it.

One sample at a time, per-tensor central differences for the quadratic form and the sensitivity,
per-class backward loops for the trace — exactly the original's arithmetic, with two fixes:
it works on its own copy of the model (the original edits the caller's parameters in place) and
clones gradients instead of re-reading ``parameter.grad`` after ``zero_grad()`` (which aliases or
not depending on the torch version). The network's output is used as the original uses it: as
"log-softmax" output whose softmax gives the probabilities (for logits this gives the same sums, see
:mod:`art_fisher.metrics`); ``output="probs"`` models are differenced through ``log p``.

Shared by ``tests/art_fisher/test_metrics*.py`` (oracle for ``method="finite_difference"``) and
``tests/benchmarks/bench_metrics.py`` (the baseline timings).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class OriginalFisher:
    """``FISHER_OPERATION`` on a private copy of ``model``, restricted to the parameters ``names``.

    Parameters
    ----------
    model : nn.Module
        Copied once; the copy's parameters are edited in place and restored, as in the original.
    names : list of str, optional
        Parameters to use (default: all, in ``named_parameters()`` order).
    output : {"logits", "log_probs", "probs"}
        What the model returns.
    """

    def __init__(self, model: nn.Module, names: list[str] | None = None, output: str = "logits") -> None:
        self.network = copy.deepcopy(model)
        for p in self.network.parameters():
            p.requires_grad_(True)
            p.grad = None
        named = dict(self.network.named_parameters())
        self.names = list(named) if names is None else list(names)
        self.parameters = [named[n] for n in self.names]
        self.output = output

    def _log_out(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return torch.log(out) if self.output == "probs" else out

    def predicted_direction(self, x: torch.Tensor, *, normalize: bool = True) -> list[torch.Tensor]:
        """``∇θ log p_ŷ`` at one sample ``x`` (1, ...), optionally normalised over all tensors."""
        self.network.zero_grad(set_to_none=True)
        logp = F.log_softmax(self._log_out(x), dim=1)
        logp[0, int(logp.argmax())].backward()
        vec = [p.grad.detach().clone() for p in self.parameters]
        self.network.zero_grad(set_to_none=True)
        if normalize:
            norm = torch.sqrt(sum((v**2).sum() for v in vec))
            vec = [v / norm for v in vec]
        return vec

    def quadratic_form(self, x: torch.Tensor, vector: list[torch.Tensor], epsilon: float = 1e-3) -> float:
        """The original ``fisher_quadratic_form`` (per-tensor central differences)."""
        fisher_sum = 0.0
        with torch.no_grad():
            for i, parameter in enumerate(self.parameters):
                store_data = copy.deepcopy(parameter.data)
                parameter.data += epsilon * vector[i]
                log_softmax_output1 = self._log_out(x)
                softmax_output1 = F.softmax(log_softmax_output1, dim=1)
                parameter.data -= 2 * epsilon * vector[i]
                log_softmax_output2 = self._log_out(x)
                softmax_output2 = F.softmax(log_softmax_output2, dim=1)
                parameter.data = store_data
                fisher_sum += (
                    ((log_softmax_output1 - log_softmax_output2) / (2 * epsilon))
                    * ((softmax_output1 - softmax_output2) / (2 * epsilon))
                ).sum()
        return float(fisher_sum)

    def trace(self, x: torch.Tensor) -> float:
        """The original ``fisher_trace`` (per-class backward passes, gradients cloned)."""
        fisher_trace = 0.0
        output_dim = self._log_out(x).shape[1]
        for parameter in self.parameters:
            for j in range(output_dim):
                self.network.zero_grad(set_to_none=True)
                self._log_out(x)[0, j].backward()
                log_softmax_grad = parameter.grad.detach().clone()
                self.network.zero_grad(set_to_none=True)
                F.softmax(self._log_out(x), dim=1)[0, j].backward()
                softmax_grad = parameter.grad.detach().clone()
                fisher_trace += float((log_softmax_grad * softmax_grad).sum())
        self.network.zero_grad(set_to_none=True)
        return fisher_trace

    def sensitivity(self, x: torch.Tensor, vector: list[torch.Tensor], epsilon: float = 1e-3) -> torch.Tensor:
        """The original ``fisher_sensitivity`` (per-tensor, per-class input-gradient differences)."""
        output_dim = self._log_out(x).shape[1]
        xx = x.detach().clone().requires_grad_(True)
        fisher_sum = torch.zeros_like(xx)

        def input_grad(fn) -> torch.Tensor:  # .backward() as in the original (parameter grads too)
            self.network.zero_grad(set_to_none=True)
            xx.grad = None
            fn().backward()
            return xx.grad.detach().clone()

        for i, parameter in enumerate(self.parameters):
            for j in range(output_dim):
                store_data = copy.deepcopy(parameter.data)
                with torch.no_grad():
                    parameter.data += epsilon * vector[i]
                plus_log = input_grad(lambda j=j: self._log_out(xx)[0, j])
                plus_soft = input_grad(lambda j=j: F.softmax(self._log_out(xx), dim=1)[0, j])
                with torch.no_grad():
                    parameter.data -= 2 * epsilon * vector[i]
                minus_log = input_grad(lambda j=j: self._log_out(xx)[0, j])
                minus_soft = input_grad(lambda j=j: F.softmax(self._log_out(xx), dim=1)[0, j])
                parameter.data = store_data
                fisher_sum += 1 / (2 * epsilon) ** 2 * ((plus_log - minus_log) * (plus_soft - minus_soft))
        self.network.zero_grad(set_to_none=True)
        return fisher_sum.detach()
