"""Your own images: an ImageFolder-style tree (one sub-folder per class), any size and any
number of classes, resized to a declared (C, H, W).

    root/cat/001.png, root/dog/xyz.jpg, ...            split by test_fraction, stratified
    root/train/cat/..., root/test/cat/...              the tree's own split

Class names are the sub-folder names in sorted order (as torchvision's ImageFolder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from fedsim.data.datasets import DataNotFoundError  # defined before this module is imported

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_tree(folder: Path, classes: list[str], shape: tuple[int, int, int]):
    from PIL import Image, UnidentifiedImageError

    channels, height, width = shape
    mode = {1: "L", 3: "RGB"}[channels]
    xs, ys = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in EXTENSIONS)
        for path in files:
            try:
                with Image.open(path) as img:
                    img = img.convert(mode).resize((width, height), Image.BILINEAR)
                    arr = np.asarray(img, dtype=np.float32) / 255.0
            except (OSError, UnidentifiedImageError) as err:
                raise DataFolderError(f"data.root: {path} is not a readable image ({err})") from None
            xs.append(arr.reshape(height, width, channels).transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise DataFolderError(f"data.root: no images ({', '.join(sorted(EXTENSIONS))}) under "
                              f"{folder}/<class>/")
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64)


class DataFolderError(DataNotFoundError):
    """The image tree is missing or malformed; the message says what to put where."""


def load_folder(root: Optional[str] = None, seed: int = 0, test_fraction: float = 0.2,
                image_shape: Optional[tuple[int, int, int]] = None, **_):
    from fedsim.data.datasets import DEFAULT_FOLDER_SHAPE, Dataset

    shape = tuple(image_shape or DEFAULT_FOLDER_SHAPE)
    if not root:
        raise DataFolderError("data.name 'folder' needs data.root: a folder with one "
                              "sub-folder of images per class")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataFolderError(f"data.root {str(base)!r} is not a folder: put one sub-folder of "
                              "images per class there (root/<class>/<image>.png)")
    if (base / "train").is_dir() and (base / "test").is_dir():
        classes = [p.name for p in _class_dirs(base / "train")]
        x_tr, y_tr = _read_tree(base / "train", classes, shape)
        x_te, y_te = _read_tree(base / "test", classes, shape)
    else:
        classes = [p.name for p in _class_dirs(base)]
        if len(classes) < 2:
            raise DataFolderError(f"data.root {str(base)!r} holds {len(classes)} class "
                                  "folder(s); a classification set needs at least 2 "
                                  "(root/<class>/<image>.png)")
        x, y = _read_tree(base, classes, shape)
        x_tr, y_tr, x_te, y_te = _stratified_split(x, y, test_fraction, seed)
    return Dataset("folder", x_tr, y_tr, x_te, y_te, len(classes), tuple(classes))


def _stratified_split(x, y, test_fraction: float, seed: int):
    """Per class, a seeded share to the test set (at least one image per class in each
    part when the class has two or more)."""
    rng = np.random.default_rng([seed, 17])
    test = []
    for label in torch.unique(y).tolist():
        idx = np.flatnonzero(y.numpy() == label)
        n_test = min(max(int(round(len(idx) * test_fraction)), 1), len(idx) - 1)
        test.extend(rng.permutation(idx)[:n_test].tolist())
    mask = np.zeros(len(y), dtype=bool)
    mask[test] = True
    keep = torch.from_numpy(~mask)
    return x[keep], y[keep], x[~keep], y[~keep]
