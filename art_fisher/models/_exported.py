"""A user's model as a ``torch.export`` archive (``torch.export.save``): checked, then loaded with no user code.

``torch.export.load`` unpickles parts of an archive with ``weights_only=False`` (weights or constants marked
``use_pickle``, custom and opaque objects, and the example inputs when the restricted load fails), loads
compiled AOTInductor libraries when the archive carries them, and runs, when the program is called, any
function whose dotted name under ``torch``, ``_operator`` or ``math`` a graph node names. An archive is
therefore checked before it is handed to ``torch.export.load``:

- as a zip: at most :data:`MAX_MEMBERS` members, none encrypted, each stored or deflated, each declaring no
  more bytes than its compressed bytes can hold, all together at most ``max_bytes``;
- its members: only those of a plain exported program named ``model`` (its JSON, raw weight and tensor
  constant files and their configs, the example inputs, the archive's version records) under one root
  folder; no AOTInductor, ExecuTorch or legacy pickled files, no custom or opaque objects;
- the weight and constant configs: no entry marked ``use_pickle``;
- the example inputs: they load with ``torch.load(weights_only=True)`` (so torch's own restricted load
  succeeds and its unrestricted fallback never runs);
- every graph node's target: an ``aten`` or ``prims`` operator (``aten.from_file`` excepted) or one of
  a few ``_operator`` and ``torch.sym_*`` functions on sizes; no higher-order operator.

The loaded program is wrapped in :class:`ExportedModel`, an ``nn.Module`` whose ``train`` / ``eval`` only set
its flag (an exported program is fixed in the mode it was exported in, and refuses both calls, which ART
makes), and whose outputs are checked on a batch of one and of three: an archive exported with a fixed
batch size is refused with the fix (``dynamic_shapes``).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from art_fisher.utils import check_bool, check_int

#: Bytes the archive's members may declare in total: 4 GiB.
DEFAULT_MAX_BYTES = 4 * 2**30
#: Members an archive may hold (a model with 10,000 weight tensors is far beyond any image classifier here).
MAX_MEMBERS = 20_000
_DEFLATE_MAX_RATIO = 1032
_MAX_CONFIG_BYTES = 256 * 2**20
_MEMBER_PATTERNS = (
    r"archive_format",
    r"archive_version",
    r"byteorder",
    r"\.data/version",
    r"\.data/serialization_id",
    r"models/model\.json",
    r"data/sample_inputs/model\.pt",
    r"data/weights/model_weights_config\.json",
    r"data/weights/weight_\d+",
    r"data/constants/model_constants_config\.json",
    r"data/constants/tensor_\d+",
)
_MEMBER_RE = re.compile(r"(?:" + "|".join(_MEMBER_PATTERNS) + r")")
_REQUIRED = ("archive_format", "models/model.json", "data/sample_inputs/model.pt",
             "data/weights/model_weights_config.json", "data/constants/model_constants_config.json")  # fmt: skip
_OPERATOR_TARGETS = frozenset(
    f"_operator.{name}"
    for name in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "pow", "neg", "eq", "ne", "lt", "le",
                 "gt", "ge", "and_", "or_", "not_")
)  # fmt: skip
_SYM_TARGET = re.compile(r"torch\.sym_(?:int|float|max|min|not|sqrt|ite|sum)")
_OP_TARGET = re.compile(r"torch\.ops\.(?:aten|prims)\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?")
_DENIED_OPS = ("torch.ops.aten.from_file",)


class ExportedModel(nn.Module):
    """An exported program (``ExportedProgram.module()``) as an ``nn.Module`` that ART can switch modes on.

    Parameters
    ----------
    program : torch.nn.Module
        ``torch.export.load(path).module()``.

    Notes
    -----
    The program computes what the model computed in the mode it was exported in (export it in eval mode);
    ``train`` and ``eval`` set ``training`` and nothing else.
    """

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> ExportedModel:
        """Set ``training`` only (the exported graph cannot change mode); returns ``self``."""
        check_bool(mode, "mode")
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The program's output for inputs ``x`` of shape ``(N, C, H, W)``."""
        return self.program(x)


def _check_zip(archive: zipfile.ZipFile, path: Path, max_bytes: int) -> str:
    """Check the zip records and member names; return the archive's root folder (``name/``)."""
    infos = archive.infolist()
    if not 0 < len(infos) <= MAX_MEMBERS:
        raise ValueError(f"{path}: expected 1 to {MAX_MEMBERS} members; the archive holds {len(infos)}.")
    total = 0
    for info in infos:
        name = info.filename[:80]
        if info.flag_bits & 0x1:
            raise ValueError(f"{path}: member {name!r} is encrypted.")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ValueError(f"{path}: member {name!r} uses compression method {info.compress_type}.")
        ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_MAX_RATIO
        if info.file_size > ratio * info.compress_size + 64:
            raise ValueError(
                f"{path}: member {name!r} declares {info.file_size} bytes, more than its {info.compress_size} "
                "compressed bytes can hold."
            )
        total += info.file_size
    if total > max_bytes:
        raise ValueError(f"{path}: its members declare {total} bytes in total; max_bytes is {max_bytes}.")
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: a member name appears twice (one would shadow the other).")
    root = names[0].split("/", 1)[0] + "/"
    foreign = [n[:80] for n in names if not (n.startswith(root) and _MEMBER_RE.fullmatch(n[len(root) :]))]
    if foreign:
        raise ValueError(
            f"{path}: expected only the members of a plain torch.export.save archive of one program (no "
            f"AOTInductor, ExecuTorch, custom-object or pickled files); found {foreign[:3]}."
        )
    missing = [m for m in _REQUIRED if root + m not in names]
    if missing:
        raise ValueError(f"{path}: not a torch.export.save archive; missing {missing}.")
    return root


def _read_json(archive: zipfile.ZipFile, name: str, path: Path) -> Any:
    if archive.getinfo(name).file_size > _MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: {name} declares more than {_MAX_CONFIG_BYTES} bytes.")
    try:
        return json.loads(archive.read(name))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: {name} is not valid JSON ({str(exc)[:200]}).") from exc


def _check_payload_config(config: Any, name: str, path: Path, prefix: str) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: {name} has no 'config' mapping.")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise ValueError(f"{path}: {name} entry {str(fqn)[:80]!r} is pickled or malformed; only raw tensors load.")
        if not re.fullmatch(prefix + r"\d+", str(meta.get("path_name", ""))):
            raise ValueError(f"{path}: {name} entry {str(fqn)[:80]!r} names {str(meta.get('path_name'))[:80]!r}.")


def _targets(node: Any) -> Iterator[Any]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "target" in item:
                yield item["target"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_targets(program: Any, path: Path) -> None:
    for target in _targets(program):
        allowed = isinstance(target, str) and (
            target in _OPERATOR_TARGETS
            or _SYM_TARGET.fullmatch(target) is not None
            or (_OP_TARGET.fullmatch(target) is not None and not target.startswith(_DENIED_OPS))
        )
        if not allowed:
            raise ValueError(
                f"{path}: a graph node calls {str(target)[:100]!r}; only aten / prims operators (and size "
                "arithmetic) are accepted from an exported program."
            )


def _check_sample_inputs(archive: zipfile.ZipFile, name: str, path: Path) -> None:
    try:
        torch.load(io.BytesIO(archive.read(name)), map_location="cpu", weights_only=True)
    except Exception as exc:  # every failure of the restricted unpickler means: torch would unpickle freely
        raise ValueError(
            f"{path}: its example inputs do not load with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {str(exc)[:200]}); refused rather than unpickled."
        ) from exc


def check_export_archive(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Raise ``ValueError`` naming ``path`` unless it passes every check of the module docstring."""
    try:
        with zipfile.ZipFile(path) as archive:
            root = _check_zip(archive, path, max_bytes)
            for config, prefix in (("data/weights/model_weights_config.json", "weight_"),
                                   ("data/constants/model_constants_config.json", "tensor_")):  # fmt: skip
                _check_payload_config(_read_json(archive, root + config, path), config, path, prefix)
            _check_targets(_read_json(archive, root + "models/model.json", path), path)
            _check_sample_inputs(archive, root + "data/sample_inputs/model.pt", path)
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, RuntimeError, NotImplementedError) as exc:
        raise ValueError(f"{path}: cannot read it as a torch.export archive ({str(exc)[:200]}).") from exc


def _check_runs(model: nn.Module, path: Path, input_shape: tuple[int, ...], n_classes: int | None) -> None:
    outputs = []
    for batch in (1, 3):
        try:
            with torch.no_grad():
                outputs.append(model(torch.zeros((batch, *input_shape))))
        except Exception as exc:  # the program's own shape guards raise assorted errors
            raise ValueError(
                f"{path}: the program does not run on a batch of {batch} input(s) of shape {input_shape} "
                f"({type(exc).__name__}: {str(exc)[:200]}); it must take inputs of that shape and any batch size "
                "(export with dynamic_shapes=({0: torch.export.Dim('batch')},))."
            ) from exc
    out = outputs[-1]
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 3:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{path}: expected logits of shape (batch, classes); got {shape} for a batch of 3.")
    if n_classes is not None and out.shape[1] != n_classes:
        raise ValueError(f"{path}: the program has {out.shape[1]} outputs; the data have {n_classes} classes.")


def load_exported_model(
    path: str | Path,
    *,
    input_shape: tuple[int, ...],
    n_classes: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ExportedModel:
    """Check a ``torch.export.save`` archive (module docstring), load it and wrap it in :class:`ExportedModel`.

    Parameters
    ----------
    path : str or Path
        The ``.pt2`` archive.
    input_shape : tuple of int
        One input's shape ``(C, H, W)``; the program must accept batches of 1 and 3 such inputs.
    n_classes : int, optional
        The number of outputs it must give per input.
    max_bytes : int
        Bytes the archive's members may declare in total.

    Returns
    -------
    ExportedModel
        On the CPU, float as exported.

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a file.
    ValueError
        If the archive fails a check, does not load, or does not map a batch of ``input_shape`` inputs to
        ``(batch, n_classes)`` outputs; the message starts with the path.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()
    >>> batch = torch.export.Dim("batch")
    >>> program = torch.export.export(net, (torch.zeros(2, 3, 2, 2),), dynamic_shapes=({0: batch},))
    >>> path = os.path.join(tempfile.mkdtemp(), "net.pt2")
    >>> torch.export.save(program, path)
    >>> model = load_exported_model(path, input_shape=(3, 2, 2), n_classes=5)
    >>> x = torch.rand(4, 3, 2, 2)
    >>> torch.allclose(model(x), net(x))
    True
    """
    path = Path(path)
    check_int(max_bytes, "max_bytes", low=1)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist or is not a regular file"
        raise FileNotFoundError(f"model {path} {what}; expected a torch.export.save archive (.pt2).")
    check_export_archive(path, max_bytes)
    try:
        program = torch.export.load(str(path)).module()
    except Exception as exc:  # torch raises many kinds for archives it cannot deserialize
        raise ValueError(
            f"{path}: torch.export.load failed ({type(exc).__name__}: {str(exc)[:300]}); export the model with "
            "torch.export.export(model.eval(), ...) and torch.export.save of this PyTorch version "
            f"({torch.__version__})."
        ) from exc
    model = ExportedModel(program)
    _check_runs(model, path, tuple(input_shape), n_classes)
    return model
