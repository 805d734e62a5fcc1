import os
import pickle

import numpy as np
import pytest
import torch

from fedsim.data import load_dataset, partition_indices
from fedsim.data.batches import local_batches
from fedsim.data.datasets import CIFAR_FILES, DataFormatError, DataNotFoundError


def test_digits_is_real_and_in_unit_range():
    ds = load_dataset("digits")
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_natural32_classes_and_split():
    ds = load_dataset("natural32")
    assert ds.x_train.shape[1:] == (3, 32, 32)
    assert ds.num_classes == 11 and set(ds.y_train.tolist()) == set(range(11))
    assert len(ds.y_test) > 0
    # no test crop equals a train crop
    d = torch.cdist(ds.x_test.flatten(1), ds.x_train.flatten(1))
    assert d.min() > 1e-3


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_disjoint_cover_and_deterministic(scheme):
    labels = load_dataset("digits").y_train.numpy()
    parts = partition_indices(labels, 5, scheme, 0.5, seed=1)
    flat = np.concatenate(parts)
    assert len(flat) == len(set(flat.tolist())) == len(labels)
    again = partition_indices(labels, 5, scheme, 0.5, seed=1)
    other = partition_indices(labels, 5, scheme, 0.5, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_dirichlet_skew_is_visible():
    labels = load_dataset("digits").y_train.numpy()

    def mean_top_class_share(parts):
        return np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts])

    iid = mean_top_class_share(partition_indices(labels, 5, "iid", 0.1, seed=0))
    skew = mean_top_class_share(partition_indices(labels, 5, "dirichlet", 0.1, seed=0))
    assert iid < 0.2 and skew > 2 * iid


def test_private_batches_are_reproducible():
    part = np.arange(100, 200)
    kw = dict(seed=3, server_round=2, partition_id=1, batch_size=8)
    a = local_batches(part, algorithm="fedsgd", **kw)
    assert len(a) == 1 and len(a[0]) == 8 and set(a[0]) <= set(part)
    assert np.array_equal(a[0], local_batches(part, algorithm="fedsgd", **kw)[0])
    epochs = local_batches(part, algorithm="fedavg", local_epochs=2, **kw)
    assert len(epochs) == 2 * 13 and sorted(np.concatenate(epochs[:13])) == list(part)
    assert len(local_batches(part, algorithm="fedavg", local_steps=5, **kw)) == 5


def _write_tiny_cifar(folder, n=6):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in CIFAR_FILES:
        batch = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, size=n))}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    return batch


def test_cifar_loader_reads_real_format(tmp_path):
    last = _write_tiny_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", root=str(tmp_path))
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
    expected = torch.from_numpy(last[b"data"].reshape(-1, 3, 32, 32).astype(np.float32) / 255)
    assert torch.equal(ds.x_test, expected)
    assert ds.y_test.tolist() == [int(v) for v in last[b"labels"]]


def test_cifar_missing_says_where_to_put_it(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", root=str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and "data_batch_1" in msg and "Unpack" in msg


def test_cifar_loader_refuses_a_pickle_that_would_run_code(tmp_path):
    """A crafted data_batch_1 whose unpickling calls a function: refused, and never run."""
    folder = tmp_path / "cifar-10-batches-py"
    _write_tiny_cifar(folder)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(folder / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": Exploit(), b"labels": [0]}, fh)
    with pytest.raises(DataFormatError, match="posix.system|os.system"):
        load_dataset("cifar10", root=str(folder), seed=11)
    assert not marker.exists()


def test_cifar_loader_names_a_truncated_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_tiny_cifar(folder)
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:50])
    with pytest.raises(DataFormatError, match="test_batch is not a readable CIFAR-10 batch"):
        load_dataset("cifar10", root=str(folder), seed=12)


def test_round_examples_is_what_the_batches_hold():
    """The examples a client reports per round, known without drawing: the one count the
    SecAgg+ weight bound and the client observer's aggregate both use."""
    import numpy as np

    from fedsim.data.batches import local_batches, round_examples

    for n, kwargs in [(37, dict(algorithm="fedavg", batch_size=8, local_steps=7)),
                      (37, dict(algorithm="fedavg", batch_size=8, local_epochs=2)),
                      (5, dict(algorithm="fedsgd", batch_size=8)),
                      (40, dict(algorithm="fedavg", batch_size=8, local_steps=3))]:
        batches = local_batches(np.arange(n), seed=1, server_round=2, partition_id=0, **kwargs)
        assert round_examples(n, **kwargs) == sum(len(b) for b in batches), (n, kwargs)
    poisson = [sum(len(b) for b in local_batches(np.arange(200), seed=s, server_round=1,
                                                 partition_id=0, algorithm="fedavg",
                                                 batch_size=10, local_steps=5,
                                                 sampling="poisson")) for s in range(400)]
    expected = round_examples(200, algorithm="fedavg", batch_size=10, local_steps=5,
                              sampling="poisson")
    assert expected == 50 and abs(np.mean(poisson) - expected) < 4 * np.std(poisson) / 20
