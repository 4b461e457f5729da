"""Every setting of an evaluation run, in one frozen object checked when it is built."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from art_fisher.data._loaders import DatasetName
from art_fisher.evaluation._attacks import ATTACKS, DEFAULT_ATTACKS, DEFAULT_EPS, adaptive_detectors
from art_fisher.evaluation._user_inputs import USER_DATASET, USER_DEFAULT_EPS, input_range
from art_fisher.evaluation.detectors._registry import DEFAULT_DETECTORS, DETECTORS
from art_fisher.metrics._top_mass import check_tau
from art_fisher.models._architectures import ARCHITECTURES
from art_fisher.utils import check_bool, check_choice, check_int, check_probability, check_real

#: Architecture used when ``arch`` is not given, per data set.
DEFAULT_ARCH = {"digits": "small_cnn", "mnist": "mnist_cnn", "cifar10": "cifar_cnn", USER_DATASET: "small_cnn"}
#: Epochs of in-process training when ``epochs`` is not given, per data set.
DEFAULT_EPOCHS = {"digits": 30, "mnist": 3, "cifar10": 10, USER_DATASET: 10}
#: Upper bounds that catch typos (``--batch-size 1e20``) before any work.
MAX_BATCH_SIZE = 2**16
MAX_EPOCHS = 10_000
MAX_N_SAMPLES = 1_000_000
#: Seeds: NumPy's legacy seeding and ART take 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


def _check_names(arg: str, given: Sequence[str], registry: Mapping[str, Any]) -> tuple[str, ...]:
    if isinstance(given, str):
        raise TypeError(f"{arg} must be a sequence of names such as {list(registry)[:2]}; got the string {given!r}.")
    names = tuple(given)
    if not names:
        raise ValueError(f"{arg} must name at least one of {sorted(registry)}; got an empty list.")
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(f"{arg} must be names from {sorted(registry)}; got unknown {unknown}.")
    if len(set(names)) != len(names):
        raise ValueError(f"{arg} must not repeat a name; got {list(names)}.")
    return names


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device; ValueError unless it is the CPU or an available CUDA device."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0'; got {device!r}.") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or a CUDA device; got {device!r}.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available here.")
    return dev


@dataclass(frozen=True)
class EvaluationConfig:
    """Every setting of an evaluation run, checked when built.

    :func:`~art_fisher.evaluation.evaluate`, :func:`~art_fisher.evaluation.prepare`,
    :func:`~art_fisher.evaluation.evaluate_seeds` and :class:`~art_fisher.evaluation.DetectionEvaluation`
    take one (or build it from the same keywords); ``art-fisher evaluate`` builds it from its options.

    Parameters
    ----------
    dataset : {"digits", "mnist", "cifar10"}
        ``"digits"`` (8×8, embedded in scikit-learn) needs no files; the others read ``data_dir``.
    data_dir : str or Path, optional
        Folder with the local MNIST / CIFAR-10 files (see :mod:`art_fisher.data`).
    model : str or Path, optional
        A state dict of ``arch`` saved with ``torch.save(model.state_dict(), path)``; loaded with
        ``weights_only=True``. Without it, ``arch`` is trained in-process on the train split (cached under
        ``output_dir/models/``; an unusable cache file is replaced with a warning).
    arch : str, optional
        A key of :data:`art_fisher.models.ARCHITECTURES`; default ``small_cnn`` (digits), ``mnist_cnn``
        (MNIST) or ``cifar_cnn`` (CIFAR-10).
    attacks : sequence of str
        Keys of :data:`~art_fisher.evaluation.ATTACKS`.
    eps : float, optional
        L∞ budget of FGSM and PGD, in input units ([0, 1] pixels); default 0.2 (digits), 0.3 (MNIST),
        8/255 (CIFAR-10). DeepFool and C&W L2 are minimal-perturbation attacks and ignore it.
    detectors : sequence of str, optional
        Keys of :data:`~art_fisher.evaluation.detectors.DETECTORS`; default: the default set.
    n_samples : int
        Correctly classified test images to attack (half feed detector training, half detector testing).
    seed : int
        Seeds the image draw, the split, the training, the attacks and the detectors.
    device : str or torch.device
        ``"cpu"`` or a CUDA device.
    output_dir : str or Path
        Where the artefacts (and the cached model) go; created if missing. Must be (or be creatable as) a
        writable folder.
    epochs : int, optional
        Training epochs when the model is trained here (1 to 10,000); default 30 (digits), 3 (MNIST),
        10 (CIFAR-10).
    batch_size : int
        Batch size of prediction, attack generation and detection (1 to 65,536).
    target_fpr : float
        The operating point, in (0, 1): every TPR, FPR and flag rate of the tables (adaptive evasion
        included) is taken at the threshold that flags this share of held-out clean images, the achieved
        FPR beside it; the clean-calibrated detectors (``*_clean``) also aim at it on their own.
    progress : bool
        Show tqdm bars: one over attacks and detector fits, inner ones over batches.
    adaptive : bool
        Also attack classifier and detector together (ART's PGD L∞ at ``eps`` and L2) for every detector
        with input gradients; the others are skipped when ``detectors`` is None, and refused (ValueError)
        when named in ``detectors``. Opt-in: it takes several minutes.
    tau : float in (0, 1), optional
        Many-class heads: the Fisher detectors' trace, block traces, λ_max and quadratic form keep each
        sample's classes holding ``1 − tau`` of its probability (:mod:`art_fisher.metrics`).
        None (default): exact.
    data : str, Path or (Dataset, Dataset), optional
        The user's images instead of ``dataset``: an ``.npz`` (:func:`art_fisher.data.load_npz`) or the
        (reference, test) pair that :class:`~art_fisher.evaluation.DetectionEvaluation` builds from arrays.
    classifier : art.estimators.classification.PyTorchClassifier, optional
        The user's classifier, used as given (preprocessing, clip values, class count; its model's modes
        and gradients restored); excludes ``model``.
    clip_values : (float, float), optional
        The input range of a ``model`` file (default ``(0, 1)``): the attacks' clip range.
    mean, std : sequence of float, optional
        A ``model`` file's input standardisation ``(x - mean) / std`` (one value or one per channel),
        applied as ART's preprocessing.

    Raises
    ------
    ValueError, TypeError
        On an invalid value, naming the setting. The files (``model``, the data, ``output_dir``) are checked
        by :func:`~art_fisher.evaluation.prepare`.

    Examples
    --------
    >>> from art_fisher.evaluation import EvaluationConfig
    >>> config = EvaluationConfig(attacks=["fgsm", "pgd"], n_samples=40)
    >>> config.attacks, config.replace(seed=1).seed
    (('fgsm', 'pgd'), 1)
    """

    dataset: DatasetName = "digits"
    data_dir: str | Path | None = None
    model: str | Path | None = None
    arch: str | None = None
    attacks: Sequence[str] = DEFAULT_ATTACKS
    eps: float | None = None
    detectors: Sequence[str] | None = None
    n_samples: int = 300
    seed: int = 0
    device: str | torch.device = "cpu"
    output_dir: str | Path = "art_fisher_results"
    epochs: int | None = None
    batch_size: int = 128
    target_fpr: float = 0.05
    progress: bool = False
    adaptive: bool = False
    tau: float | None = None
    data: Any = None
    classifier: Any = None
    clip_values: tuple[float, float] | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if self.data is not None:
            if self.data_dir is not None:
                raise ValueError(f"give either data (an .npz or arrays) or data_dir, not both; got {self.data_dir!r}.")
        else:
            check_choice(self.dataset, "dataset", DatasetName)
        arch = DEFAULT_ARCH[self.data_name] if self.arch is None else self.arch
        check_choice(arch, "arch", sorted(ARCHITECTURES))
        object.__setattr__(self, "attacks", _check_names("attacks", self.attacks, ATTACKS))
        if self.detectors is not None:
            object.__setattr__(self, "detectors", _check_names("detectors", self.detectors, DETECTORS))
        eps_max = input_range(self.classifier, self.clip_values)
        check_real(self.resolved_eps, "eps", low=0.0, high=eps_max, low_open=True)  # the inputs' clip range
        check_int(self.n_samples, "n_samples", low=4, high=MAX_N_SAMPLES)
        check_int(self.batch_size, "batch_size", low=1, high=MAX_BATCH_SIZE)
        check_int(self.seed, "seed", low=0, high=MAX_SEED)
        check_int(
            DEFAULT_EPOCHS[self.data_name] if self.epochs is None else self.epochs, "epochs", low=1, high=MAX_EPOCHS
        )
        check_probability(self.target_fpr, "target_fpr")
        check_bool(self.adaptive, "adaptive")
        check_bool(self.progress, "progress")
        check_tau(self.tau)
        if self.adaptive:
            adaptive_detectors(self.detector_names, explicit=self.detectors is not None)
        resolve_device(self.device)
        if self.data is None and self.dataset != "digits" and self.data_dir is None:
            raise ValueError(f"data_dir is required for dataset {self.dataset!r} (nothing is downloaded); got None.")

    @property
    def data_name(self) -> str:
        """``dataset``, or ``"user"`` for a run on the user's ``data``."""
        return USER_DATASET if self.data is not None else self.dataset

    @property
    def resolved_eps(self) -> Any:
        """``eps``, or its default: per data set, or 8/255 of the clip range on the user's data."""
        if self.eps is not None:
            return self.eps
        if self.data_name in DEFAULT_EPS:
            return DEFAULT_EPS[self.data_name]
        return USER_DEFAULT_EPS * input_range(self.classifier, self.clip_values)

    @property
    def detector_names(self) -> tuple[str, ...]:
        """The detectors run: ``detectors``, or the default set."""
        return DEFAULT_DETECTORS if self.detectors is None else tuple(self.detectors)

    def replace(self, **changes: Any) -> EvaluationConfig:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)


def config_of(config: EvaluationConfig | None, settings: Mapping[str, Any]) -> EvaluationConfig:
    """``config`` with ``settings`` applied, or a config built from ``settings`` alone.

    Raises
    ------
    TypeError
        If ``config`` is not an :class:`EvaluationConfig`, or a setting is not one of its fields.
    """
    if config is None:
        return EvaluationConfig(**settings)
    if not isinstance(config, EvaluationConfig):
        raise TypeError(f"config must be an EvaluationConfig; got {type(config).__qualname__}.")
    return config.replace(**settings) if settings else config
