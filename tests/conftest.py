"""Shared test configuration."""

import os
from importlib.util import find_spec

import pytest

# Keep BLAS/torch from oversubscribing the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")

#: NNI 3.0 and Lightning come with the lease extra, which installs nothing on Python 3.12 and newer: there the
#: nni_lease tests are not collected and the tests marked needs_nni are skipped (art_fisher's tests all run).
HAS_NNI = all(find_spec(name) is not None for name in ("nni", "pytorch_lightning"))
collect_ignore_glob = [] if HAS_NNI else ["nni_lease/*"]


def pytest_collection_modifyitems(config, items):
    if HAS_NNI:
        return
    skip = pytest.mark.skip(reason="needs the lease extra (NNI 3.0, Python 3.11)")
    for item in items:
        if "needs_nni" in item.keywords:
            item.add_marker(skip)
