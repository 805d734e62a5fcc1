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
