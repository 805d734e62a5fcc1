"""Image classification sets that need no download: digits, natural32, and local CIFAR-10
and Fashion-MNIST folders.

Every loader returns images as float32 in [0, 1] (N, C, H, W) and int64 labels; the
per-channel mean and std travel with the set so models can normalise internally and
attacks and metrics can work in pixel space.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


class DataNotFoundError(FileNotFoundError):
    """A real data set is missing; the message says where to put it."""


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.x_train.mean(dim=(0, 2, 3)).tolist())

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.x_train.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())


def load_dataset(name: str, seed: int = 0, root: Optional[str] = None,
                 test_fraction: float = 0.2, max_train: Optional[int] = None,
                 image_shape: Optional[tuple[int, int, int]] = None) -> Dataset:
    """Load one of the registered sets; cached per process (Ray workers reuse it).
    `image_shape` is the declared (C, H, W) of a folder set (others have their own)."""
    if name not in LOADERS:
        raise ValueError(f"data.name {name!r} is not one of {sorted(LOADERS)}")
    return _load_cached(name, seed, root, test_fraction, max_train,
                        tuple(image_shape) if image_shape else None)


# 8: a sweep validates its cells seed-minor, and 5 seeds cycling through 4 slots missed on
# every cell (45 loads of natural32 for the 45 cells of defense_accuracy_fashion's scale)
@lru_cache(maxsize=8)
def _load_cached(name, seed, root, test_fraction, max_train, image_shape) -> Dataset:
    from fedsim.data.disk_cache import cached

    def build() -> Dataset:
        return LOADERS[name](seed=seed, root=root, test_fraction=test_fraction,
                             image_shape=image_shape)

    # the embedded sets also across processes (fedsim.data.disk_cache)
    ds = cached(name, {"seed": seed, "test_fraction": test_fraction}, build)
    if max_train is not None and max_train < len(ds.y_train):
        keep = torch.from_numpy(np.random.default_rng([seed, 7]).permutation(len(ds.y_train))[:max_train])
        keep = keep.sort().values
        ds = Dataset(ds.name, ds.x_train[keep], ds.y_train[keep], ds.x_test, ds.y_test,
                     ds.num_classes, ds.class_names)
    return ds


# --------------------------------------------------------------------------- digits
def load_digits(seed: int = 0, test_fraction: float = 0.2, **_) -> Dataset:
    """scikit-learn's 1,797 handwritten digits, 8x8 grey, 10 classes; stratified split."""
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Dataset("digits", torch.from_numpy(x_tr), torch.from_numpy(y_tr),
                   torch.from_numpy(x_te), torch.from_numpy(y_te), 10,
                   tuple(str(i) for i in range(10)))


# ------------------------------------------------------------------------ natural32
_TRAIN_CROPS, _TEST_CROPS, _TEST_STRIP, _MIN_STD = 120, 30, 0.3, 0.05


@lru_cache(maxsize=1)
def _source_photos() -> dict[str, np.ndarray]:
    """RGB photos shipped inside scikit-image, scikit-learn and matplotlib wheels (read
    once per process: 2 s here; the crops copy them)."""
    import matplotlib.cbook as cbook
    import matplotlib.image as mimage
    import skimage.data as sk
    from sklearn.datasets import load_sample_images

    photos = {
        "astronaut": sk.astronaut(), "cat": sk.chelsea(), "coffee": sk.coffee(),
        "rocket": sk.rocket(), "hubble": sk.hubble_deep_field(),
        "cells": sk.immunohistochemistry(), "retina": sk.retina(),
        "motorcycle": sk.stereo_motorcycle()[0],
    }
    china, flower = load_sample_images().images
    photos["china"], photos["flower"] = china, flower
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        photos["hopper"] = np.asarray(mimage.imread(fh, format="jpg"))
    return photos


def _crops(photo: np.ndarray, count: int, x_range: tuple[int, int], rng) -> torch.Tensor:
    img = torch.from_numpy(photo[..., :3].copy()).permute(2, 0, 1).float() / 255.0
    h = img.shape[1]
    x0, x1 = x_range
    max_side = min(h, x1 - x0, 256)
    out = []
    while len(out) < count:
        side = int(rng.integers(min(48, max_side), max_side + 1))
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(x0, x1 - side + 1))
        patch = img[:, top:top + side, left:left + side][None]
        if patch.std() < _MIN_STD:  # flat background (black sky, retina border): no content
            continue
        out.append(F.interpolate(patch, size=(32, 32), mode="bilinear", antialias=True,
                                 align_corners=False)[0])
    return torch.stack(out).clamp(0, 1)


def load_natural32(seed: int = 0, **_) -> Dataset:
    """32x32 RGB crops of shipped photos, labelled by photo.

    Test crops come only from the rightmost 30% strip of each photo and train crops only
    from the rest, so no test pixel is ever seen in training.
    """
    photos = _source_photos()
    rng = np.random.default_rng([seed, 32])
    xs_tr, ys_tr, xs_te, ys_te = [], [], [], []
    for label, (_, photo) in enumerate(sorted(photos.items())):
        w = photo.shape[1]
        split = int(w * (1 - _TEST_STRIP))
        xs_tr.append(_crops(photo, _TRAIN_CROPS, (0, split), rng))
        xs_te.append(_crops(photo, _TEST_CROPS, (split, w), rng))
        ys_tr.append(torch.full((_TRAIN_CROPS,), label))
        ys_te.append(torch.full((_TEST_CROPS,), label))
    names = tuple(sorted(photos))
    return Dataset("natural32", torch.cat(xs_tr), torch.cat(ys_tr), torch.cat(xs_te),
                   torch.cat(ys_te), len(names), names)


# -------------------------------------------------------------------------- cifar10
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")


def _cifar_folder(root: Optional[str]) -> Path:
    if not root:
        raise DataNotFoundError("cifar10 needs data.root: the folder holding cifar-10-batches-py")
    base = Path(root).expanduser()
    folder = base if base.name == "cifar-10-batches-py" else base / "cifar-10-batches-py"
    return require_files("CIFAR-10", folder, CIFAR_FILES,
                         f"Unpack the python version of CIFAR-10 (cifar-10-python.tar.gz) into "
                         f"{folder.parent} and run again.")


def require_files(name: str, folder: Path, files, what_to_do: str) -> Path:
    """`folder`, or one line naming the data set, the files missing and what to do."""
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataNotFoundError(f"{name} not found: expected {', '.join(files)} in {folder} "
                                f"(missing: {', '.join(missing)}). {what_to_do}")
    return folder


class DataFormatError(ValueError):
    """A data file is not in the format it claims; nothing in it was run."""


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what the CIFAR-10 python format holds: dicts, lists, bytes, ints and numpy
    arrays. A file that asks for any other class (`os.system`, say) is refused before
    anything in it runs, so a crafted `data_batch_1` cannot execute code."""

    ALLOWED = {(mod, name) for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
               for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataFormatError(f"data.root: {self.path} is not a CIFAR-10 batch: it asks to "
                                  f"load {module}.{name}, which that format never holds "
                                  "(refused; nothing in the file was run)")
        return super().find_class(module, name)

    def __init__(self, fh, path: Path):
        super().__init__(fh, encoding="bytes")
        self.path = path


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as fh:
        try:
            batch = _CifarUnpickler(fh, path).load()
        except DataFormatError:
            raise
        except Exception as err:  # noqa: BLE001 - truncated or foreign file: one clear line
            raise DataFormatError(f"data.root: {path} is not a readable CIFAR-10 batch "
                                  f"({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataFormatError(f"data.root: {path} is not a CIFAR-10 batch (no data/labels)")
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(batch[b"labels"], dtype=np.int64)


def load_cifar10(root: Optional[str] = None, **_) -> Dataset:
    """CIFAR-10 from the standard python-format folder; never downloads."""
    folder = _cifar_folder(root)
    parts = [_read_cifar_batch(folder / f) for f in CIFAR_FILES[:5]]
    x_te, y_te = _read_cifar_batch(folder / "test_batch")
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    to_t = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)  # noqa: E731
    return Dataset("cifar10", to_t(x_tr), torch.from_numpy(y_tr), to_t(x_te),
                   torch.from_numpy(y_te), 10, CIFAR_CLASSES)


from fedsim.data.fashion_mnist import load_fashion_mnist  # noqa: E402 - after the shared
from fedsim.data.folder import load_folder  # noqa: E402 - types they use

LOADERS = {"digits": load_digits, "natural32": load_natural32, "cifar10": load_cifar10,
           "fashion_mnist": load_fashion_mnist, "folder": load_folder}
IMAGE_SHAPES = {"digits": (1, 8, 8), "natural32": (3, 32, 32), "cifar10": (3, 32, 32),
                "fashion_mnist": (1, 28, 28)}
DEFAULT_FOLDER_SHAPE = (3, 32, 32)


def image_shape_of(name: str, declared: Optional[tuple[int, ...]] = None) -> tuple[int, int, int]:
    """The (C, H, W) a set's images have: fixed for the shipped sets, declared for a folder."""
    if name == "folder":
        return tuple(declared) if declared else DEFAULT_FOLDER_SHAPE  # type: ignore[return-value]
    return IMAGE_SHAPES[name]
