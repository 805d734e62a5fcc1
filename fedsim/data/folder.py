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


def _classes(folder: Path) -> list[str]:
    classes = [p.name for p in _class_dirs(folder)]
    if len(classes) < 2:  # one class: accuracy 1.0 from the start and every gradient zero
        raise DataFolderError(f"data.root: {folder} holds {len(classes)} class folder(s); a "
                              "classification set needs at least 2 (<class>/<image>.png)")
    return classes


def _read_tree(folder: Path, classes: list[str], shape: tuple[int, int, int]):
    channels, height, width = shape
    mode = {1: "L", 3: "RGB"}[channels]
    xs, ys = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in EXTENSIONS)
        if not files:  # a class no client could learn, and a label no image has
            raise DataFolderError(f"data.root: {folder / name} has no images "
                                  f"({', '.join(sorted(EXTENSIONS))}); put images of class "
                                  f"{name!r} there or remove the folder")
        for path in files:
            arr = _read_image(path, mode, (width, height))
            xs.append(arr.reshape(height, width, channels).transpose(2, 0, 1))
            ys.append(label)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64)


def _read_image(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image in [0, 1], converted and resized. PIL's decompression-bomb guard is an
    error from its limit up (PIL only warns below twice the limit, then decodes it all)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img = img.convert(mode).resize(size, Image.BILINEAR)
                return np.asarray(img, dtype=np.float32) / 255.0
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataFolderError(f"data.root: {path} is too large to read: {err} (fedsim "
                              "refuses images above PIL's Image.MAX_IMAGE_PIXELS, "
                              f"{Image.MAX_IMAGE_PIXELS:,}; shrink it first)") from None
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors of a broken file
        raise DataFolderError(f"data.root: {path} is not a readable image ({err})") from None


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
        classes = _classes(base / "train")
        extra = sorted(set(p.name for p in _class_dirs(base / "test")) - set(classes))
        if extra:
            raise DataFolderError(f"data.root: {base / 'test'} has class folders {extra} that "
                                  f"{base / 'train'} lacks; train/ and test/ need the same "
                                  "classes")
        x_tr, y_tr = _read_tree(base / "train", classes, shape)
        x_te, y_te = _read_tree(base / "test", classes, shape)
    else:
        classes = _classes(base)
        x, y = _read_tree(base, classes, shape)
        x_tr, y_tr, x_te, y_te = _stratified_split(x, y, test_fraction, seed)
    return Dataset("folder", x_tr, y_tr, x_te, y_te, len(classes), tuple(classes))


def _stratified_split(x, y, test_fraction: float, seed: int):
    """scikit-learn's stratified split (as digits uses), its refusal as one line."""
    from sklearn.model_selection import train_test_split

    try:
        train, test = train_test_split(np.arange(len(y)), test_size=test_fraction,
                                       random_state=seed, stratify=y.numpy())
    except ValueError as err:
        raise DataFolderError(f"data.root: the images cannot be split by class with "
                              f"data.test_fraction = {test_fraction} ({err}); add images, "
                              "or give train/ and test/ folders") from None
    train, test = torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(test))
    return x[train], y[train], x[test], y[test]
