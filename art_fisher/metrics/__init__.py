r"""Exact, batched Fisher-information metrics of a classifier's prediction.

For one input ``x`` with logits ``z`` (C,), class probabilities ``p = softmax(z)`` and the Jacobian
``J = ∂z/∂θ`` (C × P) over the selected parameters ``θ``, the Fisher information of the predictive
distribution is

.. math::

    F(x) = \sum_c p_c \nabla_θ \log p_c \nabla_θ \log p_c^\top = J^\top S J,
    \qquad S = \operatorname{diag}(p) - p p^\top .

The functions return, per sample, its trace (:func:`fisher_trace`, :func:`fisher_block_traces`,
:func:`fisher_trace_estimate`), its largest eigenvalue (:func:`fisher_max_eigenvalue`), a quadratic form
(:func:`fisher_quadratic_form`), the Fisher information sensitivity (:func:`fisher_sensitivity`) and the
top eigenpairs of the Fisher information with respect to the input, ``G(x) = J_xᵀ S J_x``
(:func:`fisher_input_spectrum`). ``F`` is never formed. The model may return logits, log-probabilities
or probabilities (``output=``) and is never modified; BatchNorm and Dropout must be in eval mode. How
the metrics are computed: :doc:`/guides/fisher_metrics`.
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
