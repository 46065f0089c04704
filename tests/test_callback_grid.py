"""`MixupCallback(save_grid_every_n_epochs=N)`: grids of mixed training images."""

import matplotlib.image
import pytest
import torch

from lightning_mixup import MixupCallback
from tests.probes import RecordingModule, tensor_loader, tiny_trainer


def test_grid_saved_on_every_nth_epoch_from_the_first_mixed_batch(tmp_path):
    x, y = torch.rand(32, 3, 8, 8), torch.arange(32) % 4
    module = RecordingModule(num_classes=4, in_features=3 * 8 * 8)
    cb = MixupCallback(alpha=1.0, save_grid_every_n_epochs=2, seed=0)
    tiny_trainer(max_epochs=3, callbacks=[cb], default_root_dir=tmp_path).fit(
        module, tensor_loader(x, y, 8)
    )
    saved = sorted(p.name for p in tmp_path.rglob("mixed_grid_epoch*.png"))
    assert saved == ["mixed_grid_epoch0.png", "mixed_grid_epoch2.png"]
    image = matplotlib.image.imread(next(tmp_path.rglob("mixed_grid_epoch0.png")))
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def test_grid_waits_for_a_mixed_batch_and_skips_non_images(tmp_path):
    x, y = torch.rand(32, 3, 8, 8), torch.arange(32) % 4
    module = RecordingModule(num_classes=4, in_features=3 * 8 * 8)
    cb = MixupCallback(alpha=1.0, ramp_start_epoch=1, save_grid_every_n_epochs=1)
    tiny_trainer(max_epochs=2, callbacks=[cb], default_root_dir=tmp_path).fit(
        module, tensor_loader(x, y, 8)
    )
    assert sorted(p.name for p in tmp_path.rglob("mixed_grid_epoch*.png")) == [
        "mixed_grid_epoch1.png"
    ]

    flat = RecordingModule(num_classes=4, in_features=32)
    with pytest.warns(
        UserWarning, match=r"draws image batches \(B, C, H, W\) with 1 or 3 channels.*\(8, 32\)"
    ):
        tiny_trainer(
            callbacks=[MixupCallback(save_grid_every_n_epochs=1)],
            default_root_dir=tmp_path / "flat",
        ).fit(flat, tensor_loader(torch.rand(16, 32), torch.arange(16) % 4, 8))
    assert not list((tmp_path / "flat").rglob("*.png"))


def test_grid_argument_is_checked():
    with pytest.raises(
        ValueError, match="`save_grid_every_n_epochs` must be an integer >= 1, got 0"
    ):
        MixupCallback(save_grid_every_n_epochs=0)
