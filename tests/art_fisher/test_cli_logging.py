"""``art-fisher evaluate`` logs one line per stage by default, every step with ``--verbose``."""

import os
import subprocess
import sys

import pytest

_STAGES = ["model", "attacks", "detectors", "security curve", "report"]


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_evaluate_logs_one_line_per_stage(tmp_path, verbose):
    argv = [sys.executable, "-m", "art_fisher", "evaluate", "--attacks", "fgsm,pgd", "--detectors",
            "fisher_trace,max_softmax_clean", "--n-samples", "16", "--epochs", "1",
            "--output", str(tmp_path)]  # fmt: skip
    proc = subprocess.run([*argv, *(["--verbose"] if verbose else [])], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = [line.split(": ", 1)[1] for line in proc.stderr.splitlines() if line.startswith("INFO ")]
    stages = [line.split(":")[0] for line in info if line.split(":")[0] in _STAGES]
    assert stages == _STAGES
    model = next(line for line in info if line.startswith("model: "))
    attacks = next(line for line in info if line.startswith("attacks: "))
    assert model.startswith("model: small_cnn trained, clean test accuracy ") and model.endswith(" s)")
    assert attacks.startswith("attacks: success rate FGSM ") and ", PGD " in attacks
    steps = [line for line in info if line.startswith(("step ", "training epoch"))]
    if verbose:
        assert "step 1/5: attack FGSM" in steps and "training epoch 1/1" in " ".join(steps)
    else:
        assert info == [line for line in info if line.split(":")[0] in _STAGES] and not steps
