"""Fashion-MNIST from its standard gzip'd idx files (70,000 real 28x28 grey images of 10
kinds of clothing), read with numpy; never downloaded.

Debian ships them: `apt-get install dataset-fashion-mnist` puts the four files in
/usr/share/datasets/fashion-mnist/, the default folder; `data.root` points elsewhere. A
file is checked before use: its magic number (2051 images, 2049 labels), its dimensions
against its length, and the images against the labels.
"""

from __future__ import annotations

import gzip
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from fedsim.data.datasets import DataFormatError, Dataset, require_files

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")
MAGIC = {3: 2051, 1: 2049}  # idx magic number by dimensions: unsigned bytes, 3-d or 1-d


def fashion_mnist_folder(root: Optional[str]) -> Path:
    """The folder with the four files, or one line naming it and the Debian package."""
    folder = Path(root).expanduser() if root else DEFAULT_ROOT
    return require_files("Fashion-MNIST", folder, [n for pair in FILES.values() for n in pair],
                         f"Install Debian's package (apt-get install dataset-fashion-mnist, "
                         f"which puts them in {DEFAULT_ROOT}) or set data.root to the folder "
                         "holding them")


def read_idx(path: Path, dims: int) -> np.ndarray:
    """An idx file of unsigned bytes with `dims` dimensions, its header checked."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as err:
        raise DataFormatError(f"data.root: {path} is not a readable gzip'd idx file "
                              f"({type(err).__name__}: {err})") from None
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataFormatError(f"data.root: {path} is shorter than an idx header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != MAGIC[dims]:
        raise DataFormatError(f"data.root: {path} has idx magic number {magic}, expected "
                              f"{MAGIC[dims]} (unsigned bytes, {dims} dimension(s))")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataFormatError(f"data.root: {path} holds {len(raw) - header} bytes of data, its "
                              f"header says {shape} ({expected} bytes): truncated or damaged")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _split(folder: Path, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_file, labels_file = (folder / n for n in FILES[part])
    images, labels = read_idx(images_file, 3), read_idx(labels_file, 1)
    if len(images) != len(labels):
        raise DataFormatError(f"data.root: {images_file} holds {len(images)} images but "
                              f"{labels_file} {len(labels)} labels")
    if labels.max(initial=0) >= len(CLASSES):
        raise DataFormatError(f"data.root: {labels_file} has label {labels.max()}, outside "
                              f"0..{len(CLASSES) - 1}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    return x, torch.from_numpy(labels.astype(np.int64))


@lru_cache(maxsize=1)
def _read_folder(folder: Path, signature: tuple) -> tuple:
    """Both splits, read once per process for the same files (their sizes and times in
    `signature`): the split does not depend on the seed, and a sweep validating 45 cells
    of 5 seeds decompressed the 30 MB 45 times (43 s)."""
    return _split(folder, "train"), _split(folder, "test")


def load_fashion_mnist(root: Optional[str] = None, **_) -> Dataset:
    """The standard 60,000 / 10,000 split (`data.max_train` subsamples the training set)."""
    folder = fashion_mnist_folder(root)
    stats = [(folder / n).stat() for pair in FILES.values() for n in sorted(pair)]
    signature = tuple((st.st_size, st.st_mtime_ns) for st in stats)
    (x_tr, y_tr), (x_te, y_te) = _read_folder(folder.resolve(), signature)
    return Dataset("fashion_mnist", x_tr, y_tr, x_te, y_te, len(CLASSES), CLASSES)
