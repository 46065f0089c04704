from collections import namedtuple

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import SingleDeviceStrategy

from lightning_mixup import MixupCallback
from tests.probes import RecordingModule, loader, tensor_loader, tiny_trainer


def decode(record):
    """Check every sample of a recorded batch is λ·x_i + (1-λ)·x_j; return the λ's and whether mixed."""
    x, y = record["x"], record["y"]
    assert y.dtype == torch.float32 and y.ndim == 2
    torch.testing.assert_close(y.sum(1), torch.ones(len(y)))
    lams = []
    for row, target in zip(x, y):
        nz = target.nonzero().flatten().tolist()
        assert len(nz) in (1, 2)
        expected = sum(target[k].item() * k for k in nz)
        torch.testing.assert_close(row, torch.full_like(row, expected))
        lams.append(target.max().item())
    return lams


def mixed_fraction(records, epoch):
    batches = [r for r in records if r["epoch"] == epoch]
    return sum(any(v < 1 for v in decode(r)) for r in batches) / len(batches)


# ----------------------------------------------------------------------------- basic behaviour
def test_training_batches_are_mixed_and_validation_batches_are_not():
    module = RecordingModule()
    cb = MixupCallback(alpha=1.0, seed=1)
    trainer = tiny_trainer(max_epochs=2, callbacks=[cb], num_sanity_val_steps=1)
    trainer.fit(module, loader(16, 4), loader(8, 4))
    assert len(module.train_records) == 8
    assert all(mixed_fraction(module.train_records, e) == 1.0 for e in (0, 1))
    for rec in module.val_records:  # validation (and the sanity check) see raw data
        assert rec["y"].dtype == torch.int64
        assert torch.equal(rec["x"][:, 0, 0, 0], rec["y"].float())
    assert "mixup/strength" in trainer.callback_metrics
    assert trainer.callback_metrics["mixup/strength"].item() == 1.0
    assert trainer.callback_metrics["mixup/lambda_mean"].item() < 1.0


def test_test_and_predict_batches_are_untouched():
    module = RecordingModule()
    trainer = tiny_trainer(callbacks=[MixupCallback(alpha=1.0)])
    trainer.validate(module, loader(8, 4))
    assert all(r["y"].dtype == torch.int64 for r in module.val_records)


@pytest.mark.parametrize("batch_size", [1, 3, 4])
@pytest.mark.parametrize("as_dict", [False, True])
def test_list_and_dict_batches_any_size(batch_size, as_dict):
    keys = {"input_key": "image", "target_key": "label"} if as_dict else {}
    module = RecordingModule(**keys)
    cb = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem", **keys)
    tiny_trainer(callbacks=[cb]).fit(module, loader(9, batch_size, as_dict=as_dict))
    assert len(module.train_records) == -(-9 // batch_size)
    for rec in module.train_records:
        x, y = rec["x"], rec["y"]
        assert y.shape == (len(x), 16) and y.dtype == torch.float32
        torch.testing.assert_close(y.sum(1), torch.ones(len(y)))
        for row, target in zip(x, y):
            sources = {float(k) for k in target.nonzero().flatten().tolist()}
            if set(row.unique().tolist()) <= sources:  # CutMix (or untouched): copied pixels
                for k in sources:
                    assert (row == k).float().mean().item() == pytest.approx(target[int(k)].item())
            else:  # MixUp: one blended value
                blend = sum(target[int(k)].item() * k for k in sources)
                torch.testing.assert_close(row, torch.full_like(row, blend))
        if len(x) == 1:
            assert y[0].max().item() == 1.0


def test_mixup_batches_decode_exactly_at_odd_and_even_sizes():
    for batch_size in (1, 5, 6):
        module = RecordingModule(num_classes=18)
        trainer = tiny_trainer(callbacks=[MixupCallback(alpha=1.0, mode="elem")])
        trainer.fit(module, loader(18, batch_size))
        for rec in module.train_records:
            lams = decode(rec)
            if batch_size == 1:
                assert lams == [1.0]
            else:
                assert sum(v < 1 for v in lams) >= len(lams) - 1


def test_cutmix_targets_equal_area_fractions_in_trainer():
    module = RecordingModule()
    tiny_trainer(callbacks=[MixupCallback(alpha=0.0, cutmix_alpha=1.0, mode="elem", seed=3)]).fit(
        module, loader(16, 8)
    )
    for rec in module.train_records:
        for row, target in zip(rec["x"], rec["y"]):
            for k in target.nonzero().flatten().tolist():
                assert (row == k).float().mean().item() == pytest.approx(target[k].item(), abs=1e-6)


def test_label_smoothing_applied_once_before_mixing():
    module = RecordingModule(num_classes=4)
    x, y = torch.randn(8, 32), torch.arange(8) % 4
    tiny_trainer(callbacks=[MixupCallback(alpha=1.0, p=0.0, label_smoothing=0.2)]).fit(
        module, tensor_loader(x, y)
    )
    target = module.train_records[0]["y"]
    assert target.max().item() == pytest.approx(0.8 + 0.05)
    assert target.min().item() == pytest.approx(0.05)


def test_global_rng_is_not_used():
    class Snapshot(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            pl_module.rng_before = torch.get_rng_state()
            pl_module.np_before = np.random.get_state()[1].copy()

    class Checking(RecordingModule):
        def training_step(self, batch, batch_idx):
            assert torch.equal(self.rng_before, torch.get_rng_state())
            assert np.array_equal(self.np_before, np.random.get_state()[1])
            self.checked = getattr(self, "checked", 0) + 1
            return super().training_step(batch, batch_idx)

    module = Checking()
    tiny_trainer(callbacks=[Snapshot(), MixupCallback(alpha=1.0, cutmix_alpha=1.0)]).fit(
        module, loader(16, 4)
    )
    assert module.checked == 4


# ----------------------------------------------------------------------------- schedule
def test_ramp_fraction_of_mixed_batches_per_epoch():
    module = RecordingModule(num_classes=80)
    cb = MixupCallback(alpha=1.0, ramp_start_epoch=1, ramp_epochs=2, stop_epoch=4, seed=0)
    tiny_trainer(max_epochs=5, callbacks=[cb]).fit(module, loader(16 * 5, 2))
    fractions = [mixed_fraction(module.train_records, e) for e in range(5)]
    assert fractions[0] == 0.0
    assert 0.0 < fractions[1] < fractions[2] < 1.0
    assert fractions[1] == pytest.approx(0.25, abs=0.2)  # mean strength over epoch 1 is 0.25
    assert fractions[2] == pytest.approx(0.75, abs=0.2)
    assert fractions[3] == 1.0
    assert fractions[4] == 0.0


def test_strength_is_fractional_and_ramps_alpha():
    cb = MixupCallback(ramp_start_epoch=2, ramp_epochs=4, ramp_shape="linear", stop_epoch=8)
    assert cb.strength(1, 5, 10) == 0.0
    assert cb.strength(3, 5, 10) == pytest.approx(0.375)
    assert cb.strength(7, 9, 10) == 1.0
    assert cb.strength(8, 0, 10) == 0.0
    module = RecordingModule(num_classes=64)
    alpha_ramp = MixupCallback(alpha=1.0, ramp_epochs=2, ramp_target="alpha", mode="elem", seed=0)
    tiny_trainer(max_epochs=3, callbacks=[alpha_ramp]).fit(module, loader(64, 16))
    spread = []
    for epoch in range(3):
        lams = [v for r in module.train_records if r["epoch"] == epoch for v in decode(r)]
        spread.append(sum(min(v, 1 - v) for v in lams) / len(lams))  # 0 when λ sits at 0 or 1
    assert spread[0] < spread[1] < spread[2] + 0.05
    assert spread[0] < 0.15 and spread[2] > 0.2


# ----------------------------------------------------------------------------- reproducibility
def run_records(seed, epochs=2, **kw):
    module = RecordingModule()
    cb = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem", seed=seed, **kw)
    tiny_trainer(max_epochs=epochs, callbacks=[cb]).fit(module, loader(16, 4))
    return module.train_records


def same(a, b):
    return len(a) == len(b) and all(
        torch.equal(r["x"], s["x"]) and torch.equal(r["y"], s["y"]) for r, s in zip(a, b)
    )


def test_same_seed_same_run_other_seed_other_run():
    assert same(run_records(5), run_records(5))
    assert not same(run_records(5), run_records(6))


def test_seed_comes_from_seed_everything(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # restored to its prior state afterwards
    pl.seed_everything(11)
    a = run_records(None)
    pl.seed_everything(11)
    b = run_records(None)
    assert same(a, b) and same(a, run_records(11))
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert same(run_records(None), run_records(0))


def test_resume_from_checkpoint_mixes_exactly_as_uninterrupted(tmp_path, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    full = RecordingModule()
    cb = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem", ramp_epochs=3)
    tiny_trainer(max_epochs=4, callbacks=[cb]).fit(full, loader(16, 4, shuffle=False))

    first = RecordingModule()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    cb1 = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem", ramp_epochs=3)
    tiny_trainer(max_epochs=2, callbacks=[cb1, ckpt], enable_checkpointing=True).fit(
        first, loader(16, 4)
    )
    monkeypatch.delenv("PL_GLOBAL_SEED")  # the resumed half must take the seed from the checkpoint
    second = RecordingModule()
    cb2 = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem", ramp_epochs=3)
    tiny_trainer(max_epochs=4, callbacks=[cb2]).fit(
        second, loader(16, 4), ckpt_path=tmp_path / "last.ckpt"
    )
    assert [r["epoch"] for r in second.train_records] == [2] * 4 + [3] * 4
    assert same(first.train_records + second.train_records, full.train_records)


class LateRestore(SingleDeviceStrategy):
    """Restores the checkpoint after ``on_fit_start``, as FSDP, DeepSpeed and ModelParallel do."""

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True


@pytest.mark.parametrize("strategy", ["auto", "late"])
def test_resume_takes_the_stored_seed_whenever_the_strategy_restores(
    tmp_path, monkeypatch, strategy
):
    def late():
        return "auto" if strategy == "auto" else LateRestore(torch.device("cpu"))

    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    full = RecordingModule()
    cb = MixupCallback(alpha=1.0, mode="elem")
    tiny_trainer(max_epochs=2, callbacks=[cb], strategy=late()).fit(
        full, loader(8, 4, shuffle=False)
    )
    first = RecordingModule()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    cb1 = MixupCallback(alpha=1.0, mode="elem")
    trainer = tiny_trainer(
        max_epochs=1, callbacks=[cb1, ckpt], enable_checkpointing=True, strategy=late()
    )
    trainer.fit(first, loader(8, 4, shuffle=False))
    monkeypatch.setenv("PL_GLOBAL_SEED", "8")  # the resumed half must take the stored seed, 7
    second = RecordingModule()
    cb2 = MixupCallback(alpha=1.0, mode="elem")
    trainer = tiny_trainer(max_epochs=2, callbacks=[cb2], strategy=late())
    trainer.fit(second, loader(8, 4, shuffle=False), ckpt_path=tmp_path / "last.ckpt")
    assert same(first.train_records + second.train_records, full.train_records)
    # A later fit of the same Trainer without a checkpoint draws from its own seed again.
    third = RecordingModule()
    trainer.fit_loop.max_epochs = 3
    trainer.fit(third, loader(8, 4, shuffle=False))
    assert cb2._seed == 8


def test_two_callbacks_keep_separate_state_and_draws(tmp_path):
    out = MixupCallback(alpha=1.0, stop_epoch=1)
    cut = MixupCallback(alpha=0.0, cutmix_alpha=1.0, ramp_start_epoch=1, name="cutmix")
    assert out.state_key != cut.state_key
    module = RecordingModule()
    trainer = tiny_trainer(max_epochs=2, callbacks=[out, cut], default_root_dir=tmp_path)
    trainer.fit(module, loader(16, 4))
    assert mixed_fraction(module.train_records, 0) == 1.0  # MixUp only: decodes as blends
    for rec in (r for r in module.train_records if r["epoch"] == 1):  # CutMix only: pixels copied
        for row, target in zip(rec["x"], rec["y"]):
            assert set(row.unique().tolist()) <= {
                float(k) for k in target.nonzero().flatten().tolist()
            }
    assert (
        "mixup/strength" in trainer.callback_metrics
        and "mixup_1/strength" in trainer.callback_metrics
    )


# ----------------------------------------------------------------------------- num_classes
class NoClasses(RecordingModule):
    def __init__(self):
        super().__init__()
        del self.num_classes


def test_num_classes_from_argument_module_and_datamodule():
    module = NoClasses()
    with pytest.raises(ValueError, match=r"could not find `num_classes`.*pl_module.num_classes"):
        tiny_trainer(callbacks=[MixupCallback()]).fit(module, loader(8, 4))
    module = NoClasses()
    tiny_trainer(callbacks=[MixupCallback(num_classes=16)]).fit(module, loader(8, 4))
    assert module.train_records[0]["y"].shape == (4, 16)

    class DM(pl.LightningDataModule):
        num_classes = 16

        def train_dataloader(self):
            return loader(8, 4)

    module = NoClasses()
    tiny_trainer(callbacks=[MixupCallback()]).fit(module, datamodule=DM())
    assert module.train_records[0]["y"].shape == (4, 16)


# ----------------------------------------------------------------------------- bad input
Pair = namedtuple("Pair", "x y")


class BatchAs(RecordingModule):
    """Hands the callback a batch of an unsupported type through a collate function."""


def fit_with_batch(batch, cb=None, **module_kw):
    class OneBatch(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return 0

    dl = torch.utils.data.DataLoader(OneBatch(), batch_size=1, collate_fn=lambda _: batch)
    tiny_trainer(callbacks=[cb or MixupCallback()]).fit(RecordingModule(**module_kw), dl)


@pytest.mark.parametrize(
    ("batch", "error", "match"),
    [
        ((torch.zeros(2, 32), torch.zeros(2, dtype=torch.long)), TypeError, "must be a list or a dict, got tuple"),
        (Pair(torch.zeros(2, 32), torch.zeros(2, dtype=torch.long)), TypeError, "got Pair.*Return a list"),
        (torch.zeros(2, 32), TypeError, "must be a list or a dict, got Tensor"),
        ([torch.zeros(2, 32)], ValueError, r"`target_key` = 1 is not in the batch \(it has 1 elements\)"),
        ({"x": torch.zeros(2, 32)}, ValueError, r"`target_key` is None, .*found none; the batch has the keys \['x'\]"),
        ({"x": torch.zeros(2, 32), "y": torch.zeros(2, dtype=torch.long), "label": torch.zeros(2, dtype=torch.long)},
         ValueError, r"`target_key` is None, .*found several \('label', 'y'\)"),
        ([torch.zeros(2, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long)], TypeError,
         r"must be floating point to be mixed, got dtype torch.uint8.*x.float\(\) / 255"),
        ([torch.zeros(2, 32), torch.tensor([0, 16])], ValueError, r"\[0, 16\), got values \[16\]"),
        ([torch.zeros(2, 32), torch.zeros(2, 5)], ValueError, r"`num_classes` = 16 columns, got shape \(2, 5\)"),
        ([torch.zeros(2, 32), torch.zeros(3, dtype=torch.long)], ValueError, "must share the batch dimension"),
        ([torch.zeros(2, 32), [0, 1]], TypeError, r"`batch\[1\]` must be a tensor, got list"),
    ],
)  # fmt: skip
def test_bad_batches_raise_before_any_training_step(batch, error, match):
    with pytest.raises(error, match=match):
        fit_with_batch(batch)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -0.5}, r"`alpha` must be a number >= 0, got -0.5"),
        ({"cutmix_alpha": -1}, r"`cutmix_alpha` must be a number >= 0, got -1"),
        ({"alpha": 0, "cutmix_alpha": 0}, "are both 0, so nothing would be mixed"),
        ({"p": 1.5}, r"`p` must be a number in \[0, 1\], got 1.5"),
        ({"switch_prob": -0.1}, r"`switch_prob` must be a number in \[0, 1\], got -0.1"),
        ({"label_smoothing": 2}, r"`label_smoothing` must be a number in \[0, 1\], got 2"),
        ({"alpha": True}, "`alpha` must be a number >= 0, got True"),
        ({"alpha": float("inf")}, "`alpha` must be a number >= 0, got inf"),
        ({"p": float("nan")}, r"`p` must be a number in \[0, 1\], got nan"),
        ({"ramp_epochs": -1}, "`ramp_epochs` must be an integer >= 0, got -1"),
        ({"ramp_start_epoch": -2}, "`ramp_start_epoch` must be an integer >= 0, got -2"),
        (
            {"ramp_start_epoch": 3, "stop_epoch": 3},
            "`stop_epoch` must be after `ramp_start_epoch` = 3, got 3",
        ),
        ({"stop_epoch": -1}, "`stop_epoch` must be an integer >= 0, got -1"),
        ({"mode": "pixel"}, r"`mode` must be one of \('batch', 'elem'\), got 'pixel'"),
        ({"ramp_shape": "step"}, r"`ramp_shape` must be one of \('linear', 'cosine'\), got 'step'"),
        ({"ramp_target": "lam"}, r"`ramp_target` must be one of \('p', 'alpha'\), got 'lam'"),
        ({"num_classes": 0}, "`num_classes` must be an integer >= 1, got 0"),
        ({"seed": 1.5}, "`seed` must be an integer or None, got 1.5"),
        ({"input_key": 1.0}, "`input_key` must be None, a list index or a dict key, got 1.0"),
        ({"same_on_all_ranks": "false"}, "`same_on_all_ranks` must be True or False, got 'false'"),
        ({"skip_nonfinite": "no"}, "`skip_nonfinite` must be True or False, got 'no'"),
    ],
)
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixupCallback(**kwargs)


def test_ints_accepted_where_floats_are_meant():
    cb = MixupCallback(alpha=1, cutmix_alpha=1, p=1, switch_prob=0, label_smoothing=0)
    assert cb.alpha == 1.0 and isinstance(cb.alpha, float)


def test_label_smoothing_on_soft_targets_warns_once():
    batch = [torch.zeros(4, 32), torch.full((4, 16), 1 / 16)]
    with pytest.warns(UserWarning, match="applies to class-index targets only") as record:
        fit_with_batch(batch, MixupCallback(label_smoothing=0.1))
    assert sum("class-index targets only" in str(w.message) for w in record) == 1


class FetchesItsOwnBatches(RecordingModule):
    """A training step that takes Lightning's ``dataloader_iter`` and draws its batches itself."""

    def training_step(self, dataloader_iter):  # type: ignore[override]
        batch, _, _ = next(dataloader_iter)
        return super().training_step(batch, 0)


def test_a_training_step_that_fetches_its_own_batches_is_refused_at_setup():
    with pytest.raises(ValueError, match=r"FetchesItsOwnBatches.training_step takes "
                       r"`dataloader_iter` and fetches its own batches"):  # fmt: skip
        tiny_trainer(callbacks=[MixupCallback()], max_steps=1).fit(
            FetchesItsOwnBatches(), loader(8, 4)
        )
