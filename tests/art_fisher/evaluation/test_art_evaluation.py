"""The evaluation as an ART ``Evaluation`` (:class:`~art_fisher.evaluation.DetectionEvaluation`)."""

from __future__ import annotations

import pytest
import torch
from art.evaluations.evaluation import Evaluation


@pytest.mark.slow
def test_the_evaluation_as_an_art_evaluation_on_a_given_classifier(tmp_path):
    from art.estimators.classification import PyTorchClassifier

    from art_fisher.data._loaders import load_digits
    from art_fisher.evaluation._art_evaluation import DetectionEvaluation
    from art_fisher.models._architectures import SmallCNN, train_model

    train = load_digits(split="train")
    net = train_model(SmallCNN(), train.x, train.y, epochs=3, seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    clf = PyTorchClassifier(net, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, clip_values=(0.0, 1.0))
    evaluation = DetectionEvaluation(attacks=["fgsm"], detectors=["max_softmax", "energy_clean"], n_samples=20)
    assert isinstance(evaluation, Evaluation)
    one = evaluation.evaluate(clf, output_dir=tmp_path / "one", seed=2)
    assert one.settings["model_status"] == "given" and one.settings["seed"] == 2 and one.security_curve
    several = evaluation.evaluate(clf, output_dir=tmp_path / "many", seeds=[0, 1])
    assert len(several.runs) == 2 and all(r.settings["model_status"] == "given" for r in several.runs)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])  # the user's model comes back untouched
    wrong = PyTorchClassifier(net, torch.nn.CrossEntropyLoss(), (1, 28, 28), 10)
    with pytest.raises(ValueError, match="input_shape"):
        evaluation.evaluate(wrong, output_dir=tmp_path / "bad")
    with pytest.raises(TypeError, match="PyTorchClassifier"):
        evaluation.evaluate(object(), output_dir=tmp_path / "bad")
