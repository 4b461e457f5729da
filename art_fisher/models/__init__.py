"""The small CNNs the evaluation and the benchmarks train (digits, MNIST, CIFAR-10), and a user's exported model.

:func:`load_exported_model` reads a ``torch.export`` archive after checking that loading it runs no pickled
or foreign code, and wraps the program in :class:`ExportedModel`.
"""

from art_fisher.models._architectures import ARCHITECTURES, CifarCNN, MnistCNN, SmallCNN, build_model, train_model
from art_fisher.models._exported import ExportedModel, load_exported_model

__all__ = [
    "ARCHITECTURES",
    "CifarCNN",
    "ExportedModel",
    "MnistCNN",
    "SmallCNN",
    "build_model",
    "load_exported_model",
    "train_model",
]
