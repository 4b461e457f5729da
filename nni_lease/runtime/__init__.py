"""Running NNI experiments: the experiment launcher, the guarded NNI manager and the HPO experiment.

- :mod:`~nni_lease.runtime.experiment`: :func:`run_multitrial` and the training-service configuration;
- :mod:`~nni_lease.runtime.manager`: the manager bound to loopback, with its preload and watchdog;
- :mod:`~nni_lease.runtime.hpo`: hyper-parameter search over one-shot LeaSE runs.
"""

from nni_lease import _require_nni

_require_nni()  # one line naming the lease extra, rather than "No module named 'nni'"
