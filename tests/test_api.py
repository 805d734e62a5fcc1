"""The README's Python API example runs as written and its reconstruction beats the
batch's mean colour (the bar for these images)."""

import torch

from fedsim.metrics import score_reconstruction
from tests.own_app import example_on_path


def test_the_readme_api_example(tmp_path):
    example_on_path()
    from lab import api
    from shapes_app.facts import FACTS
    from shapes_app.task import Net, first_use_order

    torch.manual_seed(0)
    model = Net()
    images, labels = first_use_order(0, 1, size=4, batch_size=2)
    update = api.client_update(model, images, labels, lr=0.05, batch_size=2, momentum=0.9,
                               weight_decay=5e-4, facts=FACTS)
    result = api.invert(model, update, FACTS, batch_size=len(images), lr=0.05,
                        local_batch_size=2, labels=labels, iterations=300, device="cpu")
    scores = api.score(result.images, images, labels, result.labels)
    grid = api.save_grid(tmp_path / "grid.png", images, result.images, scores["pairing"])
    mean_colour = images.mean(dim=(0, 2, 3), keepdim=True).expand_as(images).clone()
    assert scores["psnr"] > score_reconstruction(images, mean_colour)["psnr"] + 1.0
    assert scores["label_accuracy"] == 1.0 and grid.stat().st_size > 0
    # the gradient route (FedSGD) of one image leaks far more
    grad = api.client_update(model, images[:1], labels[:1], lr=0.05, kind="gradient",
                             facts=FACTS)
    one = api.invert(model, grad, FACTS, kind="gradient", batch_size=1, labels=labels[:1],
                     iterations=300, device="cpu")
    assert api.score(one.images, images[:1])["psnr"] > scores["psnr"]
