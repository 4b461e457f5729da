"""Add a Fisher-information detector to an existing ART workflow (scikit-learn's digits).

The workflow: a PyTorch model wrapped as an ART ``PyTorchClassifier``, attacked with ART's FGSM. The
detector is fitted on half of the clean / adversarial pairs and screens the other half; it is then
saved (learned state only) and loaded back onto the same classifier.

    python examples/detector_in_art_workflow.py [--plot maps.png] [--smoke]

``--smoke`` runs the same steps at a tiny size (a few seconds; the numbers then mean little).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from art.attacks.evasion import FastGradientMethod
from art.estimators.classification import PyTorchClassifier
from sklearn.metrics import roc_auc_score

from art_fisher import FisherInformationDetector
from art_fisher.data import load_digits
from art_fisher.models import SmallCNN, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", type=Path, default=None, help="save sensitivity maps to this image")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a quick check that it runs")
    args = parser.parse_args()
    n_train, n_held_out, epochs = (300, 120, 2) if args.smoke else (1000, 400, 8)
    torch.set_num_threads(2)

    # 1. The existing ART setup: a trained model, wrapped, and an attack.
    data = load_digits()
    perm = np.random.default_rng(0).permutation(len(data.x))
    train, held_out = perm[:n_train], perm[n_train : n_train + n_held_out]
    torch.manual_seed(0)
    model = train_model(SmallCNN(), data.x[train], data.y[train], epochs=epochs)
    classifier = PyTorchClassifier(
        model,
        torch.nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    x, y = data.x[held_out], data.y[held_out]
    x_adv = FastGradientMethod(classifier, eps=0.15).generate(x)
    ok = (classifier.predict(x).argmax(1) == y) & (classifier.predict(x_adv).argmax(1) != y)
    x, x_adv = x[ok], x_adv[ok]  # successful attacks on correctly classified digits
    print(f"{ok.sum()} successful FGSM examples")

    # 2. Detection data: 0 = clean, 1 = adversarial; a digit and its adversarial twin in the same half.
    half = len(x) // 2
    x_fit = np.concatenate([x[:half], x_adv[:half]])
    y_fit = np.r_[np.zeros(half), np.ones(half)]
    x_test = np.concatenate([x[half:], x_adv[half:]])
    y_test = np.r_[np.zeros(len(x) - half), np.ones(len(x) - half)]

    # 3. The detector: ART's EvasionDetector interface (fit(x, y, batch_size, nb_epochs), as ART's own).
    detector = FisherInformationDetector(classifier, metrics=("trace", "quadratic_form"))
    detector.fit(x_fit, y_fit, 128)
    report, is_adversarial = detector.detect(x_test)
    print(f"held-out ROC-AUC: {roc_auc_score(y_test, report['decision_scores']):.3f}")
    for name in report["feature_names"]:
        print(f"  {name:>15}: ROC-AUC {roc_auc_score(y_test, report['scores'][name]):.3f}")
    tpr, fpr = is_adversarial[y_test == 1].mean(), is_adversarial[y_test == 0].mean()
    print(f"flagged: {tpr:.0%} of adversarial, {fpr:.0%} of clean inputs")

    # 4. Screen inputs before classifying them.
    accepted = x_test[~is_adversarial]
    print(f"{len(accepted)} of {len(x_test)} inputs passed to classifier.predict")

    # 4b. No adversarial examples at hand: calibrate on clean digits alone to flag 5 % of clean inputs.
    clean_only = FisherInformationDetector(classifier, metrics=("trace", "quadratic_form"), target_fpr=0.05)
    clean_only.fit(data.x[perm[1400:1700]])  # 300 clean digits, neither trained on nor attacked
    flags = clean_only.detect(x_test)[1]
    print(
        f"clean-only calibration: flagged {flags[y_test == 1].mean():.0%} of adversarial, "
        f"{flags[y_test == 0].mean():.0%} of clean inputs"
    )

    # 5. Save the learned state (no model weights, no pickle) and load it onto the classifier; the file
    #    records a fingerprint of the weights, so loading it onto another model is refused.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fisher_detector.skops"
        detector.save(path)
        loaded = FisherInformationDetector.load(path, classifier)
        assert np.array_equal(loaded.detect(x_test)[1], is_adversarial)
        print(f"saved and reloaded ({path.stat().st_size} bytes): identical decisions")

    # 6. Per-pixel Fisher information sensitivity, for plotting.
    maps = detector.sensitivity_maps(np.stack([x[0], x_adv[0]]))
    print(f"sensitivity map L1 norm, clean vs adversarial: {np.abs(maps[0]).sum():.3g} vs {np.abs(maps[1]).sum():.3g}")
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 4, figsize=(8, 2.3))
        for ax, img, title in zip(
            axes,
            [x[0, 0], maps[0, 0], x_adv[0, 0], maps[1, 0]],
            ["clean", "FIS clean", "FGSM", "FIS FGSM"],
            strict=True,
        ):
            ax.imshow(img, cmap="gray" if "FIS" not in title else "viridis")
            ax.set_title(title)
            ax.axis("off")
        fig.savefig(args.plot, bbox_inches="tight")
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
