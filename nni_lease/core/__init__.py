"""The LeaSE step and its parts, in plain PyTorch (no NNI needed).

explanations by adversarial perturbation
(:func:`pgd_explain`), the default listener network, every LeaSE setting (:class:`LeaseConfig`) and one
LeaSE step shared by both search modes (:class:`LeaseStep`).
"""

from nni_lease.core._config import LeaseConfig
from nni_lease.core._explain import Explanation, pgd_explain
from nni_lease.core._listener import default_listener
from nni_lease.core._step import LeaseStep

__all__ = ["Explanation", "LeaseConfig", "LeaseStep", "default_listener", "pgd_explain"]
