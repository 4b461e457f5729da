"""Evaluation workflow: attack a classifier with ART, fit detectors, measure how well each catches each attack.

Protocol (what :func:`evaluate` does, in order):

1. Load the data set's ``train`` and ``test`` splits (:func:`art_fisher.data.load_dataset`).
2. Get the classifier: load a state dict (``torch.load(..., weights_only=True)``) or train one of
   :data:`art_fisher.models.ARCHITECTURES` in-process on the train split. A trained state dict is cached
   under ``<output_dir>/models/`` keyed by every setting that changes it, and reloaded with
   ``weights_only=True``.
3. Draw ``n_samples`` test images that the classifier labels correctly (seeded), and split these source
   images once, half and half, into a detector-train and a detector-test side. The same split serves every
   attack, so no source image (clean or attacked) is ever on both sides.
4. For each attack: generate adversarial examples of all drawn images and keep only the successful ones
   (prediction differs from the true label); the attack success rate is reported. Each side's data are the
   clean images plus the successful adversarial versions of the same images (balanced, label 1 =
   adversarial).
5. For each detector: build it fresh, ``fit`` it on the detector-train side, ``detect`` the detector-test
   side, and report ROC-AUC of its continuous score, TPR at 5 % FPR, accuracy of its own yes/no decision,
   and the wall-clock seconds per sample of ``detect``.

Attacks and detectors are registries (:data:`ATTACKS`, :data:`DETECTORS`): add an entry to extend them.
Everything is seeded: the same arguments give the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import platform
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from art_fisher import report as _report
from art_fisher.data import DATASETS, Dataset, load_dataset
from art_fisher.models import ARCHITECTURES, build_model, train_model

logger = logging.getLogger(__name__)

__all__ = [
    "ATTACKS",
    "DEFAULT_ATTACKS",
    "DEFAULT_DETECTORS",
    "DETECTORS",
    "AttackSpec",
    "DetectorSpec",
    "EvaluationResult",
    "evaluate",
]

#: L∞ budget of FGSM / PGD when ``eps`` is not given, per data set.
DEFAULT_EPS = {"digits": 0.2, "mnist": 0.3, "cifar10": 8 / 255}
#: Architecture used when ``arch`` is not given, per data set.
DEFAULT_ARCH = {"digits": "small_cnn", "mnist": "small_cnn", "cifar10": "cifar_cnn"}
#: Epochs of in-process training when ``epochs`` is not given, per data set.
DEFAULT_EPOCHS = {"digits": 30, "mnist": 3, "cifar10": 10}
_TRAIN_BATCH, _TRAIN_LR = 64, 1e-3
_FPR_LEVEL = 0.05


# ------------------------------------------------------------------------------------------ context


@dataclass
class _Context:
    """What detector builders may use: the wrapped classifier and the data it was trained on."""

    classifier: Any  # art PyTorchClassifier
    model: nn.Module
    x_background: np.ndarray  # clean images from the model's training split
    seed: int
    device: torch.device
    batch_size: int
    progress: bool


# ------------------------------------------------------------------------------------------ attacks


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the registry.

    Attributes
    ----------
    label : str
        Display name.
    build : callable
        ``build(classifier, eps, batch_size) -> art.attacks.EvasionAttack``.
    uses_eps : bool
        Whether the ``eps`` budget applies (L∞ attacks); minimal-perturbation attacks ignore it.
    """

    label: str
    build: Callable[[Any, float, int], Any]
    uses_eps: bool


def _fgsm(classifier: Any, eps: float, batch_size: int) -> Any:
    from art.attacks.evasion import FastGradientMethod

    return FastGradientMethod(classifier, norm=np.inf, eps=eps, eps_step=eps, batch_size=batch_size)


def _pgd(classifier: Any, eps: float, batch_size: int) -> Any:
    from art.attacks.evasion import ProjectedGradientDescent

    return ProjectedGradientDescent(
        classifier, norm=np.inf, eps=eps, eps_step=eps / 8, max_iter=20, num_random_init=0,
        batch_size=batch_size, verbose=False,
    )  # fmt: skip


def _deepfool(classifier: Any, eps: float, batch_size: int) -> Any:
    from art.attacks.evasion import DeepFool

    return DeepFool(classifier, max_iter=50, epsilon=0.02, nb_grads=10, batch_size=batch_size, verbose=False)


def _cw_l2(classifier: Any, eps: float, batch_size: int) -> Any:
    from art.attacks.evasion import CarliniL2Method

    # Fewer binary-search steps / iterations than ART's defaults keep the default run in budget; the
    # larger learning rate and initial constant keep the success rate high with so few steps.
    return CarliniL2Method(
        classifier, confidence=0.0, learning_rate=0.1, binary_search_steps=4, max_iter=10,
        initial_const=1.0, batch_size=batch_size, verbose=False,
    )  # fmt: skip


ATTACKS: dict[str, AttackSpec] = {
    "fgsm": AttackSpec("FGSM", _fgsm, uses_eps=True),
    "pgd": AttackSpec("PGD", _pgd, uses_eps=True),
    "deepfool": AttackSpec("DeepFool", _deepfool, uses_eps=False),
    "cw_l2": AttackSpec("C&W L2", _cw_l2, uses_eps=False),
}
DEFAULT_ATTACKS = ("fgsm", "pgd", "deepfool", "cw_l2")


# ---------------------------------------------------------------------------------------- detectors


@dataclass
class _Scored:
    """Output of one detector on the detector-test side."""

    score: np.ndarray  # (N,) higher = more adversarial
    is_adversarial: np.ndarray  # (N,) bool, the detector's own decision
    metric_scores: dict[str, np.ndarray] = field(default_factory=dict)  # per Fisher metric, (N,)


class _DetectorRun:
    """Adapter giving every detector the same two calls."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:  # y: (N,) 0 clean / 1 adversarial
        raise NotImplementedError

    def detect(self, x: np.ndarray) -> _Scored:
        raise NotImplementedError


@dataclass(frozen=True)
class DetectorSpec:
    """One detector of the registry.

    Attributes
    ----------
    label : str
        Display name.
    build : callable
        ``build(context) -> adapter`` with ``fit(x, y)`` and ``detect(x)``; see :class:`_DetectorRun`.
    kind : str
        ``"fisher"`` or ``"baseline"``.
    """

    label: str
    build: Callable[[_Context], _DetectorRun]
    kind: str


def _one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(2, dtype=np.float32)[y.astype(int)]


class _ArtBinaryRun(_DetectorRun):
    """ART's BinaryInputDetector / BinaryActivationDetector: a small network trained on clean vs adversarial."""

    def __init__(self, ctx: _Context, *, on_activations: bool) -> None:
        from art.defences.detector.evasion import BinaryActivationDetector, BinaryInputDetector
        from art.estimators.classification import PyTorchClassifier

        self.ctx = ctx
        torch.manual_seed(ctx.seed)
        clf = ctx.classifier
        if on_activations:
            # The penultimate top-level block of the classifier (its feature extractor for the
            # package's models); ART names layers by the model's top-level children.
            layer = max(len(clf.layer_names) - 2, 0)
            act_shape = clf.get_activations(ctx.x_background[:1], layer, batch_size=1).shape[1:]
            n_in = int(np.prod(act_shape))
            net: nn.Module = nn.Sequential(nn.Flatten(), nn.Linear(n_in, 64), nn.ReLU(), nn.Linear(64, 2))
            input_shape = tuple(act_shape)
        else:
            net = build_model("small_cnn", in_channels=clf.input_shape[0], n_classes=2)
            input_shape = tuple(clf.input_shape)
        wrapped = PyTorchClassifier(
            net, loss=nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(net.parameters(), lr=1e-3),
            input_shape=input_shape, nb_classes=2, device_type=_device_type(ctx.device),
        )  # fmt: skip
        if on_activations:
            self.detector = BinaryActivationDetector(classifier=clf, detector=wrapped, layer=layer)
        else:
            self.detector = BinaryInputDetector(wrapped)

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        _seed_everything(self.ctx.seed)
        self.detector.fit(x, _one_hot(y), batch_size=32, nb_epochs=20)

    def detect(self, x: np.ndarray) -> _Scored:
        report, is_adv = self.detector.detect(x, batch_size=self.ctx.batch_size)
        logits = np.asarray(report["predictions"], dtype=np.float64)
        return _Scored(score=logits[:, 1] - logits[:, 0], is_adversarial=np.asarray(is_adv, bool))


class _SubsetScanningRun(_DetectorRun):
    """ART's SubsetScanningDetector; unsupervised: its null model is built from clean training images."""

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        from art.defences.detector.evasion import SubsetScanningDetector

        clf = self.ctx.classifier
        layer = max(len(clf.layer_names) - 2, 0)
        # The detector fixes its threshold at the largest background score; the labels are not used.
        self.detector = SubsetScanningDetector(clf, bgd_data=self.ctx.x_background, layer=layer, verbose=False)

    def detect(self, x: np.ndarray) -> _Scored:
        report, is_adv = self.detector.detect(x, batch_size=self.ctx.batch_size)
        return _Scored(score=np.asarray(report["scores"], np.float64), is_adversarial=np.asarray(is_adv, bool))


class _FisherRun(_DetectorRun):
    """:class:`art_fisher.detectors.FisherInformationDetector` with the given metrics (default estimator)."""

    def __init__(self, ctx: _Context, metrics: tuple[str, ...]) -> None:
        from art_fisher.detectors import FisherInformationDetector

        self.detector = FisherInformationDetector(
            ctx.classifier, metrics=metrics, batch_size=ctx.batch_size, progress=ctx.progress
        )

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        self.detector.fit(x, y)

    def detect(self, x: np.ndarray) -> _Scored:
        report, is_adv = self.detector.detect(x)
        return _Scored(
            score=np.asarray(report["decision_scores"], np.float64),
            is_adversarial=np.asarray(is_adv, bool),
            metric_scores={k: np.asarray(v, np.float64) for k, v in report["scores"].items()},
        )


def _fisher_specs() -> dict[str, DetectorSpec]:
    """One detector per scalar Fisher metric that :mod:`art_fisher.metrics` provides, and their combination.

    New scalar metrics (registered in :mod:`art_fisher._features`) appear here without further edits.
    The sensitivity (a per-pixel map, reduced to four statistics) is a detector of its own (not part of
    the combination); at about 3 ms per sample on the digits CNN it is in the default set.
    """
    from art_fisher._features import METRICS as _METRIC_SPECS
    from art_fisher._features import available_metrics

    available = available_metrics()
    scalar = tuple(m for m in available if not _METRIC_SPECS[m].is_map)
    specs: dict[str, DetectorSpec] = {}
    for metric in scalar:
        specs[f"fisher_{metric}"] = DetectorSpec(
            f"Fisher {metric.replace('_', ' ')}", lambda ctx, m=(metric,): _FisherRun(ctx, m), "fisher"
        )
    if len(scalar) > 1:
        specs["fisher_combined"] = DetectorSpec(
            f"Fisher {' + '.join(scalar)}", lambda ctx, m=scalar: _FisherRun(ctx, m), "fisher"
        )
    for metric in available:
        if _METRIC_SPECS[metric].is_map:
            specs[f"fisher_{metric}"] = DetectorSpec(
                f"Fisher {metric} (map statistics)", lambda ctx, m=(metric,): _FisherRun(ctx, m), "fisher"
            )
    return specs


_FISHER_SPECS = _fisher_specs()
DETECTORS: dict[str, DetectorSpec] = {
    **_FISHER_SPECS,
    "binary_input": DetectorSpec("ART BinaryInput", lambda ctx: _ArtBinaryRun(ctx, on_activations=False), "baseline"),
    "binary_activation": DetectorSpec(
        "ART BinaryActivation", lambda ctx: _ArtBinaryRun(ctx, on_activations=True), "baseline"
    ),
    "subset_scanning": DetectorSpec("ART SubsetScanning", _SubsetScanningRun, "baseline"),
}
DEFAULT_DETECTORS: tuple[str, ...] = (
    *_FISHER_SPECS,
    "binary_input",
    "binary_activation",
    "subset_scanning",
)


# -------------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate` returns.

    Attributes
    ----------
    table : list of dict
        One row per attack × detector: ``attack``, ``detector``, ``roc_auc``, ``tpr_at_5pct_fpr``,
        ``detection_accuracy``, ``seconds_per_sample``, ``n_train``, ``n_test`` (detector-train /
        detector-test samples, clean plus adversarial).
    attacks : list of dict
        One row per attack: ``attack``, ``success_rate``, ``n_attacked``, ``n_successful``,
        ``mean_l2``, ``mean_linf`` (of the successful perturbations), ``seconds``.
    settings : dict
        The arguments, the resolved defaults, the clean test accuracy and the package versions.
    paths : dict of str to Path
        Artefacts written: ``results_json``, ``results_csv``, ``report_md``, ``roc_curves``,
        ``score_histograms``, ``sensitivity_maps`` (the plots only when they could be drawn), ``model``.
    timings : dict of str to float
        Wall-clock seconds of the stages.
    """

    table: list[dict[str, Any]]
    attacks: list[dict[str, Any]]
    settings: dict[str, Any]
    paths: dict[str, Path]
    timings: dict[str, float]

    def format_table(self) -> str:
        """The table as fixed-width text (what ``art-fisher evaluate`` prints)."""
        return _report.format_table(self.table, self.attacks)


# ------------------------------------------------------------------------------------------ helpers


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _device_type(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0'; got {device!r}.") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or a CUDA device; got {device!r}.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available here.")
    return dev


def _check_names(arg: str, given: Sequence[str], registry: dict[str, Any]) -> tuple[str, ...]:
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


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _load_model(arch: str, data: Dataset, model_path: Path, device: torch.device) -> nn.Module:
    """Build ``arch`` and load the state dict at ``model_path`` (``weights_only=True``)."""
    model = build_model(arch, in_channels=data.input_shape[0], n_classes=data.n_classes)
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(
            f"model {model_path}: expected a state dict (torch.save(model.state_dict(), path)) of architecture "
            f"{arch!r} for inputs {data.input_shape} and {data.n_classes} classes; loading failed: {exc}"
        ) from exc
    return model.to(device).eval()


def _train_or_load_cached(
    *, arch: str, data: Dataset, epochs: int, seed: int, device: torch.device, output_dir: Path, progress: bool
) -> tuple[nn.Module, Path, float, bool]:
    """The trained classifier, its cached state-dict path, the seconds spent training and whether cached."""
    model = build_model(arch, in_channels=data.input_shape[0], n_classes=data.n_classes)
    key = json.dumps(
        {"dataset": data.name, "arch": arch, "epochs": epochs, "seed": seed, "batch": _TRAIN_BATCH,
         "lr": _TRAIN_LR, "data": _fingerprint(data.x, data.y), "torch": torch.__version__},
        sort_keys=True,
    )  # fmt: skip
    cache = output_dir / "models" / f"{data.name}-{arch}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if cache.is_file():
        logger.info("loading the cached model %s", cache)
        model.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))
        return model.to(device).eval(), cache, 0.0, True
    logger.info("training %s on %d %s images for %d epochs", arch, len(data.y), data.name, epochs)
    torch.manual_seed(seed)
    model = build_model(arch, in_channels=data.input_shape[0], n_classes=data.n_classes)
    start = time.perf_counter()
    train_model(
        model, data.x, data.y, epochs=epochs, batch_size=_TRAIN_BATCH, lr=_TRAIN_LR, seed=seed, device=device,
        progress=progress,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, cache)
    return model.eval(), cache, seconds, False


def _predict(classifier: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.argmax(classifier.predict(x, batch_size=batch_size), axis=1)


def _generate(attack: Any, x: np.ndarray, *, desc: str, batch_size: int, progress: bool) -> np.ndarray:
    out = np.empty_like(x)
    with tqdm(total=len(x), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(x), batch_size):
            stop = min(start + batch_size, len(x))
            out[start:stop] = attack.generate(x[start:stop])
            bar.update(stop - start)
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for dist in ("art-fisher-lease", "torch", "adversarial-robustness-toolbox", "scikit-learn", "numpy"):
        try:
            out[dist] = version(dist)
        except Exception:  # noqa: BLE001 - a missing distribution only blanks one report line
            out[dist] = "unknown"
    return out


# ------------------------------------------------------------------------------------------- public


@dataclass
class _Plan:
    """Checked arguments, loaded data and (if given) the loaded model: everything :func:`_run` needs."""

    dataset: str
    data_dir: str | Path | None
    arch: str
    model_path: Path | None
    net: nn.Module | None
    train: Dataset
    test: Dataset
    attacks: tuple[str, ...]
    detectors: tuple[str, ...]
    eps: float
    n_samples: int
    seed: int
    device: torch.device
    output_dir: Path
    epochs: int
    batch_size: int
    progress: bool


def evaluate(
    *,
    dataset: str = "digits",
    data_dir: str | Path | None = None,
    model: str | Path | None = None,
    arch: str | None = None,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    eps: float | None = None,
    detectors: Sequence[str] | None = None,
    n_samples: int = 300,
    seed: int = 0,
    device: str | torch.device = "cpu",
    output_dir: str | Path = "art_fisher_results",
    epochs: int | None = None,
    batch_size: int = 128,
    progress: bool = False,
) -> EvaluationResult:
    """Attack a classifier with ART and measure how well each detector catches each attack.

    See the module docstring for the protocol. Writes ``results.json``, ``results.csv``, ``report.md`` and
    the plots (ROC curves per attack, Fisher score histograms, sensitivity-map grid) to ``output_dir``.

    Parameters
    ----------
    dataset : {"digits", "mnist", "cifar10"}
        ``"digits"`` (8×8, embedded in scikit-learn) needs no files; the others read ``data_dir``.
    data_dir : str or Path, optional
        Folder with the local MNIST / CIFAR-10 files (see :mod:`art_fisher.data`).
    model : str or Path, optional
        A state dict of ``arch`` saved with ``torch.save(model.state_dict(), path)``; loaded with
        ``weights_only=True``. Without it, ``arch`` is trained in-process on the train split (cached).
    arch : str, optional
        A key of :data:`art_fisher.models.ARCHITECTURES`; default ``small_cnn`` (digits, MNIST) or
        ``cifar_cnn`` (CIFAR-10).
    attacks : sequence of str
        Keys of :data:`ATTACKS`.
    eps : float, optional
        L∞ budget of FGSM and PGD, in input units ([0, 1] pixels); default 0.2 (digits), 0.3 (MNIST),
        8/255 (CIFAR-10). DeepFool and C&W L2 are minimal-perturbation attacks and ignore it.
    detectors : sequence of str, optional
        Keys of :data:`DETECTORS`; default :data:`DEFAULT_DETECTORS`.
    n_samples : int
        Correctly classified test images to attack (half feed detector training, half detector testing).
    seed : int
        Seeds the image draw, the split, the training, the attacks and the detectors.
    device : str or torch.device
        ``"cpu"`` or a CUDA device.
    output_dir : str or Path
        Where the artefacts (and the cached model) go; created if missing.
    epochs : int, optional
        Training epochs when the model is trained here; default 30 (digits), 3 (MNIST), 10 (CIFAR-10).
    batch_size : int
        Batch size of prediction, attack generation and detection.
    progress : bool
        Show tqdm bars (training, attack generation, scoring).

    Returns
    -------
    EvaluationResult
        The table (list of dicts), per-attack statistics, settings, artefact paths and timings.

    Raises
    ------
    ValueError, TypeError
        On an invalid argument, before any work is done.
    FileNotFoundError
        If ``model`` or the data files are missing.
    """
    return _run(
        _prepare(
            dataset=dataset, data_dir=data_dir, model=model, arch=arch, attacks=attacks, eps=eps,
            detectors=detectors, n_samples=n_samples, seed=seed, device=device, output_dir=output_dir,
            epochs=epochs, batch_size=batch_size, progress=progress,
        )
    )  # fmt: skip


def _prepare(
    *, dataset: str, data_dir: str | Path | None, model: str | Path | None, arch: str | None,
    attacks: Sequence[str], eps: float | None, detectors: Sequence[str] | None, n_samples: int, seed: int,
    device: str | torch.device, output_dir: str | Path, epochs: int | None, batch_size: int, progress: bool,
) -> _Plan:  # fmt: skip
    """Check every argument, load the data and a given model; nothing is written. Raises as :func:`evaluate`."""
    # ---- validate everything before any work
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}; got {dataset!r}.")
    arch = DEFAULT_ARCH[dataset] if arch is None else arch
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}; got {arch!r}.")
    attack_names = _check_names("attacks", attacks, ATTACKS)
    detector_names = _check_names("detectors", DEFAULT_DETECTORS if detectors is None else detectors, DETECTORS)
    eps = DEFAULT_EPS[dataset] if eps is None else eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 1:
        raise ValueError(f"eps must be a number in (0, 1] (pixels are in [0, 1]); got {eps!r}.")
    for name, value, low in (("n_samples", n_samples, 4), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}.")
    epochs = DEFAULT_EPOCHS[dataset] if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer; got {epochs!r}.")
    dev = _resolve_device(device)
    model_path = None if model is None else Path(model)
    if model_path is not None and not model_path.is_file():
        raise FileNotFoundError(f"model must be a state-dict file; {model_path} does not exist.")
    if dataset != "digits" and data_dir is None:
        raise ValueError(f"data_dir is required for dataset {dataset!r} (nothing is downloaded); got None.")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir must be a folder; {output_dir} is a file.")

    train = load_dataset(dataset, data_dir=data_dir, split="train")
    test = load_dataset(dataset, data_dir=data_dir, split="test")
    net = None if model_path is None else _load_model(arch, train, model_path, dev)
    return _Plan(
        dataset=dataset, data_dir=data_dir, arch=arch, model_path=model_path, net=net, train=train, test=test,
        attacks=attack_names, detectors=detector_names, eps=float(eps), n_samples=int(n_samples), seed=int(seed),
        device=dev, output_dir=output_dir, epochs=int(epochs), batch_size=int(batch_size), progress=bool(progress),
    )  # fmt: skip


def _run(plan: _Plan) -> EvaluationResult:
    """Run a checked plan (see the module docstring for the protocol)."""
    p = plan
    dataset, data_dir, arch, dev, output_dir = p.dataset, p.data_dir, p.arch, p.device, p.output_dir
    attack_names, detector_names, eps, n_samples, seed = p.attacks, p.detectors, p.eps, p.n_samples, p.seed
    epochs, batch_size, progress, train, test = p.epochs, p.batch_size, p.progress, p.train, p.test
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)

    # ---- model
    if p.net is not None:
        net, model_file, timings["training"], cached = p.net, p.model_path, 0.0, False
    else:
        net, model_file, timings["training"], cached = _train_or_load_cached(
            arch=arch, data=train, epochs=epochs, seed=seed, device=dev, output_dir=output_dir, progress=progress
        )
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        net, loss=nn.CrossEntropyLoss(), input_shape=train.input_shape, nb_classes=train.n_classes,
        clip_values=(0.0, 1.0), device_type=_device_type(dev),
    )  # fmt: skip
    pred_test = _predict(classifier, test.x, batch_size)
    clean_accuracy = float(np.mean(pred_test == test.y))
    logger.info("clean test accuracy %.4f", clean_accuracy)

    # ---- images to attack, and the detector-train / detector-test split by source image
    rng = np.random.default_rng(seed)
    correct = np.flatnonzero(pred_test == test.y)
    if len(correct) < n_samples:
        logger.warning("only %d correctly classified test images; using all of them", len(correct))
    chosen = np.sort(rng.permutation(correct)[: min(n_samples, len(correct))])
    x_src, y_src = test.x[chosen], test.y[chosen]
    side = np.zeros(len(chosen), dtype=bool)  # True: detector-train side
    side[rng.permutation(len(chosen))[: len(chosen) // 2]] = True
    x_background = train.x[rng.permutation(len(train.y))[: min(200, len(train.y))]]
    ctx = _Context(
        classifier=classifier, model=net, x_background=x_background, seed=seed, device=dev,
        batch_size=batch_size, progress=progress,
    )  # fmt: skip

    rows: list[dict[str, Any]] = []
    attack_rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray, float]]] = {}
    metric_scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    examples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    from sklearn.metrics import roc_curve

    for a_i, attack_name in enumerate(attack_names):
        spec = ATTACKS[attack_name]
        _seed_everything(seed + 1000 * (a_i + 1))
        start = time.perf_counter()
        attack = spec.build(classifier, float(eps), batch_size)
        x_adv = _generate(attack, x_src, desc=f"attack {spec.label}", batch_size=batch_size, progress=progress)
        timings[f"attack {attack_name}"] = time.perf_counter() - start
        success = _predict(classifier, x_adv, batch_size) != y_src
        delta = (x_adv - x_src).reshape(len(x_src), -1)[success]
        attack_rows.append(
            {
                "attack": attack_name,
                "success_rate": float(success.mean()),
                "n_attacked": int(len(success)),
                "n_successful": int(success.sum()),
                "mean_l2": float(np.linalg.norm(delta, axis=1).mean()) if len(delta) else float("nan"),
                "mean_linf": float(np.abs(delta).max(axis=1).mean()) if len(delta) else float("nan"),
                "seconds": timings[f"attack {attack_name}"],
            }
        )
        logger.info("%s: success rate %.3f (%d / %d)", spec.label, success.mean(), success.sum(), len(success))
        tr, te = side & success, ~side & success
        if tr.sum() < 2 or te.sum() < 2:
            logger.warning("%s: too few successful examples on a side (%d / %d); skipped", spec.label, tr.sum(), te.sum())
            for det_name in detector_names:
                rows.append(_empty_row(attack_name, det_name, int(2 * tr.sum()), int(2 * te.sum())))
            continue
        x_tr = np.concatenate([x_src[tr], x_adv[tr]])
        y_tr = np.repeat([0, 1], tr.sum())
        x_te = np.concatenate([x_src[te], x_adv[te]])
        y_te = np.repeat([0, 1], te.sum())
        examples[attack_name] = (x_src[te], x_adv[te])
        curves[attack_name] = {}
        bar = tqdm(detector_names, desc=f"detectors on {spec.label}", disable=not progress, leave=False)
        for det_name in bar:
            _seed_everything(seed)
            row, scored = _fit_and_score(DETECTORS[det_name], ctx, x_tr, y_tr, x_te, y_te)
            rows.append({"attack": attack_name, "detector": det_name, **row})
            timings[f"{attack_name} / {det_name}"] = row["fit_seconds"] + row["seconds_per_sample"] * len(x_te)
            curves[attack_name][det_name] = (*roc_curve(y_te, scored.score)[:2], row["roc_auc"])
            for metric, values in scored.metric_scores.items():
                metric_scores.setdefault(metric, {}).setdefault(attack_name, (values[y_te == 0], values[y_te == 1]))

    timings["total"] = time.perf_counter() - t_all
    settings = {
        "dataset": dataset, "data_dir": None if data_dir is None else str(data_dir), "arch": arch,
        "model": str(model_file) if model_file is not None else None, "model_cached": cached,
        "attacks": list(attack_names), "eps": float(eps), "detectors": list(detector_names),
        "n_samples": int(len(chosen)), "seed": int(seed), "device": str(dev), "epochs": int(epochs),
        "batch_size": int(batch_size), "clean_test_accuracy": clean_accuracy, "n_train_images": len(train.y),
        "n_test_images": len(test.y), "torch_threads": torch.get_num_threads(), "versions": _versions(),
        "labels": {
            "attacks": {n: ATTACKS[n].label for n in attack_names},
            "detectors": {n: DETECTORS[n].label for n in detector_names},
        },
    }  # fmt: skip
    paths = _report.write_report(
        output_dir, table=rows, attacks=attack_rows, settings=settings, timings=timings, curves=curves,
        metric_scores=metric_scores, sensitivity=_sensitivity_examples(classifier, examples, batch_size),
    )  # fmt: skip
    if model_file is not None:
        paths["model"] = Path(model_file)
    return EvaluationResult(table=rows, attacks=attack_rows, settings=settings, paths=paths, timings=timings)


def _fit_and_score(
    spec: DetectorSpec, ctx: _Context, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray
) -> tuple[dict[str, Any], _Scored]:
    """Build a fresh detector, fit it on the detector-train side, score the detector-test side."""
    from sklearn.metrics import accuracy_score, roc_auc_score, roc_curve

    t0 = time.perf_counter()
    run = spec.build(ctx)
    run.fit(x_tr, y_tr)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    scored = run.detect(x_te)
    t_detect = time.perf_counter() - t0
    fpr, tpr, _ = roc_curve(y_te, scored.score)
    row = {
        "roc_auc": float(roc_auc_score(y_te, scored.score)),
        "tpr_at_5pct_fpr": float(tpr[fpr <= _FPR_LEVEL].max()),
        "detection_accuracy": float(accuracy_score(y_te, scored.is_adversarial)),
        "seconds_per_sample": t_detect / len(x_te),
        "fit_seconds": t_fit,
        "n_train": int(len(x_tr)),
        "n_test": int(len(x_te)),
    }
    return row, scored


def _empty_row(attack: str, detector: str, n_train: int, n_test: int) -> dict[str, Any]:
    nan = float("nan")
    return {
        "attack": attack, "detector": detector, "roc_auc": nan, "tpr_at_5pct_fpr": nan,
        "detection_accuracy": nan, "seconds_per_sample": nan, "fit_seconds": nan, "n_train": n_train,
        "n_test": n_test,
    }  # fmt: skip


def _sensitivity_examples(
    classifier: Any, examples: dict[str, tuple[np.ndarray, np.ndarray]], batch_size: int, n: int = 6
) -> dict[str, Any] | None:
    """Clean / adversarial test images of the first attack and their Fisher sensitivity maps, for the plot."""
    if not examples:
        return None
    from art_fisher.detectors import FisherInformationDetector

    attack, (clean, adv) = next(iter(examples.items()))
    clean, adv = clean[:n], adv[:n]
    maps = FisherInformationDetector(classifier, metrics=("sensitivity",), batch_size=batch_size)
    return {
        "attack": attack, "clean": clean, "adversarial": adv,
        "clean_map": maps.sensitivity_maps(clean), "adversarial_map": maps.sensitivity_maps(adv),
    }  # fmt: skip
