"""Running NNI experiments.

The multi-trial experiment with its web UI (:func:`run_multitrial`), the NNI
manager bound to loopback with its preload and watchdog, and hyper-parameter search over one-shot runs.
"""

from nni_lease.runtime._experiment import MultiTrialResult, run_multitrial

__all__ = ["MultiTrialResult", "run_multitrial"]
