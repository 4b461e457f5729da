"""The detector registry of the evaluation: every name ``--detectors`` accepts and the default set.

Add an entry to :data:`DETECTORS` (a :class:`~art_fisher.evaluation.detectors.DetectorSpec`) to evaluate
another detector; the protocol fits supervised entries on every attack and the others once on clean
inputs.
"""

from __future__ import annotations

from art_fisher.evaluation.detectors._base import DetectorSpec
from art_fisher.evaluation.detectors._baselines import baseline_specs
from art_fisher.evaluation.detectors._feature_squeezing import feature_squeezing_specs
from art_fisher.evaluation.detectors._fisher import fisher_specs
from art_fisher.evaluation.detectors._input_fisher import input_fisher_specs
from art_fisher.evaluation.detectors._kd_bu import kd_bu_specs
from art_fisher.evaluation.detectors._layer_baselines import layer_baseline_specs
from art_fisher.evaluation.detectors._stacked import stacked_specs

DETECTORS: dict[str, DetectorSpec] = {
    **fisher_specs(),
    **input_fisher_specs(),
    **stacked_specs(),
    **baseline_specs(),
    **layer_baseline_specs(),
    **kd_bu_specs(),
    **feature_squeezing_specs(),
}
#: Every registered detector, the supervised ones first (Fisher, input Fisher, the free baseline, ART's,
#: Mahalanobis, LID, KD+BU), then those fitted without adversarial examples (clean-calibrated Fisher and
#: input Fisher, softmax and Mahalanobis, ART's subset scanning, the energy score, feature squeezing);
#: the stacked detector's ablation variants are registered but not in the default set.
DEFAULT_DETECTORS: tuple[str, ...] = (
    *(name for name, spec in DETECTORS.items() if spec.supervised and spec.in_default),
    *(name for name, spec in DETECTORS.items() if not spec.supervised and spec.in_default),
)
