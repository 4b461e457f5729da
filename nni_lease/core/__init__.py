"""The LeaSE step and its parts, in plain PyTorch (no NNI needed).

- :mod:`~nni_lease.core.explain`: :func:`pgd_explain`, explanations by adversarial perturbation;
- :mod:`~nni_lease.core.listener`: the default listener network;
- :mod:`~nni_lease.core.settings`: :class:`LeaseSettings`, every LeaSE option;
- :mod:`~nni_lease.core.step`: :class:`LeaseStep`, one LeaSE step shared by both search modes.
"""
