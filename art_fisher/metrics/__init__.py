r"""Exact, batched Fisher-information metrics of a classifier's prediction (the public functions).

For one input ``x`` with logits ``z`` (C,), class probabilities ``p = softmax(z)`` and the Jacobian
``J = ∂z/∂θ`` (C × P) over the selected parameters ``θ``, the Fisher information of the predictive
distribution is

.. math::

    F(x) = \sum_c p_c \nabla_θ \log p_c \nabla_θ \log p_c^\top = J^\top S J,
    \qquad S = \operatorname{diag}(p) - p p^\top .

``F`` is never formed. Each metric lives in its own module: :mod:`art_fisher.metrics` (trace,
per-tensor traces, λ_max), :mod:`art_fisher.metrics`,
:mod:`art_fisher.metrics`; :mod:`art_fisher.metrics` holds ``S`` and its factors,
:mod:`~art_fisher.metrics._engine` the per-sample Gram matrices ``K_k = J_k J_kᵀ`` of each parameter
tensor (forward hooks and one module per layer type, ``torch.func`` for everything else), and
:mod:`art_fisher.metrics` the original algorithm. :func:`fisher_input_spectrum` takes the Fisher
information with respect to the input instead, :math:`G(x) = J_x^\top S J_x` with
:math:`J_x = ∂z/∂x`, and gives its top eigenpairs.

The model may return logits, log-probabilities or probabilities (``output=``); a terminal
``log_softmax`` / ``softmax`` is read through to its logits. The model is never modified:
parameters, ``.grad``, ``requires_grad`` flags and train/eval mode come back as they were. Models
with BatchNorm or Dropout must be in eval mode (a ValueError names the module otherwise): in
training mode one sample's output depends on the batch or on chance. Every sample's output and
result is checked: a non-finite one is a ValueError naming the samples.
"""

from art_fisher.metrics._input_spectrum import InputSpectrum, fisher_input_spectrum
from art_fisher.metrics._quadratic_form import fisher_quadratic_form
from art_fisher.metrics._sensitivity import fisher_sensitivity
from art_fisher.metrics._top_mass import TraceEstimate, fisher_trace_estimate
from art_fisher.metrics._trace import BlockTraces, fisher_block_traces, fisher_max_eigenvalue, fisher_trace

__all__ = [
    "BlockTraces",
    "InputSpectrum",
    "TraceEstimate",
    "fisher_block_traces",
    "fisher_input_spectrum",
    "fisher_max_eigenvalue",
    "fisher_quadratic_form",
    "fisher_sensitivity",
    "fisher_trace",
    "fisher_trace_estimate",
]
