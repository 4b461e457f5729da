"""Running NNI experiments.

The multi-trial experiment with its web UI (:func:`run_multitrial`), the NNI
manager bound to loopback with its preload and watchdog, and hyper-parameter search over one-shot runs.
"""

from nni_lease import _require_nni

_require_nni()  # one line naming the lease extra, rather than "No module named 'nni'"

from nni_lease.runtime._experiment import MultiTrialResult, run_experiment, run_multitrial, sigterm_as_interrupt
from nni_lease.runtime._hpo import TrialConfig, build_hpo_experiment

__all__ = [
    "MultiTrialResult",
    "TrialConfig",
    "build_hpo_experiment",
    "run_experiment",
    "run_multitrial",
    "sigterm_as_interrupt",
]
