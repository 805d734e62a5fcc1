"""data.name = "folder": your own ImageFolder tree, any size and class count, resized to a
declared shape; a fedsim run on it completes."""

import numpy as np
import pytest
from PIL import Image

from fedsim.data.datasets import DataNotFoundError, load_dataset
from lab.validation import validate
from tests.helpers import tiny_config


def write_tree(root, classes=("circle", "square", "wave"), per_class=8):
    """Images of two sizes (and modes) per class, each class with its own colour cast."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (20, 30) if i % 2 else (48, 40)
            img = rng.random((*size, 3)) * 0.3
            img[..., c] += 0.7
            Image.fromarray((img.clip(0, 1) * 255).astype("uint8")).save(root / name / f"{i}.png")
    return root


def test_a_tree_of_two_sizes_and_three_classes_loads(tmp_path):
    root = write_tree(tmp_path / "tree")
    ds = load_dataset("folder", root=str(root), image_shape=(3, 12, 12), test_fraction=0.25)
    assert ds.class_names == ("circle", "square", "wave") and ds.num_classes == 3
    assert ds.x_train.shape[1:] == (3, 12, 12) and len(ds.y_train) + len(ds.y_test) == 24
    assert sorted(set(ds.y_test.tolist())) == [0, 1, 2]  # stratified: every class tested
    assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0
    grey = load_dataset("folder", root=str(root), image_shape=(1, 9, 7))
    assert grey.x_train.shape[1:] == (1, 9, 7)


def test_a_missing_or_empty_tree_says_what_to_put_where(tmp_path):
    with pytest.raises(DataNotFoundError, match="not a folder: put one sub-folder"):
        load_dataset("folder", root=str(tmp_path / "nowhere"))
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="at least 2"):
        load_dataset("folder", root=str(tmp_path / "one"))


def test_a_run_on_your_own_folder_completes(tmp_path):
    from lab.orchestration.simulation import run_experiment

    root = write_tree(tmp_path / "tree")
    cfg = validate(tiny_config(
        tmp_path, data={"name": "folder", "root": str(root), "image_shape": [3, 16, 16]},
        model={"name": "convnet", "norm": "group", "width": 8},
        federation={"num_clients": 2, "num_rounds": 2, "algorithm": "fedavg",
                    "local_steps": 2, "batch_size": 4, "lr": 0.1},
        attack={"enabled": True, "name": "fedavg_replay", "iterations": 20},
        capture={"rounds": [1]}))
    result = run_experiment(cfg, run_dir=tmp_path / "run")
    assert [r["round"] for r in result.rounds] == [0, 1, 2]
    assert result.attacks and "psnr" in result.attacks[0]
    assert (tmp_path / "run" / "report.html").is_file()


def _check(tmp_path, root, capsys, image_shape=(3, 8, 8)):
    """`fedsim config check` of a folder experiment: (exit status, its stderr)."""
    from fedsim.config import from_dict
    from lab.cli import main

    path = tmp_path / "folder.toml"
    path.write_text(from_dict({"output_dir": str(tmp_path / "runs"), "device": "cpu",
                               "federation": {"batch_size": 2},
                               "data": {"name": "folder", "root": str(root),
                                        "image_shape": list(image_shape)}}).to_toml())
    code = main(["config", "check", str(path)])
    return code, capsys.readouterr().err.strip()


def test_one_class_or_an_empty_class_folder_is_refused_at_config_check(tmp_path, capsys):
    """A set with a single class trains to accuracy 1.0 and makes every gradient zero;
    an empty class folder is a class no client ever sees. Both: one line naming the folder,
    from config check, before any run."""
    split = tmp_path / "split"
    write_tree(split / "train", classes=("only",))
    write_tree(split / "test", classes=("only",))
    code, err = _check(tmp_path, split, capsys)
    assert code == 2 and str(split / "train") in err and "at least 2" in err and "\n" not in err

    flat = write_tree(tmp_path / "flat", classes=("a", "b"))
    (flat / "empty").mkdir()
    code, err = _check(tmp_path, flat, capsys)
    assert code == 2 and str(flat / "empty") in err and "no images" in err and "\n" not in err

    both = tmp_path / "both"
    write_tree(both / "train", classes=("a", "b"))
    write_tree(both / "test", classes=("a",))
    (both / "test" / "b").mkdir()
    code, err = _check(tmp_path, both, capsys)
    assert code == 2 and str(both / "test" / "b") in err and "\n" not in err

    other = tmp_path / "other"
    write_tree(other / "train", classes=("a", "b"))
    write_tree(other / "test", classes=("a", "c"))
    code, err = _check(tmp_path, other, capsys)
    assert code == 2 and str(other / "test") in err and "'c'" in err and "\n" not in err


def _png_header(path, width, height):
    """A PNG that declares width x height RGB pixels (its pixel data is cut off): PIL reads
    the size from the header before decoding anything, as it would of a real one."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [20000, 10000])  # above twice PIL's limit, and above it
def test_an_image_beyond_the_pixel_limit_is_one_line_naming_it(tmp_path, capsys, side):
    """PIL's decompression-bomb guard (an error above twice its limit, only a warning
    above it) is one line naming the file; nothing is decoded."""
    root = write_tree(tmp_path / "tree", classes=("a", "b"), per_class=2)
    bomb = root / "a" / "huge.png"
    _png_header(bomb, side, side)
    code, err = _check(tmp_path, root, capsys)
    assert code == 2 and str(bomb) in err and f"{side * side} pixels" in err and "\n" not in err


def test_a_class_too_small_to_split_is_one_line(tmp_path):
    """scikit-learn's stratified split needs two images of a class; its refusal is one line
    naming data.test_fraction and what to do."""
    from fedsim.data.folder import DataFolderError

    root = write_tree(tmp_path / "tree", per_class=1)
    with pytest.raises(DataFolderError) as err:
        load_dataset("folder", root=str(root), image_shape=(3, 8, 8), test_fraction=0.25)
    assert "data.test_fraction = 0.25" in str(err.value) and "\n" not in str(err.value)
