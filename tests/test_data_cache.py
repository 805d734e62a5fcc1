"""fedsim.data.disk_cache: an embedded set built once per machine reads back equal, in a
process that then never imports scikit-learn; a damaged file is built again; the key
follows the arguments; `off` turns it off."""

import os
import subprocess
import sys

import torch

from fedsim.data.datasets import load_digits
from fedsim.data.disk_cache import cache_key, cached


def _same(a, b):
    assert all(torch.equal(getattr(a, f), getattr(b, f))
               for f in ("x_train", "y_train", "x_test", "y_test"))
    assert (a.name, a.num_classes, a.class_names) == (b.name, b.num_classes, b.class_names)


def test_a_built_set_reads_back_equal_without_scikit_learn(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSIM_DATA_CACHE", str(tmp_path))
    built = []
    fresh = cached("digits", {"seed": 3, "test_fraction": 0.2},
                   lambda: built.append(1) or load_digits(seed=3))
    again = cached("digits", {"seed": 3, "test_fraction": 0.2},
                   lambda: built.append(1) or load_digits(seed=3))
    assert built == [1] and len(list(tmp_path.glob("digits-*.pt"))) == 1
    _same(fresh, again)
    code = ("import sys; from fedsim.data import load_dataset; "
            "ds = load_dataset('digits', seed=3); "
            "print(len(ds.y_train), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "FEDSIM_DATA_CACHE": str(tmp_path)},
                         check=True).stdout.split()
    assert out == [str(len(fresh.y_train)), "False"]


def test_a_damaged_file_is_built_again_and_the_key_follows_the_arguments(tmp_path,
                                                                         monkeypatch, caplog):
    monkeypatch.setenv("FEDSIM_DATA_CACHE", str(tmp_path))
    args = {"seed": 1, "test_fraction": 0.2}
    first = cached("digits", args, lambda: load_digits(seed=1))
    (path,) = tmp_path.glob("digits-*.pt")
    path.write_bytes(b"not a tensor file")
    with caplog.at_level("WARNING", logger="fedsim"):
        second = cached("digits", args, lambda: load_digits(seed=1))
    assert "does not read back" in caplog.text
    _same(first, second)
    assert torch.load(path, weights_only=True)["y_train"].shape == first.y_train.shape
    assert cache_key("digits", args) != cache_key("digits", {**args, "seed": 2})
    assert cache_key("digits", args) != cache_key("digits", {**args, "test_fraction": 0.3})


def test_off_builds_every_time_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSIM_DATA_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built = []
    for _ in range(2):
        cached("digits", {"seed": 0, "test_fraction": 0.2},
               lambda: built.append(1) or load_digits(seed=0))
    assert built == [1, 1] and not list(tmp_path.rglob("*.pt"))


def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_run(tmp_path, monkeypatch,
                                                                    caplog):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("FEDSIM_DATA_CACHE", str(blocked))
    with caplog.at_level("WARNING", logger="fedsim"):
        ds = cached("digits", {"seed": 0, "test_fraction": 0.2}, lambda: load_digits(seed=0))
    _same(ds, load_digits(seed=0))
    assert caplog.text.count("not written") == 1 and blocked.read_text() == "not a folder"
    assert list(tmp_path.iterdir()) == [blocked]
