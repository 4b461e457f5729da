"""The user's classifier and images in the evaluation: checks, the reference share, the run's classifier.

:class:`~art_fisher.evaluation.art_evaluation.DetectionEvaluation` runs the protocol on an ART
``PyTorchClassifier`` and labelled images the user hands over, and ``art-fisher evaluate --data FILE.npz
--model FILE`` on files. What that needs, and nothing of the protocol itself, lives here:

- :func:`check_classifier`, :func:`check_images`, :func:`integer_labels`: the classifier is an ART
  ``PyTorchClassifier`` with channels first; images match its ``input_shape``, are finite and inside its
  ``clip_values``; labels are integers below its ``nb_classes`` or one-hot rows of exactly that width;
- :func:`user_datasets`: the images as the run's test split, and the clean reference images that
  Mahalanobis, LID and the stacked detector fit their statistics on: ``x_reference`` when given, else
  :data:`REFERENCE_SHARE` of ``x`` (seeded) set aside and never attacked or scored;
- :func:`run_classifier`: the classifier the run attacks, an
  ``ModelDtypeClassifier`` with the user's model, loss, clip values,
  preprocessing and defences (nothing of the user's object is changed);
- :func:`preserved`: the model's train/eval modes, ``requires_grad`` flags and gradients come back as they
  were, whatever the run did (ART's ``predict`` and ``loss_gradient`` switch the mode and write gradients);
- :func:`file_classifier`: the ART classifier of a model read from a file, with the clip range and
  standardisation given on the command line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import zipfile
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from art_fisher.data._loaders import Dataset

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger(__name__)


#: ``dataset`` name of a run on the user's data (``data=``): an ``.npz`` file or arrays.
USER_DATASET = "user"
#: ``eps`` of FGSM / PGD on the user's data when none is given: 8/255 of the inputs' clip range.
USER_DEFAULT_EPS = 8 / 255
#: Detectors that read the model's layers (activations of its ReLU / pooling modules): a ``torch.export``
#: program has no modules, so they cannot run on one.
LAYER_DETECTORS = ("mahalanobis", "lid", "stacked", "binary_activation", "subset_scanning")
#: Share of ``x`` set aside (seeded) as clean reference images when no ``x_reference`` is given.
REFERENCE_SHARE = 0.2
#: Fewest reference images accepted (the class-conditional Gaussians need several per class).
MIN_REFERENCE = 10


def check_classifier(classifier: Any) -> None:
    """Raise unless ``classifier`` is an ART ``PyTorchClassifier`` taking channels-first inputs.

    Raises
    ------
    TypeError
        If it is not a ``PyTorchClassifier``.
    ValueError
        If its ``channels_first`` is False (the Fisher metrics and plots read ``(C, H, W)`` inputs).
    """
    from art.estimators.classification import PyTorchClassifier

    if not isinstance(classifier, PyTorchClassifier):
        raise TypeError(f"classifier must be an ART PyTorchClassifier; got {type(classifier).__qualname__}.")
    if not classifier.channels_first:
        raise ValueError(
            "classifier must take channels-first inputs (channels_first=True, input_shape (C, H, W)); got "
            f"channels_first=False with input_shape {tuple(classifier.input_shape)}."
        )


def check_images(classifier: Any, x: Any, name: str = "x") -> np.ndarray:
    """``x`` as a float array, checked against the classifier: shape ``(N, *input_shape)``, finite, in ``clip_values``.

    Raises
    ------
    TypeError
        If ``x`` is not a numpy array of numbers.
    ValueError
        If its shape, values or range do not fit the classifier.
    """
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a numpy array of numbers; got {type(x).__qualname__}.")
    want = tuple(classifier.input_shape)
    if x.ndim != 1 + len(want) or tuple(x.shape[1:]) != want or len(x) == 0:
        raise ValueError(
            f"{name} must have shape (N, *classifier.input_shape) = (N, {', '.join(map(str, want))}) with N >= 1; "
            f"got {x.shape}."
        )
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values.")
    if classifier.clip_values is not None:
        low, high = (float(np.min(v)) for v in classifier.clip_values)
        if float(x.min()) < low or float(x.max()) > high:
            raise ValueError(
                f"{name} holds values from {float(x.min()):.4g} to {float(x.max()):.4g}, outside the classifier's "
                f"clip_values ({low:.4g}, {high:.4g})."
            )
    return np.ascontiguousarray(x, dtype=np.float32 if x.dtype.kind in "iu" else x.dtype)


def integer_labels(y: Any, n: int, n_classes: int, name: str = "y") -> np.ndarray:
    """Labels ``(N,)`` of ints from integer labels or one-hot rows ``(N, n_classes)``.

    Raises
    ------
    TypeError
        If ``y`` is not a numpy array.
    ValueError
        If it does not hold ``n`` labels in ``0 .. n_classes - 1`` (or one-hot rows of width ``n_classes``).
    """
    if not isinstance(y, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of labels; got {type(y).__qualname__}.")
    if y.ndim == 2:
        if y.shape != (n, n_classes) or not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise ValueError(
                f"{name} as one-hot rows must have shape ({n}, {n_classes}) (the classifier's nb_classes) with one 1 "
                f"per row; got shape {y.shape}."
            )
        return np.argmax(y, axis=1).astype(np.int64)
    if y.ndim != 1 or len(y) != n or y.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must hold {n} integer labels (shape ({n},)) or one-hot rows; got {y.dtype} {y.shape}."
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(
            f"{name} holds labels from {int(y.min())} to {int(y.max())}; the classifier has nb_classes={n_classes} "
            f"(labels 0 .. {n_classes - 1})."
        )
    return y.astype(np.int64)


def user_datasets(
    classifier: Any, x: Any, y: Any, x_reference: Any, *, seed: int, name: str = "user"
) -> tuple[Dataset, Dataset, int]:
    """The reference images and the scored images as the run's ``train`` / ``test`` splits.

    Returns
    -------
    reference : Dataset
        ``x_reference``, or :data:`REFERENCE_SHARE` of ``x`` drawn with ``seed`` (its labels are the user's).
    test : Dataset
        The rest of ``x`` (all of it when ``x_reference`` is given).
    n_set_aside : int
        Images of ``x`` moved to the reference set (0 with ``x_reference``).
    """
    check_classifier(classifier)
    n_classes = int(classifier.nb_classes)
    images = check_images(classifier, x)
    labels = integer_labels(y, len(images), n_classes)
    if x_reference is not None:
        reference = check_images(classifier, x_reference, "x_reference")
        ref_labels, kept, n_aside = np.zeros(len(reference), np.int64), np.arange(len(images)), 0
    else:
        n_aside = max(MIN_REFERENCE, round(REFERENCE_SHARE * len(images)))
        if len(images) < n_aside + 4:
            raise ValueError(
                f"x holds {len(images)} images; without x_reference, {n_aside} are set aside as clean reference "
                "images and at least 4 must remain to be attacked. Give x_reference or more images."
            )
        order = np.random.default_rng(seed).permutation(len(images))
        aside, kept = np.sort(order[:n_aside]), np.sort(order[n_aside:])
        reference, ref_labels = images[aside], labels[aside]
    if len(reference) < MIN_REFERENCE:
        raise ValueError(f"x_reference must hold at least {MIN_REFERENCE} images; got {len(reference)}.")
    return (
        Dataset(x=reference, y=ref_labels, name=name, n_classes=n_classes),
        Dataset(x=images[kept], y=labels[kept], name=name, n_classes=n_classes),
        n_aside,
    )


def run_classifier(classifier: Any) -> Any:
    """The classifier the run attacks: the user's model, loss, clip values, preprocessing and defences.

    A new ``ModelDtypeClassifier`` around the same model (inputs reach
    the model in its own dtype); the user's classifier object is not touched.
    """
    from art_fisher.evaluation._model import ModelDtypeClassifier

    return ModelDtypeClassifier(
        classifier.model, loss=classifier._loss, input_shape=tuple(classifier.input_shape),
        nb_classes=int(classifier.nb_classes), clip_values=classifier.clip_values, channels_first=True,
        preprocessing_defences=classifier.preprocessing_defences,
        postprocessing_defences=classifier.postprocessing_defences, preprocessing=classifier.preprocessing,
        device_type="gpu" if classifier.device.type == "cuda" else "cpu",
    )  # fmt: skip


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block; then restore every module's mode, ``requires_grad`` and grads."""
    modes = [(module, module.training) for module in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode
        for p, flag, grad in zip(params, flags, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad


def _per_channel(name: str, values: Sequence[float] | None, channels: int) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(arr) == 1:
        arr = np.repeat(arr, channels)
    if len(arr) != channels or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be 1 or {channels} finite numbers (one per channel); got {list(values)}.")
    return arr.reshape(channels, 1, 1)


def file_classifier(
    model: nn.Module,
    *,
    input_shape: tuple[int, ...],
    n_classes: int,
    clip_values: tuple[float, float] = (0.0, 1.0),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: torch.device | str = "cpu",
) -> Any:
    """An ART ``PyTorchClassifier`` of a model read from a file: cross-entropy, ``clip_values``, ``(x - mean) / std``.

    Raises
    ------
    ValueError
        If ``clip_values`` is not an increasing finite pair, ``mean`` / ``std`` are not one number or one
        per channel, or ``std`` holds a value <= 0.
    """
    from art.estimators.classification import PyTorchClassifier

    low, high = (float(v) for v in clip_values)
    if not (np.isfinite([low, high]).all() and low < high):
        raise ValueError(f"clip_values must be two finite numbers, low < high; got {tuple(clip_values)}.")
    channels = int(input_shape[0])
    mean_arr, std_arr = _per_channel("mean", mean, channels), _per_channel("std", std, channels)
    if std_arr is not None and (std_arr <= 0).any():
        raise ValueError(f"std must be positive; got {list(std_arr.reshape(-1))}.")
    preprocessing = None
    if mean_arr is not None or std_arr is not None:
        preprocessing = (
            np.zeros((channels, 1, 1)) if mean_arr is None else mean_arr,
            np.ones((channels, 1, 1)) if std_arr is None else std_arr,
        )
    dev = torch.device(device)
    return PyTorchClassifier(
        model.to(dev), loss=nn.CrossEntropyLoss(), input_shape=tuple(input_shape), nb_classes=int(n_classes),
        clip_values=(low, high), preprocessing=preprocessing, device_type="gpu" if dev.type == "cuda" else "cpu",
    )  # fmt: skip


def is_export_archive(path: Path) -> bool:
    """Whether ``path`` is a ``torch.export.save`` archive (``.pt2``, or a zip with an ``archive_format`` record)."""
    if path.suffix == ".pt2":
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/archive_format") for name in archive.namelist()[:100_000])
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def _check_against_data(classifier: Any, train: Dataset, test: Dataset) -> None:
    check_classifier(classifier)
    if test.n_classes != int(classifier.nb_classes):
        raise ValueError(
            f"classifier has nb_classes={classifier.nb_classes} but the {test.name} data have {test.n_classes} "
            "classes; they must be the same."
        )
    for name, data in (("train", train), ("test", test)):
        check_images(classifier, data.x, f"the {data.name} {name} images")


def model_and_classifier(
    *,
    arch: str,
    train: Dataset,
    test: Dataset,
    model_path: Path | None,
    classifier: Any,
    device: torch.device,
    clip_values: tuple[float, float] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> tuple[nn.Module | None, Any, Dataset, Dataset]:
    """The run's model and user classifier, from ``classifier``, or a model file with clip range and preprocessing.

    Returns
    -------
    net : torch.nn.Module or None
        The model (None: train ``arch`` here).
    classifier : PyTorchClassifier or None
        The user's classifier, or one built by :func:`file_classifier` for a ``torch.export`` archive or when
        ``clip_values``, ``mean`` or ``std`` is given; None: the built-in classifier around ``net``.
    train, test : Dataset
        As given; for an archive, with ``n_classes`` set to the model's output width.

    Raises
    ------
    ValueError
        If the model file is not usable (see :func:`art_fisher.models.load_exported_model` and
        ``load_state_dict_file``), has fewer outputs than the data
        have classes, the images lie outside the clip range, or ``clip_values`` / ``mean`` / ``std`` come
        without a model file.
    """
    from art_fisher.evaluation._model import load_state_dict_file
    from art_fisher.models._exported import load_exported_model

    if classifier is not None:
        _check_against_data(classifier, train, test)
        return classifier.model, classifier, train, test
    given = {k: v for k, v in (("clip_values", clip_values), ("mean", mean), ("std", std)) if v is not None}
    if model_path is None:
        if given:
            raise ValueError(f"{sorted(given)} describe a model file given with model=...; none was given.")
        return None, None, train, test
    exported = is_export_archive(model_path)
    if exported:
        net: nn.Module = load_exported_model(model_path, input_shape=train.input_shape)
        with torch.no_grad():
            n_out = int(net(torch.zeros((1, *train.input_shape))).shape[1])
        if n_out < max(train.n_classes, test.n_classes):
            raise ValueError(
                f"model {model_path}: it has {n_out} outputs but the data hold labels up to "
                f"{max(train.n_classes, test.n_classes) - 1}."
            )
        train, test = (dataclasses.replace(d, n_classes=n_out) for d in (train, test))
    else:
        net = load_state_dict_file(arch, train, model_path, device)
    if not exported and not given:
        return net, None, train, test
    built = file_classifier(
        net, input_shape=train.input_shape, n_classes=train.n_classes, mean=mean, std=std, device=device,
        clip_values=(0.0, 1.0) if clip_values is None else clip_values,
    )  # fmt: skip
    for name, data in (("train", train), ("test", test)):
        check_images(built, data.x, f"the {name} images")
    return net, built, train, test


def layer_free_detectors(model: nn.Module | None, names: tuple[str, ...], *, explicit: bool) -> tuple[str, ...]:
    """``names`` without the :data:`LAYER_DETECTORS` when ``model`` is a ``torch.export`` program.

    Raises
    ------
    ValueError
        If such detectors were named explicitly (``explicit``); the default list just loses them (logged).
    """
    from art_fisher.models._exported import ExportedModel

    if not isinstance(model, ExportedModel):
        return names
    layered = [n for n in names if n.startswith(LAYER_DETECTORS)]
    if layered and explicit:
        raise ValueError(
            f"detectors {layered} read the model's layers, which a torch.export program does not have; drop them "
            "or give the model as a state dict of a built-in architecture or in memory (DetectionEvaluation)."
        )
    if layered:
        logger.warning("A torch.export program has no layers to read: detectors %s are left out.", layered)
    kept = tuple(n for n in names if n not in layered)
    if not kept:
        raise ValueError(f"every detector of {list(names)} reads the model's layers; a torch.export program has none.")
    return kept


def input_range(classifier: Any, clip_values: tuple[float, float] | None) -> float:
    """Width of the inputs' clip range (1 for pixels in [0, 1]): the largest meaningful ``eps``."""
    clip = clip_values if classifier is None else classifier.clip_values
    if clip is None:
        return 1.0
    low, high = (float(np.min(v)) for v in clip)
    return high - low if np.isfinite(high - low) and high > low else 1.0
