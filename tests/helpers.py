"""Small builders shared by tests."""

from fedsim.config import from_dict
from lab.validation import check_registries


def tiny_config(tmp_path, **sections):
    """A digits / LeNet config writing into tmp_path; sections override defaults."""
    base = {
        "name": "t", "seed": 0, "device": "cpu", "threads": 1, "output_dir": str(tmp_path),
        "data": {"name": "digits"}, "model": {"name": "lenet"},
        "federation": {"num_clients": 2, "num_rounds": 1, "algorithm": "fedavg", "lr": 0.5,
                       "batch_size": 16},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return check_registries(from_dict(base))
