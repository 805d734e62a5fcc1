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


def captured_run(tmp_path):
    """A run folder (config.toml) holding one FedSGD capture of a digit: (folder, capture)."""
    from fedsim.capture import save_capture
    from lab.orchestration.inprocess import local_capture

    cfg = tiny_config(tmp_path, federation={"algorithm": "fedsgd", "batch_size": 1})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(cfg.to_toml())
    return run_dir, save_capture(run_dir, local_capture(cfg))


def processes(cmd_has: str = "", env_has: str = "", cmd_starts: str = "") -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose command line contains `cmd_has` and
    starts with `cmd_starts`, and whose environment contains `env_has`: how tests find
    the processes they started (by a temporary folder name of their own)."""
    import os

    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="ignore")
            env = open(f"/proc/{pid}/environ", "rb").read().decode(errors="ignore") if env_has else ""
        except OSError:
            continue
        if cmd_has in cmd and env_has in env and cmd.startswith(cmd_starts):
            found.append((int(pid), cmd.replace("\0", " ")[:120]))
    return found


def start_fedsim_run(cfg, tmp_path, prefix: str):
    """`fedsim run` of `cfg` in its own process group and with its own RAY_TMPDIR:
    (process, run folder, Ray temp folder)."""
    import os
    import subprocess
    import sys
    import tempfile

    path = tmp_path / "exp.toml"
    path.write_text(cfg.to_toml())
    run_dir = tmp_path / "run"
    ray_tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "FEDSIM_INJECT_CLIENT_FAULT"}
    env["RAY_TMPDIR"] = ray_tmp
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "run", str(path), "--run-dir",
                             str(run_dir)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, run_dir, ray_tmp


def wait_for_rows(proc, metrics, rows: int, timeout_s: float = 240) -> bool:
    """Wait until the run has written `rows` metrics rows (or ended, or timed out)."""
    import time

    deadline = time.time() + timeout_s
    while proc.poll() is None and time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= rows:
            return True
        time.sleep(0.1)
    return False


def stop_processes(cmd_has: str, grace_s: float = 5.0) -> None:
    """SIGTERM every process whose command line holds `cmd_has` (a test's own temporary
    folder), then SIGKILL what is left after `grace_s` (Ray's gcs_server ignores SIGTERM)."""
    import os
    import signal
    import time

    deadline = time.time() + grace_s
    while True:
        pids = [pid for pid, _ in processes(cmd_has=cmd_has)]
        if not pids:
            return
        sig = signal.SIGTERM if time.time() < deadline else signal.SIGKILL
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def write_idx(path, array, magic=None):
    """A gzip'd idx file of `array` (unsigned bytes), its magic number overridable."""
    import gzip

    import numpy as np

    dims = array.ndim
    header = (magic or {3: 2051, 1: 2049}[dims]).to_bytes(4, "big")
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_fashion_mnist(folder, train=12, test=4):
    """Fashion-MNIST's four files in `folder`, random images, labels cycling 0-9."""
    import numpy as np

    from fedsim.data.fashion_mnist import FILES

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", train), ("test", test)):
        images, labels = FILES[part]
        write_idx(folder / images, rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / labels, np.arange(n) % 10)
    return folder
