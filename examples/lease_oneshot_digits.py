"""LeaSE one-shot search on scikit-learn's 8×8 digits, export, and retraining from scratch.

Run from the repository root (measured run times: the documentation's examples page)::

    python examples/lease_oneshot_digits.py [--smoke]

It is the NNI idiom ``NasExperiment(model_space, evaluator, strategy).run()`` with ``LeaSE`` where one
would write ``DARTS``. (``nni_lease.oneshot._workflow.search_oneshot`` and ``retrain_architecture`` do the
same with files written, as ``nni-lease search`` / ``nni-lease retrain`` do.) NNI writes its experiment
records under ``~/nni-experiments`` (set ``HOME`` or ``experiment.config.experiment_working_directory``
to put them elsewhere). ``--smoke`` runs it at a tiny
size (one epoch of two batches, a few seconds; the numbers then mean little).
"""

import argparse

import torch
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment

from nni_lease import DigitsDataset, LeaSE, LeaseCellSpace
from nni_lease.oneshot import retrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a quick check that it runs")
    args = parser.parse_args()
    limit = 128 if args.smoke else None
    torch.set_num_threads(1)
    torch.manual_seed(0)

    # The explainer's search space: 2 cells of 3 nodes, each node a LayerChoice (+ an InputChoice).
    space = LeaseCellSpace(in_channels=1, n_classes=10, width=8, cells=2, nodes=3, image_size=8)

    # Trace-safe data sets (NNI records their small constructor arguments, not tensors).
    evaluator = Classification(
        learning_rate=3e-3,
        train_dataloaders=DataLoader(DigitsDataset("train", limit=limit), batch_size=64, shuffle=True),
        val_dataloaders=DataLoader(DigitsDataset("val", limit=limit), batch_size=64, shuffle=True),
        num_classes=10,
        max_epochs=1 if args.smoke else 5,
        enable_progress_bar=False,
        enable_checkpointing=False,
        logger=False,
    )

    # gamma weighs the listener's validation loss; gamma=0 is exactly NNI's DARTS. Every other LeaSE setting
    # (explanation ball, steps, weighting, hypergradient ...) is a field of nni_lease.LeaseConfig.
    strategy = LeaSE(gamma=1.0, hypergradient="first_order", arc_learning_rate=3e-3)
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.run()

    architecture = experiment.export_top_models(formatter="dict")[0]
    print("exported architecture:", architecture)
    metrics = strategy.oneshot_module.trainer.callback_metrics
    print({k: round(float(v), 4) for k, v in metrics.items() if k.split("/")[0] in {"explainer", "listener", "lease"}})

    result = retrain(
        LeaseCellSpace(in_channels=1, n_classes=10, width=8, cells=2, nodes=3, image_size=8),
        architecture,
        DigitsDataset("train", limit=limit),
        DigitsDataset("test", limit=limit),
        epochs=1 if args.smoke else 15,
        learning_rate=3e-3,
    )
    print(f"retrained from scratch: test accuracy {result.test_accuracy:.4f}")


if __name__ == "__main__":
    main()
