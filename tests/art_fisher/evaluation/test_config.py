"""The evaluation's one configuration: checked when built, frozen, taken by every entry point."""

from __future__ import annotations

import dataclasses

import pytest

from art_fisher.evaluation import DEFAULT_ATTACKS, EvaluationConfig
from art_fisher.evaluation._config import config_of


def test_defaults_are_normalised_and_the_config_is_frozen():
    config = EvaluationConfig()
    assert config.attacks == tuple(DEFAULT_ATTACKS) and config.detectors is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]
    assert config.replace(seed=1).seed == 1 and config.seed == 0


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"dataset": "imagenet"}, ValueError, "dataset must be one of"),
        ({"attacks": "fgsm"}, TypeError, "attacks must be a sequence of names"),
        ({"detectors": ["nope"]}, ValueError, "detectors must be names from"),
        ({"n_samples": 2}, ValueError, "n_samples must be an int in \\[4, 1000000\\]"),
        ({"target_fpr": 1.0}, ValueError, "target_fpr must be a finite number in"),
        ({"dataset": "mnist"}, ValueError, "data_dir is required"),
        ({"device": "tpu"}, ValueError, "device must be"),
    ],
)
def test_bad_settings_are_refused_when_the_config_is_built(settings, error, match):
    with pytest.raises(error, match=match):
        EvaluationConfig(**settings)


def test_keywords_apply_on_top_of_a_config_and_unknown_ones_are_refused():
    base = EvaluationConfig(n_samples=40)
    assert config_of(base, {"seed": 3}) == EvaluationConfig(n_samples=40, seed=3)
    assert config_of(None, {"n_samples": 40}) == base
    with pytest.raises(TypeError, match="unexpected keyword"):
        config_of(base, {"n_sample": 40})
    with pytest.raises(TypeError, match="config must be an EvaluationConfig"):
        config_of({"n_samples": 40}, {})  # type: ignore[arg-type]
