"""The evaluation's classifier: a given state dict, or a model trained here and cached on disk.

The cache lives under ``<output_dir>/models/``, one file per setting that changes the trained weights
(data set and its content, architecture, epochs, seed, optimiser settings, torch version). A cache file
is a ``torch.save`` of a dict with the format tag, that key, the state dict and a SHA-256 digest of the
tensors; it is written atomically (temporary file, then rename) and read with ``weights_only=True``.
A file that is unreadable, truncated, empty, a folder, written for other settings, fails its digest or
does not fit the architecture is never trusted: the model is trained again with a warning that names
the file, and the file is replaced.

The ART classifier the evaluation attacks: ART's ``PyTorchClassifier`` that feeds the model its own dtype.

ART's ``PyTorchClassifier`` hands arrays to the model in whatever dtype they come: an attack that works in
float64 (HopSkipJump, and others that build their queries with NumPy) then fails inside a float32 model
with ``RuntimeError: Input type (double) and bias type (float)``. :class:`ModelDtypeClassifier` casts
every input, after ART's preprocessing, to the dtype of the model's first floating-point parameter; in
``loss_gradient`` the cast is part of the graph, so gradients come back for the input as given. With it,
any ART evasion attack can be registered in :data:`art_fisher.evaluation.ATTACKS`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from torch import nn

from art_fisher.data._loaders import Dataset
from art_fisher.distributed import is_writer
from art_fisher.models._architectures import build_model, train_model
from art_fisher.utils import atomic_write


def _model_dtype(model: nn.Module) -> torch.dtype:
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


class ModelDtypeClassifier(PyTorchClassifier):
    """ART's ``PyTorchClassifier`` whose inputs reach the model in the model's dtype (see the module docstring).

    Takes ``PyTorchClassifier``'s arguments; ``model_dtype`` is the dtype of the model's first
    floating-point parameter or buffer.
    """

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self.model_dtype = _model_dtype(model)

    def _apply_preprocessing(self, x: Any, y: Any, fit: bool = False, no_grad: bool = True) -> tuple[Any, Any]:
        x, y = super()._apply_preprocessing(x, y, fit=fit, no_grad=no_grad)
        if isinstance(x, torch.Tensor):
            if x.is_floating_point() and x.dtype != self.model_dtype:
                x = x.to(self.model_dtype)
        elif isinstance(x, np.ndarray) and x.dtype.kind == "f":
            wanted = torch.empty((), dtype=self.model_dtype).numpy().dtype
            if x.dtype != wanted:
                x = x.astype(wanted)
        return x, y


def attacked_classifier(
    model: nn.Module, *, input_shape: tuple[int, ...], nb_classes: int, device: torch.device
) -> ModelDtypeClassifier:
    """The evaluation's classifier: cross-entropy loss, inputs in [0, 1], on ``device``."""
    return ModelDtypeClassifier(
        model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(input_shape),
        nb_classes=nb_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )


logger = logging.getLogger(__name__)


CACHE_FORMAT = "art_fisher.model_cache.v1"
_TRAIN_BATCH, _TRAIN_LR = 64, 1e-3


@dataclass
class ModelSource:
    """The classifier's model and where it came from.

    Attributes
    ----------
    model : torch.nn.Module
        In eval mode, on the run's device.
    path : Path or None
        The state-dict file (given, or the cache file); None for a model given in memory (an ART
        classifier handed to :class:`~art_fisher.evaluation.DetectionEvaluation`).
    status : {"given", "cached", "trained", "rebuilt", "uncached"}
        Loaded from ``--model``; loaded from the cache; trained and cached; trained again because the
        cache file was unusable (a warning says why); trained but the cache could not be written.
    seconds : float
        Seconds spent training (0 when loaded).
    """

    model: nn.Module
    path: Path | None
    status: str
    seconds: float


def check_finite_scores(scores: np.ndarray, what: str, on: str) -> None:
    """Raise ``ValueError`` naming ``what`` if any of its outputs ``scores`` (N, C) on ``on`` is NaN or infinite."""
    bad = ~np.isfinite(np.asarray(scores)).all(axis=tuple(range(1, np.ndim(scores))))
    if bool(bad.any()):
        raise ValueError(
            f"{what}: its outputs are not finite (NaN or inf) on {int(bad.sum())} of {len(bad)} {on}; "
            "its weights or the inputs are broken, so no attack or detector result would mean anything."
        )


def _non_finite_tensors(model: nn.Module) -> list[str]:
    return [
        name
        for name, t in (*model.named_parameters(), *model.named_buffers())
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def load_state_dict_file(arch: str, data: Dataset, path: Path, device: torch.device) -> nn.Module:
    """Build ``arch`` and load the user's state dict at ``path`` (``weights_only=True``).

    Raises
    ------
    ValueError
        If the file is not a torch state dict of ``arch`` for the data's input shape and classes, holds
        NaN or infinite weights, or gives outputs that are not finite on the first images of ``data``.
    """
    model = build_model(arch, in_channels=data.input_shape[0], n_classes=data.n_classes)
    expected = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    check_torch_archive(path, max_bytes=2 * expected + 2**20, what="model")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"the file holds a {type(state).__name__}, not a dict of tensors")
        _check_state_keys(model, state)
        model.load_state_dict(state)
    # torch.load raises a different exception for every kind of foreign file (KeyError for some text
    # files, UnpicklingError, RuntimeError, EOFError ...): all of them mean "not a usable state dict".
    except Exception as exc:  # re-raised as one ValueError naming the file
        raise ValueError(
            f"model {path}: expected a state dict (torch.save(model.state_dict(), path)) of architecture "
            f"{arch!r} for inputs {data.input_shape} and {data.n_classes} classes; loading failed: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        ) from exc
    broken = _non_finite_tensors(model)
    if broken:
        raise ValueError(f"model {path}: weights {broken[:5]} hold NaN or infinite values.")
    model = model.to(device).eval()
    with torch.no_grad():
        first = torch.as_tensor(data.x[:64], device=device, dtype=next(model.parameters()).dtype)
        check_finite_scores(model(first).cpu().numpy(), f"model {path}", f"the first {len(first)} {data.name} images")
    return model


def check_torch_archive(path: Path, *, max_bytes: int, what: str) -> None:
    """Check a ``torch.save`` file before ``torch.load`` reads it; ValueError naming ``what`` and ``path``.

    It must be a regular file in torch's zip format (the default since torch 1.6; the older pickle
    format declares its storage sizes inside the pickle, unchecked), whose members are stored uncompressed
    as torch writes them (a deflated member inflates to any size) and declare at most ``max_bytes`` in all.
    Nothing but the zip directory is read.
    """
    import zipfile

    if not path.is_file():
        found = "a folder" if path.is_dir() else "not a regular file (a device, pipe or socket)"
        raise ValueError(f"{what} {path} is {found}; expected a torch.save file.")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ValueError(
            f"{what} {path} is not a torch zip archive (torch.save's format since torch 1.6; re-save it with "
            f"torch.save(model.state_dict(), path)): {type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
        ) from exc
    packed = [info.filename for info in infos if info.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise ValueError(
            f"{what} {path}: archive member {packed[0][:80]!r} is compressed; torch.save stores its members "
            "uncompressed, and a compressed member can inflate to any size."
        )
    declared = sum(info.file_size for info in infos)
    if declared > max_bytes:
        raise ValueError(
            f"{what} {path}: its members declare {declared} bytes, over the {max_bytes} bytes a state dict of "
            "this architecture needs (twice its tensors' size and 1 MiB)."
        )


def _check_state_keys(model: nn.Module, state: dict[Any, Any]) -> None:
    """Raise TypeError / ValueError (one line) unless ``state`` has ``model``'s keys and tensor shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"its keys are not the architecture's: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {[str(k)[:40] for k in unexpected[:5]]}{' ...' if len(unexpected) > 5 else ''}"
        )
    for key, tensor in own.items():
        given = state[key]
        if not isinstance(given, torch.Tensor):
            raise TypeError(f"entry {key!r} is a {type(given).__name__}, not a tensor")
        if tuple(given.shape) != tuple(tensor.shape):
            raise ValueError(f"entry {key!r} has shape {tuple(given.shape)}; arch needs {tuple(tensor.shape)}")


def _digest(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).data.cast("B"))  # the array's bytes, without a copy
    return h.hexdigest()


def _read_cache(path: Path, key: str, model: nn.Module) -> None:
    """Load the cache file into ``model``; ValueError saying why it cannot be used."""
    if not path.is_file():
        raise ValueError("it is not a regular file" + (" (a folder)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise ValueError("it is empty")
    try:
        payload: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to read our own cache means "rebuild it"
        raise ValueError(f"it cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
        raise ValueError(f"it is not a model cache of format {CACHE_FORMAT!r}")
    if payload.get("key") != key:
        raise ValueError("it was written for other settings")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or payload.get("digest") != _digest(state):
        raise ValueError("its weights do not match their recorded SHA-256 digest")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"its weights do not fit the architecture ({str(exc)[:200]})") from exc
    broken = _non_finite_tensors(model)
    if broken:
        raise ValueError(f"its weights {broken[:5]} hold NaN or infinite values")


def cached_model(
    *, arch: str, data: Dataset, epochs: int, seed: int, device: torch.device, output_dir: Path, progress: bool
) -> ModelSource:
    """The model trained on ``data`` with these settings: from the cache if usable, else trained and cached."""
    key = json.dumps(
        {
            "dataset": data.name,
            "arch": arch,
            "epochs": epochs,
            "seed": seed,
            "batch": _TRAIN_BATCH,
            "lr": _TRAIN_LR,
            "data": _fingerprint(data.x, data.y),
            "torch": torch.__version__,
        },
        sort_keys=True,
    )
    path = output_dir / "models" / f"{data.name}-{arch}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    status = "trained"
    if path.exists() or path.is_symlink():
        model = build_model(arch, in_channels=data.input_shape[0], n_classes=data.n_classes)
        try:
            _read_cache(path, key, model)
        except ValueError as why:
            logger.warning("The model cache %s is unusable (%s); training the model again.", path, why)
            status = "rebuilt"
        else:
            logger.info("loaded the cached model %s", path)
            return ModelSource(model.to(device).eval(), path, "cached", 0.0)
    logger.info("training %s on %d %s images for %d epochs", arch, len(data.y), data.name, epochs)
    torch.manual_seed(seed)
    model = build_model(arch, in_channels=data.input_shape[0], n_classes=data.n_classes)
    start = time.perf_counter()
    train_model(
        model,
        data.x,
        data.y,
        epochs=epochs,
        batch_size=_TRAIN_BATCH,
        lr=_TRAIN_LR,
        seed=seed,
        device=device,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if not is_writer():  # under torchrun every rank trains the same model; rank 0 alone writes the cache
        return ModelSource(model.eval(), path, "uncached", seconds)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as fh:
            torch.save({"format": CACHE_FORMAT, "key": key, "state_dict": state, "digest": _digest(state)}, fh)
    except OSError as exc:
        logger.warning("Cannot write the model cache %s (%s); the model is used without caching.", path, exc)
        status = "uncached"
    return ModelSource(model.eval(), path, status, seconds)


def predict_labels(classifier: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Predicted class of each input, shape (N,)."""
    return np.argmax(classifier.predict(x, batch_size=batch_size), axis=1)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (ART's detectors and attacks use them)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - ART draws from numpy's global generator
    torch.manual_seed(seed)
