"""Small hostile files against the readers: peak RSS, seconds and message length until each is refused.

Each file is loaded in a fresh Python process (``ru_maxrss`` after minus before the load, so imports do
not count). The files, as in the hostile probe:

* ``cifar_dtype``: a 444 KB CIFAR batch pickling ``numpy.dtype([b"\\0" * 1000] * 100000)`` (its ``repr``
  is 400 MB);
* ``cifar_dup``: a 63 MiB CIFAR batch of ``DUP`` opcodes;
* ``npz_shadow``: an ``mnist.npz`` with a checked ``x_train.npy`` of 20 images and a second ``x_train``
  member (no ``.npy`` suffix, ``.npy`` content) of 200,000 images, 150 KB deflated, that shadows it;
* ``npz_raw``: the same archive with raw bytes (not ``.npy``) in the ``x_train`` member;
* ``skops_nodes``: a 52 KB detector file whose schema points 20 array nodes at one deflated 50 MB ``.npy``;
* ``torch_deflated``: a ``--model`` file in torch's zip format whose one storage member is 1 GiB of zeros,
  deflated to about 1 MB (``art-fisher evaluate --model``);
* ``arch_darts`` / ``arch_lease``: 1 KB ``architecture.json`` files for ``nni-lease retrain`` asking for a
  network from NNI's DARTS space at width 4096, and from ``LeaseCellSpace`` at width 4096 with 64 cells of 16
  nodes;
* ``darts_width``: no file, the flags ``nni-lease search --space darts --width 4096`` (a supernet of 20.8 G
  parameters).

Usage: ``python tests/benchmarks/bench_size_bombs.py [--smoke] [--code DIR]``; ``--code`` measures another
checkout (e.g. one before the readers were bounded); results of this checkout go to
``tests/benchmarks/results/bench_size_bombs.json`` (not with ``--smoke``, which uses small files).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results" / "bench_size_bombs.json"

_PROBE = """
import resource, sys, time
kind, path = sys.argv[1], sys.argv[2]
if kind == "skops_nodes":
    import skops.io, torch
    from art.estimators.classification import PyTorchClassifier
    from art_fisher.detection._detector import FisherInformationDetector
    from art_fisher.models._architectures import SmallCNN
    clf = PyTorchClassifier(SmallCNN(n_classes=3), torch.nn.CrossEntropyLoss(), (1, 8, 8), 3, device_type="cpu")
    load = lambda: FisherInformationDetector.load(path, clf)
elif kind == "torch_deflated":
    import torch
    from art_fisher.data._loaders import load_digits
    from art_fisher.evaluation._model import load_state_dict_file
    digits = load_digits(split="train")
    load = lambda: load_state_dict_file("small_cnn", digits, __import__("pathlib").Path(path), torch.device("cpu"))
elif kind.startswith("arch_"):
    from nni_lease.oneshot import retrain_architecture
    load = lambda: retrain_architecture(path, output=path + ".out.json")
elif kind == "darts_width":
    from nni_lease.cli import main
    def load():
        code = main(["search", "--space", "darts", "--width", "4096", "--output", path + "/out"])
        if code:
            raise SystemExit(f"exit status {code}")
else:
    from art_fisher.data._loaders import load_cifar10, load_mnist
    load = (lambda: load_mnist(path)) if kind.startswith("npz") else (lambda: load_cifar10(path, split="test"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    out = load()
    outcome, message = "accepted", f"{len(out.y)} images" if hasattr(out, "y") else "loaded"
except (Exception, SystemExit) as exc:
    outcome, message = type(exc).__name__, str(exc)
seconds = time.perf_counter() - start
growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(repr((outcome, len(message), message[:160], seconds, growth / 1024)))
"""


class _DtypeBomb:
    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self):
        return (np.dtype, ([b"\0" * 1000] * self.n,))


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def _torch_bomb(path: Path, inflated: int) -> None:
    """A ``torch.save`` zip whose storage member holds ``inflated`` zero bytes, deflated (about 1/1000 of that)."""
    import torch

    torch.save({"w": torch.zeros(1)}, path)
    with zipfile.ZipFile(path) as src:
        members = [(info.filename, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for name, data in members:
            if not name.endswith("/data/0"):
                dst.writestr(name, data)
                continue
            with dst.open(name, "w", force_zip64=True) as member:
                for _ in range(inflated // 2**20):
                    member.write(bytes(2**20))


def _default_sample(space: str, kwargs: dict) -> dict:
    """The first choice of every label of the space (built on the meta device: no memory)."""
    sys.path.insert(0, str(ROOT))
    from nni_lease._spaces import build_space_on_meta

    built = build_space_on_meta(space, check_size=False, **kwargs)
    return {label: mutable.default() for label, mutable in built.simplify().items()}


def write_files(root: Path, smoke: bool) -> dict[str, Path]:
    """The hostile files (smaller with ``smoke``); returns name -> path."""
    (root / "dtype").mkdir()
    with open(root / "dtype" / "test_batch", "wb") as fh:
        pickle.dump({b"data": _DtypeBomb(1000 if smoke else 100_000), b"labels": [0]}, fh, protocol=2)
    (root / "dup").mkdir()
    (root / "dup" / "test_batch").write_bytes(b"\x80\x02N" + b"2" * ((1 if smoke else 63) * 2**20) + b".")
    n_big = 2_000 if smoke else 200_000
    for name, member in (("shadow", _npy(np.zeros((n_big, 28, 28), np.uint8))), ("raw", bytes(n_big * 784))):
        with zipfile.ZipFile(root / f"{name}.npz", "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("x_train.npy", _npy(np.zeros((20, 28, 28), np.uint8)))
            archive.writestr("y_train.npy", _npy(np.zeros(20, np.uint8)))
            archive.writestr("x_train", member)
    import skops.io as sio

    sio.dump({f"a{i}": np.zeros(1) for i in range(20)}, root / "plain.skops")
    with zipfile.ZipFile(root / "plain.skops") as archive:
        schema = json.loads(archive.read("schema.json"))
    for node in schema["content"].values():
        node["file"] = "big.npy"
    with zipfile.ZipFile(root / "nodes.skops", "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("schema.json", json.dumps(schema))
        archive.writestr("big.npy", _npy(np.zeros((1 if smoke else 50) * 2**20 // 8)))
    _torch_bomb(root / "model.pt", (10 if smoke else 1024) * 2**20)
    for name, space, kwargs in (
        ("darts", "DartsSpace", {"in_channels": 1, "n_classes": 10, "width": 4096, "cells": 3}),
        ("lease", "LeaseCellSpace", {"in_channels": 1, "n_classes": 10, "width": 4096, "cells": 64,
                                     "nodes": 16, "image_size": 8}),
    ):  # fmt: skip
        record = {"architecture": _default_sample(space, kwargs), "dataset": "digits",
                  "space": {"name": space, "kwargs": kwargs}}  # fmt: skip
        (root / f"{name}.json").write_text(json.dumps(record))
    (root / "flags").mkdir()
    return {
        "torch_deflated": root / "model.pt",
        "arch_darts": root / "darts.json",
        "arch_lease": root / "lease.json",
        "darts_width": root / "flags",
        "cifar_dtype": root / "dtype",
        "cifar_dup": root / "dup",
        "npz_shadow": root / "shadow.npz",
        "npz_raw": root / "raw.npz",
        "skops_nodes": root / "nodes.skops",
    }


def measure(files: dict[str, Path], code: Path) -> dict[str, dict]:
    """Load each file in a fresh process with ``code`` first on the path; the outcome of each."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    rows = {}
    for name, path in files.items():
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, name, str(path)],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        if proc.returncode != 0:
            rows[name] = {"outcome": f"crashed (exit {proc.returncode})", "stderr": proc.stderr[-300:]}
            continue
        outcome, length, message, seconds, growth_mb = eval(proc.stdout.strip().splitlines()[-1])
        rows[name] = {
            "file_bytes": sum(f.stat().st_size for f in ([path] if path.is_file() else path.iterdir())),
            "outcome": outcome,
            "message_chars": length,
            "message": message,
            "seconds": round(seconds, 2),
            "peak_rss_growth_mb": round(growth_mb, 1),
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small files, no results file")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout to measure (default: this one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(write_files(Path(tmp), args.smoke), args.code.resolve())
    for name, row in rows.items():
        print(
            f"{name:12s} {row['outcome']:22s} {row.get('peak_rss_growth_mb', '-'):>8} MB "
            f"{row.get('seconds', '-'):>7} s  message {row.get('message_chars', '-')} chars",
            file=sys.stderr,
        )
    result = {
        "script": "bench_size_bombs",
        "smoke": args.smoke,
        "code": str(args.code),
        "python": platform.python_version(),
        "rows": rows,
    }
    print(json.dumps(result, indent=2))
    if not args.smoke and args.code.resolve() == ROOT:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
