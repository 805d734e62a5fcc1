import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fedsim.metrics import label_accuracy, psnr, rmse, score_reconstruction, ssim
from fedsim.metrics.image import PSNR_CAP


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 32, 32, generator=g)
    b = (a + 0.1 * torch.randn(3, 32, 32, generator=g)).clamp(0, 1)
    return a, b


def test_psnr_ssim_agree_with_scikit_image(pair):
    a, b = pair
    an, bn = a.double().numpy(), b.double().numpy()
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(an, bn, data_range=1.0))
    assert ssim(a, b) == pytest.approx(
        structural_similarity(an, bn, data_range=1.0, channel_axis=0))


def test_identical_images_psnr_capped_rmse_zero(pair):
    a, _ = pair
    assert psnr(a, a) == PSNR_CAP
    assert rmse(a, a) == 0.0
    assert ssim(a, a) == pytest.approx(1.0)


def test_rmse_is_max_normalised(pair):
    a, b = pair
    expected = np.sqrt(((a - b) ** 2).mean().item()) / a.max().item()
    assert rmse(a, b) == pytest.approx(expected, rel=1e-6)


def test_permuted_batch_scores_as_well_as_ordered():
    g = torch.Generator().manual_seed(1)
    originals = torch.rand(5, 1, 8, 8, generator=g)
    recon = (originals + 0.05 * torch.randn(originals.shape, generator=g)).clamp(0, 1)
    perm = torch.tensor([3, 0, 4, 1, 2])
    ordered = score_reconstruction(originals, recon)
    permuted = score_reconstruction(originals, recon[perm])
    assert permuted["psnr"] == pytest.approx(ordered["psnr"])
    assert permuted["ssim"] == pytest.approx(ordered["ssim"])
    assert [int(perm[j]) for j in permuted["pairing"]] == [0, 1, 2, 3, 4]


def test_label_accuracy_is_order_free():
    assert label_accuracy(torch.tensor([1, 1, 2]), torch.tensor([2, 1, 1])) == 1.0
    assert label_accuracy(torch.tensor([1, 1, 2]), torch.tensor([1, 2, 2])) == pytest.approx(2 / 3)


def test_a_reconstruction_with_nan_is_refused_by_name_not_by_scipy():
    """A diverged attack returns NaN pixels: the matching names the reconstruction in one
    line instead of scipy's `matrix contains invalid numeric entries`."""
    g = torch.Generator().manual_seed(2)
    originals = torch.rand(3, 1, 8, 8, generator=g)
    recon = originals.clone()
    recon[1, 0, 2, 2] = float("nan")
    for match_on in ("psnr", "ssim", "rmse"):
        with pytest.raises(ValueError) as err:
            score_reconstruction(originals, recon, match_on=match_on)
        message = str(err.value)
        assert "reconstruction 1" in message and "NaN" in message and "\n" not in message
        assert "invalid numeric entries" not in message
    with pytest.raises(ValueError, match="lpips of original 0 and reconstruction 0 is nan"):
        score_reconstruction(originals, originals, match_on="lpips",
                             lpips_fn=lambda o, r: float("nan"))  # finite images, NaN score


def test_a_diverged_attack_is_a_failed_attack_with_its_cause(tmp_path, monkeypatch):
    """Through the run's own path (attack_one): a leakage row with the error, no crash."""
    import json

    from attacker.attacks import ATTACKS
    from fedsim.capture import save_capture
    from lab.orchestration.attacks import attack_one
    from lab.orchestration.inprocess import local_capture
    from tests.helpers import tiny_config

    cfg = tiny_config(tmp_path, federation={"algorithm": "fedsgd", "batch_size": 2},
                      attack={"name": "inverting_gradients", "iterations": 2})
    run_dir = tmp_path / "run"
    path = save_capture(run_dir, local_capture(cfg))
    attack_cls = ATTACKS["inverting_gradients"]
    real_run = attack_cls.run

    def diverged(self, *args, **kwargs):
        result = real_run(self, *args, **kwargs)
        result.images = torch.full_like(result.images, float("nan"))
        return result

    monkeypatch.setattr(attack_cls, "run", diverged)
    row = attack_one(cfg, "server", 1, 0, path, run_dir)
    assert "NaN" in row["error"] and "invalid numeric entries" not in row["error"]
    rows = [json.loads(line) for line in (run_dir / "leakage.jsonl").read_text().splitlines()]
    assert rows == [row]
