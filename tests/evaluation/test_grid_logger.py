"""`MixedGridLogger`: grids of the mixed training images a `MixupCallback` produced."""

import matplotlib.image
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_mixup import MixedGridLogger, MixupCallback
from tests.probes import RecordingModule, tensor_loader, tiny_trainer


def test_grid_saved_on_every_nth_epoch_from_the_first_mixed_batch(tmp_path):
    x, y = torch.rand(32, 3, 8, 8), torch.arange(32) % 4
    module = RecordingModule(num_classes=4, in_features=3 * 8 * 8)
    callbacks = [MixupCallback(alpha=1.0, seed=0), MixedGridLogger(every_n_epochs=2)]
    tiny_trainer(max_epochs=3, callbacks=callbacks, default_root_dir=tmp_path).fit(
        module, tensor_loader(x, y, 8)
    )
    saved = sorted(p.name for p in tmp_path.rglob("mixed_grid_epoch*.png"))
    assert saved == ["mixed_grid_epoch0.png", "mixed_grid_epoch2.png"]
    image = matplotlib.image.imread(next(tmp_path.rglob("mixed_grid_epoch0.png")))
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def test_grid_waits_for_a_mixed_batch_and_skips_non_images(tmp_path):
    x, y = torch.rand(32, 3, 8, 8), torch.arange(32) % 4
    module = RecordingModule(num_classes=4, in_features=3 * 8 * 8)
    callbacks = [MixedGridLogger(), MixupCallback(alpha=1.0, ramp_start_epoch=1)]  # any order
    tiny_trainer(max_epochs=2, callbacks=callbacks, default_root_dir=tmp_path).fit(
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
            callbacks=[MixupCallback(), MixedGridLogger()],
            default_root_dir=tmp_path / "flat",
        ).fit(flat, tensor_loader(torch.rand(16, 32), torch.arange(16) % 4, 8))
    assert not list((tmp_path / "flat").rglob("*.png"))


def test_grid_logger_needs_a_mixup_callback(tmp_path):
    module = RecordingModule(num_classes=4, in_features=3 * 8 * 8)
    loader = tensor_loader(torch.rand(16, 3, 8, 8), torch.arange(16) % 4, 8)
    with pytest.raises(ValueError, match="the Trainer has none; add `MixupCallback"):
        tiny_trainer(callbacks=[MixedGridLogger()], default_root_dir=tmp_path).fit(module, loader)


def test_grid_arguments_are_checked():
    with pytest.raises(ValueError, match="`every_n_epochs` must be a positive integer, got 0"):
        MixedGridLogger(every_n_epochs=0)
    with pytest.raises(ValueError, match="`max_images` must be a positive integer, got -1"):
        MixedGridLogger(max_images=-1)


def test_grid_from_several_training_loaders_draws_the_first_mixed_sub_batch(tmp_path):
    class Module(RecordingModule):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch["a"], batch_idx)

    def images():
        return tensor_loader(torch.rand(16, 3, 8, 8), torch.arange(16) % 4, 8)

    module = Module(num_classes=4, in_features=3 * 8 * 8)
    callbacks = [MixupCallback(alpha=1.0, seed=0), MixedGridLogger()]
    tiny_trainer(callbacks=callbacks, default_root_dir=tmp_path).fit(
        module, train_dataloaders={"a": images(), "b": images()}
    )
    assert [p.name for p in tmp_path.rglob("mixed_grid_epoch*.png")] == ["mixed_grid_epoch0.png"]


def test_grid_draws_the_mixed_half_with_keep_clean_and_nothing_for_a_hidden_mix(monkeypatch):
    from lightning_mixup.evaluation import visual

    drawn = []
    monkeypatch.setattr(
        visual, "log_mixed_grid", lambda trainer, x, y, *a, **k: drawn.append((x, y))
    )
    x, y = torch.rand(16, 3, 8, 8), torch.arange(16) % 4
    module = RecordingModule(num_classes=4, in_features=3 * 8 * 8)
    callbacks = [MixupCallback(alpha=1.0, keep_clean=True), MixedGridLogger()]
    tiny_trainer(callbacks=callbacks).fit(module, tensor_loader(x, y, 8))
    (images, targets), first = drawn[0], module.train_records[0]
    assert images.shape[0] == 8 and torch.equal(images, first["x"][8:])
    assert torch.equal(targets, first["y"][8:])

    drawn.clear()
    hidden = [MixupCallback(alpha=1.0, mix_at="layer"), MixedGridLogger()]
    tiny_trainer(callbacks=hidden).fit(
        RecordingModule(num_classes=4, in_features=3 * 8 * 8), tensor_loader(x, y, 8)
    )
    assert drawn == []  # the inputs were not mixed: there is nothing to show


def test_grid_goes_to_the_loggers_folder(tmp_path):
    x, y = torch.rand(16, 3, 8, 8), torch.arange(16) % 4
    module = RecordingModule(num_classes=4, in_features=3 * 8 * 8)
    logger = CSVLogger(tmp_path, name="csv", version=0)
    callbacks = [MixupCallback(alpha=1.0, seed=0), MixedGridLogger()]
    tiny_trainer(callbacks=callbacks, logger=logger, default_root_dir=tmp_path / "root").fit(
        module, tensor_loader(x, y, 8)
    )
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")] == [
        "csv/version_0/mixed_grid_epoch0.png"
    ]


@pytest.mark.slow
def test_grid_under_ddp_when_only_some_processes_mix_the_first_batch(tmp_path):
    # p = 0.5: each process draws its own mixing decisions (with seed 1, rank 1 mixes batch 0 and
    # rank 0 first mixes batch 1, in both epochs), so the processes draw at different batches.
    # The log folder (`trainer.log_dir`, a broadcast under DDP) is read in `setup`, where every
    # process is, so none waits on a broadcast the others never join. Rank 0 alone writes.
    x, y = torch.rand(64, 3, 8, 8), torch.arange(64) % 4
    module = RecordingModule(num_classes=4, in_features=3 * 8 * 8)
    logger = CSVLogger(tmp_path, name="csv", version=0)
    callbacks = [MixupCallback(alpha=1.0, p=0.5, seed=1), MixedGridLogger()]
    trainer = tiny_trainer(
        callbacks=callbacks, logger=logger, devices=2, strategy="ddp_spawn", max_epochs=2
    )
    trainer.fit(module, tensor_loader(x, y, 4))
    saved = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert saved == ["csv/version_0/mixed_grid_epoch0.png", "csv/version_0/mixed_grid_epoch1.png"]


def test_grid_in_loss_mode_draws_the_soft_label_weights_the_loss_uses(monkeypatch):
    from lightning_mixup.evaluation import visual
    from tests.probes import CriterionModule

    drawn = []
    monkeypatch.setattr(
        visual, "log_mixed_grid", lambda trainer, x, y, *a, **k: drawn.append((x, y))
    )
    x, y = torch.rand(16, 3, 8, 8), torch.arange(16) % 4
    module = CriterionModule(num_classes=4, in_features=3 * 8 * 8)
    mixer = MixupCallback(alpha=1.0, keep_clean=True)
    tiny_trainer(callbacks=[mixer, MixedGridLogger()]).fit(module, tensor_loader(x, y, 8))
    (images, rows), first = drawn[0], module.records[0]
    assert first["y"].dtype == torch.int64  # the batch kept its labels
    params = first["params"]
    labels = torch.nn.functional.one_hot(first["y"][8:], 4).float()
    lam = params.lam.float()[:, None]
    torch.testing.assert_close(rows, lam * labels + (1 - lam) * labels[params.partner])
    assert torch.equal(images, first["x"][8:])
