"""data.name = "fashion_mnist": the standard gzip'd idx files, read with numpy and checked
(magic number, dimensions against length, images against labels), one line for each fault;
the real files when Debian's dataset-fashion-mnist is installed."""

import gzip

import numpy as np
import pytest

from fedsim.data.datasets import DataFormatError, DataNotFoundError, load_dataset
from fedsim.data.fashion_mnist import DEFAULT_ROOT, FILES, load_fashion_mnist
from tests.helpers import write_idx as _idx, write_fashion_mnist as write_set


def test_small_idx_files_load_in_pixel_range(tmp_path):
    ds = load_fashion_mnist(root=str(write_set(tmp_path / "f")))
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (4, 1, 28, 28)
    assert ds.y_train.tolist() == [i % 10 for i in range(12)] and ds.num_classes == 10
    assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0
    raw = gzip.decompress((tmp_path / "f" / FILES["train"][0]).read_bytes())
    assert float(ds.x_train[0, 0, 0, 0]) == pytest.approx(raw[16] / 255.0)  # first pixel


def test_a_missing_file_names_the_folder_and_the_debian_package(tmp_path):
    folder = write_set(tmp_path / "f")
    (folder / FILES["test"][1]).unlink()
    with pytest.raises(DataNotFoundError) as err:
        load_fashion_mnist(root=str(folder))
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and str(folder) in message
    assert "dataset-fashion-mnist" in message and "\n" not in message


@pytest.mark.parametrize("damage, needle", [
    ("magic", "magic number 2049, expected 2051"),
    ("truncated", "truncated or damaged"),
    ("count", "holds 12 images but"),
    ("not gzip", "not a readable gzip'd idx file"),
])
def test_a_damaged_file_is_one_line(tmp_path, damage, needle):
    folder = write_set(tmp_path / "f")
    images, labels = (folder / n for n in FILES["train"])
    if damage == "magic":
        _idx(images, np.zeros((12, 28, 28)), magic=2049)
    elif damage == "truncated":
        raw = gzip.decompress(images.read_bytes())
        images.write_bytes(gzip.compress(raw[:-100]))
    elif damage == "count":
        _idx(labels, np.arange(11) % 10)
    else:
        images.write_bytes(b"not a gzip file")
    with pytest.raises(DataFormatError) as err:
        load_fashion_mnist(root=str(folder))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_run_config_on_it_validates(tmp_path):
    from tests.helpers import tiny_config

    cfg = tiny_config(tmp_path, data={"name": "fashion_mnist",
                                      "root": str(write_set(tmp_path / "f", train=40))})
    from lab.validation import validate

    validate(cfg)
    assert cfg.data.shape == (1, 28, 28)


@pytest.mark.skipif(not (DEFAULT_ROOT / FILES["train"][0]).is_file(),
                    reason=f"Fashion-MNIST is not installed in {DEFAULT_ROOT} (apt-get install "
                           "dataset-fashion-mnist)")
def test_the_real_files_when_installed():
    ds = load_dataset("fashion_mnist", max_train=1000)
    assert len(ds.y_train) == 1000 and ds.x_test.shape == (10000, 1, 28, 28)
    assert sorted(set(ds.y_test.tolist())) == list(range(10))
    assert np.bincount(ds.y_test.numpy()).tolist() == [1000] * 10  # the standard test split
