"""The small CNNs the evaluation and the benchmarks train (digits, MNIST, CIFAR-10)."""

from art_fisher.models._architectures import ARCHITECTURES, CifarCNN, MnistCNN, SmallCNN, build_model, train_model

__all__ = ["ARCHITECTURES", "CifarCNN", "MnistCNN", "SmallCNN", "build_model", "train_model"]
