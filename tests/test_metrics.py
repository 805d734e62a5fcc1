import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fedsim.metrics import (LPIPSUnavailable, label_accuracy, lpips_metric, psnr, rmse,
                            score_reconstruction, ssim)
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


def test_lpips_plumbing_with_random_backbone(pair):
    a, b = pair
    fn = lpips_metric("alex", random_backbone=True)
    assert fn(a, a) == pytest.approx(0.0, abs=1e-6)
    assert fn(a, b) > 0
    grey = torch.rand(1, 8, 8)
    assert fn(grey, grey) == pytest.approx(0.0, abs=1e-6)  # grey and tiny images are handled


def test_lpips_without_weights_is_unavailable_not_random(tmp_path, monkeypatch):
    from fedsim.metrics import lpips_metric as lm
    from fedsim.metrics.lpips_metric import _model

    _model.cache_clear()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(LPIPSUnavailable) as err:
        lm("vgg")
    assert "vgg16-397923af.pth" in str(err.value) and str(tmp_path / "hub" / "checkpoints") in str(err.value)
    _model.cache_clear()


def test_lpips_loads_backbone_from_local_cache(tmp_path, monkeypatch, pair):
    """A file with torchvision's name in the hub cache is used, with no download."""
    import torchvision

    from fedsim.metrics.lpips_metric import _model

    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), ckpt / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _model.cache_clear()
    try:
        fn = lpips_metric("alex")
        a, b = pair
        assert fn(a, a) == pytest.approx(0.0, abs=1e-6) and fn(a, b) > 0
    finally:
        _model.cache_clear()
