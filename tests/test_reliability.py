"""Reliability fixes: each test failed on the code before its fix (issue "eleven ways ...")."""

import math
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

from lightning_mixup import MixupCallback
from lightning_mixup.policies import CutMix, MixUp, MixUpOrCutMix
from tests.probes import RecordingModule, loader, tensor_loader, tiny_trainer


class NoClassesModule(pl.LightningModule):
    """A module that names no `num_classes` anywhere (and has no datamodule to ask)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(32, 4)

    def forward(self, x):
        return self.layer(x.flatten(1))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class DrawProbe(RecordingModule):
    """Records the callback's `last_params` at every training step."""

    def training_step(self, batch, batch_idx):
        cb = next(c for c in self.trainer.callbacks if isinstance(c, MixupCallback))
        self.train_records.append({"params": cb.last_params, "y": batch[1].detach().clone()})
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x.flatten(1)), y)


def force_accelerator_path(monkeypatch):
    import lightning_mixup.callback as cbmod

    monkeypatch.setattr(cbmod, "_reads_back_cheaply", lambda device: False)


# 6 ------------------------------------------------------------------------------------------
def test_validate_test_and_predict_need_no_num_classes():
    data = tensor_loader(torch.randn(8, 32), torch.arange(8) % 4)
    trainer = tiny_trainer(callbacks=[MixupCallback(alpha=1.0)])
    assert trainer.validate(NoClassesModule(), data, verbose=False)
    assert trainer.test(NoClassesModule(), data, verbose=False)
    assert len(trainer.predict(NoClassesModule(), data)) == 2
    with pytest.raises(ValueError, match="could not find `num_classes`"):
        tiny_trainer(callbacks=[MixupCallback(alpha=1.0)]).fit(NoClassesModule(), data)


# 7 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 1.0, "cutmix_alpha": 1.0, "switch_prob": 0.01},
        {"alpha": 0.0, "cutmix_alpha": 1.0, "p": 0.01},
        {"alpha": 0.0, "cutmix_alpha": 1.0, "ramp_start_epoch": 1},
    ],
    ids=["rarely-cutmix", "rarely-mixed", "ramp-not-started"],
)
def test_cutmix_on_uncuttable_inputs_fails_on_the_first_batch(kwargs):
    module = RecordingModule(num_classes=4, in_features=32)
    with pytest.raises(ValueError, match=r"CutMix needs inputs of shape \(B, C, \*spatial\)"):
        tiny_trainer(max_epochs=2, callbacks=[MixupCallback(**kwargs)]).fit(
            module, tensor_loader(torch.randn(64, 32), torch.arange(64) % 4)
        )
    assert module.train_records == []  # not one training step ran


# 8 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_float64_inputs_are_blended_with_float64_weights(layout):
    x = torch.rand(6, 3, 5, 5, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    policy = MixUpOrCutMix(MixUp(1.0, "elem"), CutMix(1.0, "elem"), 0.5)
    params = policy.sample(x.shape, np.random.default_rng(11))
    assert not params.identity and (~params.cut).any()
    mixed, _ = policy.apply(x.clone(), torch.eye(6, dtype=torch.float64), params)
    for i in (~params.cut).nonzero().flatten().tolist():  # the blended samples
        j, lam = int(params.partner[i]), float(params.lam[i])
        exact = x[i] + (1.0 - lam) * (x[j] - x[i])  # torch.lerp's formula, in float64
        torch.testing.assert_close(mixed[i], exact, rtol=0, atol=1e-15)


# 9 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "policy",
    [MixUp(1.0, "batch"), MixUp(1.0, "elem"), CutMix(1.0, "batch"), CutMix(1.0, "elem")],
    ids=lambda p: f"{type(p).__name__}-{p.mode}",
)
def test_a_disabled_batch_comes_back_bit_for_bit_with_inf_in_it(policy):
    x = torch.rand(6, 2, 4, 4)
    x[1, 0, 2, 2] = float("inf")
    x[4, 1, 0, 0] = -float("inf")
    target = torch.eye(6)
    params = policy.sample(x.shape, np.random.default_rng(5))
    out, soft = policy.apply(x.clone(), target, params, enabled=torch.tensor(False))
    assert torch.equal(out, x) and torch.equal(soft, target)
    clean = torch.rand(6, 2, 4, 4)
    out, _ = policy.apply(clean.clone(), target, params, enabled=torch.tensor(True))
    expected, _ = policy.apply(clean.clone(), target, params)
    assert torch.equal(out, expected)


def test_accelerator_path_leaves_an_inf_batch_as_it_was(monkeypatch):
    force_accelerator_path(monkeypatch)
    x = torch.rand(16, 2, 4, 4)
    x[5, 0, 1, 1] = float("inf")  # batch 1 holds samples 4-7
    module = RecordingModule(num_classes=4)
    with pytest.warns(UserWarning, match="NaN or Inf"):
        tiny_trainer(callbacks=[MixupCallback(alpha=1.0, mode="elem", seed=0)]).fit(
            module, tensor_loader(x, torch.arange(16) % 4)
        )
    assert torch.equal(module.train_records[1]["x"], x[4:8])  # no NaN, every bit as it was


# 10 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("accelerator_path", [False, True], ids=["cpu-path", "accelerator-path"])
def test_nonfinite_soft_targets_leave_their_batch_unmixed(monkeypatch, accelerator_path):
    if accelerator_path:
        force_accelerator_path(monkeypatch)
    x = torch.rand(16, 2, 4, 4)
    soft = torch.eye(4)[torch.arange(16) % 4]
    soft[9, 2] = float("nan")  # batch 2 holds samples 8-11
    module = RecordingModule(num_classes=4)
    with pytest.warns(UserWarning, match="inputs or targets in .* contain NaN or Inf"):
        trainer = tiny_trainer(callbacks=[MixupCallback(alpha=1.0, seed=0)])
        trainer.fit(module, tensor_loader(x, soft))
    bad = module.train_records[2]
    assert torch.equal(bad["x"], x[8:12])
    assert torch.isnan(bad["y"]).sum() == 1  # the NaN stayed in its own row
    for i in (0, 1, 3):
        assert torch.isfinite(module.train_records[i]["y"]).all()
        assert (module.train_records[i]["y"].max(1).values < 1).any()  # mixed
    assert trainer.callback_metrics["mixup/nonfinite_batches"].item() == 1


# 11 -----------------------------------------------------------------------------------------
def test_last_params_is_none_exactly_when_the_batch_was_not_mixed():
    module = DrawProbe(num_classes=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_trainer(
            max_epochs=2, callbacks=[MixupCallback(alpha=1.0, p=0.5, ramp_start_epoch=1, seed=3)]
        ).fit(module, loader(64, 4))
    records = module.train_records
    assert all(r["params"] is None for r in records[:16])  # epoch 0: the ramp has not started
    later = records[16:]
    mixed = [bool((r["y"].max(1).values < 1).any()) for r in later]
    assert 0 < sum(mixed) < len(later)  # p = 0.5 left some batches alone
    assert [r["params"] is not None for r in later] == mixed


# 3 and 4 ------------------------------------------------------------------------------------
def test_two_callbacks_mixing_the_same_epochs_are_refused_at_setup():
    first = MixupCallback(alpha=1.0, stop_epoch=3)
    second = MixupCallback(alpha=0.0, cutmix_alpha=1.0, ramp_start_epoch=2, name="cut")
    module = RecordingModule()
    with pytest.raises(
        ValueError, match=r"MixupCallback\(alpha=1.*\[0, 3\)\).*MixupCallback\[cut\]"
    ):
        tiny_trainer(callbacks=[first, second]).fit(module, loader(8, 4))
    assert module.train_records == []


def test_named_callbacks_that_differ_in_any_argument_are_accepted():
    """Only the name sets the checkpoint key: settings that differ in switch_prob alone are fine."""
    a = MixupCallback(alpha=1.0, cutmix_alpha=1.0, switch_prob=0.2, stop_epoch=1)
    b = MixupCallback(alpha=1.0, cutmix_alpha=1.0, switch_prob=0.8, ramp_start_epoch=1, name="b")
    module = RecordingModule()
    tiny_trainer(max_epochs=2, callbacks=[a, b]).fit(module, loader(16, 4))
    assert len(module.train_records) == 8


# 5 ------------------------------------------------------------------------------------------
def test_resuming_with_a_changed_alpha_keeps_the_seed_and_says_what_changed(tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import ModelCheckpoint

    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    tiny_trainer(callbacks=[MixupCallback(alpha=1.0), ckpt], enable_checkpointing=True).fit(
        RecordingModule(), loader(8, 4)
    )
    monkeypatch.setenv("PL_GLOBAL_SEED", "8")  # the resumed run is started with another seed
    resumed = MixupCallback(alpha=0.5)
    with pytest.warns(
        UserWarning, match=r"changed arguments \(alpha: 1.0 -> 0.5\); the stored seed"
    ):
        tiny_trainer(max_epochs=2, callbacks=[resumed]).fit(
            RecordingModule(), loader(8, 4), ckpt_path=tmp_path / "last.ckpt"
        )
    assert resumed._seed == 7


def test_resuming_with_a_new_seed_says_the_draws_follow_it(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    tiny_trainer(callbacks=[MixupCallback(seed=3), ckpt], enable_checkpointing=True).fit(
        RecordingModule(), loader(8, 4)
    )
    resumed = MixupCallback(seed=5)
    with pytest.warns(
        UserWarning, match=r"\(seed: 3 -> 5\); `seed` = 5 replaces the stored seed 3"
    ) as got:
        tiny_trainer(max_epochs=2, callbacks=[resumed]).fit(
            RecordingModule(), loader(8, 4), ckpt_path=tmp_path / "last.ckpt"
        )
    assert resumed._seed == 5
    assert not any("stored seed is kept" in str(w.message) for w in got)


@pytest.mark.parametrize("name", ["", "two words", 3, True])
def test_name_must_be_an_identifier(name):
    with pytest.raises(ValueError, match=r"`name` must be None or a Python identifier, got"):
        MixupCallback(name=name)


# 2 ------------------------------------------------------------------------------------------
class TwoLoaderProbe(RecordingModule):
    """Records each sub-batch of a CombinedLoader step (dict of loaders or list of loaders)."""

    def training_step(self, batch, batch_idx):
        parts = batch.keys() if isinstance(batch, dict) else range(len(batch))
        cb = next(c for c in self.trainer.callbacks if isinstance(c, MixupCallback))
        self.train_records.append(
            {
                "parts": {p: (batch[p][0].clone(), batch[p][1].clone()) for p in parts},
                "params": cb.last_params,
            }
        )
        x, y = batch[next(iter(parts))]
        return nn.functional.cross_entropy(self.layer(x.flatten(1)), y)


@pytest.mark.parametrize("container", ["dict", "list"])
def test_several_training_loaders_mix_each_sub_batch_with_its_own_draws(container):
    loaders = {"a": loader(16, 4), "b": loader(16, 4)}
    if container == "list":
        loaders = list(loaders.values())
    module = TwoLoaderProbe(num_classes=16)
    tiny_trainer(callbacks=[MixupCallback(alpha=1.0, seed=0)]).fit(
        module, train_dataloaders=loaders
    )
    names = ["a", "b"] if container == "dict" else [0, 1]
    assert len(module.train_records) == 4
    for rec in module.train_records:
        (xa, ya), (xb, yb) = (rec["parts"][n] for n in names)
        for x, y in ((xa, ya), (xb, yb)):  # each sub-batch is a proper mix of its own samples
            assert y.dtype == torch.float32 and torch.allclose(y.sum(1), torch.ones(4))
            values = (y * torch.arange(16.0)).sum(1)  # IdentityData: pixel value = its label
            torch.testing.assert_close(x.flatten(1).mean(1), values)
        assert set(rec["params"]) == set(names)
        assert not torch.equal(rec["params"][names[0]].lam, rec["params"][names[1]].lam)


class ExhaustedLoaderProbe(RecordingModule):
    """Records which sub-batches a CombinedLoader step holds (None: that loader ran out)."""

    def training_step(self, batch, batch_idx):
        cb = next(c for c in self.trainer.callbacks if isinstance(c, MixupCallback))
        record = {"present": {k for k, v in batch.items() if v is not None}}
        record["params"] = cb.last_params
        record["y"] = {k: v[1].clone() for k, v in batch.items() if v is not None}
        self.train_records.append(record)
        x, y = batch["long"]
        return nn.functional.cross_entropy(self.layer(x.flatten(1)), y)


@pytest.mark.parametrize(
    ("mode", "steps", "short_steps"),
    [("max_size", 4, 2), ("max_size_cycle", 4, 4), ("min_size", 2, 2)],
)
def test_every_combined_loader_mode_mixes_what_it_hands_over(mode, steps, short_steps):
    from lightning.pytorch.utilities import CombinedLoader

    loaders = CombinedLoader({"long": loader(16, 4), "short": loader(8, 4)}, mode=mode)
    module = ExhaustedLoaderProbe(num_classes=16)
    tiny_trainer(callbacks=[MixupCallback(alpha=1.0, seed=0)]).fit(module, loaders)
    records = module.train_records
    assert len(records) == steps
    assert sum("short" in r["present"] for r in records) == short_steps
    for record in records:
        assert set(record["params"]) == record["present"]  # what is there is mixed, None is not
        assert all(y.dtype == torch.float32 for y in record["y"].values())


def test_a_loaders_draws_do_not_depend_on_the_other_loaders():
    """Each sub-batch's draws are keyed by its loader's name, not by the loaders beside it."""
    alone, joined = TwoLoaderProbe(num_classes=16), TwoLoaderProbe(num_classes=16)
    tiny_trainer(callbacks=[MixupCallback(alpha=1.0, seed=0)]).fit(
        alone, train_dataloaders={"a": loader(16, 4)}
    )
    tiny_trainer(callbacks=[MixupCallback(alpha=1.0, seed=0)]).fit(
        joined, train_dataloaders={"a": loader(16, 4), "b": loader(16, 4, shuffle=False)}
    )
    for one, two in zip(alone.train_records, joined.train_records):
        assert torch.equal(one["parts"]["a"][0], two["parts"]["a"][0])
        assert torch.equal(one["parts"]["a"][1], two["parts"]["a"][1])


# 1 ------------------------------------------------------------------------------------------
class Stream(torch.utils.data.IterableDataset):
    """An endless stream with no `__len__`: sample i is the constant image i % 16, label i % 16."""

    def __iter__(self):
        i = 0
        while True:
            yield torch.full((2, 4, 4), float(i % 16)), i % 16
            i += 1


def stream_fit(callback, **trainer_kwargs):
    module = RecordingModule(num_classes=16)
    data = torch.utils.data.DataLoader(Stream(), batch_size=4)
    tiny_trainer(max_steps=30, callbacks=[callback], **trainer_kwargs).fit(module, data)
    return [bool((r["y"].max(1).values < 1).any()) for r in module.train_records]


def test_a_schedule_in_steps_moves_on_an_endless_stream():
    cb = MixupCallback(alpha=1.0, ramp_start_step=5, ramp_steps=10, stop_step=25, seed=0)
    mixed = stream_fit(cb)
    assert len(mixed) == 30
    assert not any(mixed[:5]) and not any(mixed[25:])  # before the ramp, from stop_step on
    assert all(mixed[15:25])  # full strength
    assert 0 < sum(mixed[5:15]) < 10  # the ramp: p rises from 0 to 1 over 10 steps
    assert [cb.strength(0, 0, math.inf, step) for step in (4, 10, 15, 25)] == [0.0, 0.5, 1.0, 0.0]


def test_steps_count_optimizer_steps_under_gradient_accumulation():
    cb = MixupCallback(alpha=1.0, ramp_start_step=3, seed=0)
    mixed = stream_fit(cb, accumulate_grad_batches=2)
    assert not any(mixed[:6]) and all(mixed[6:])  # optimizer step 3 starts at batch 6


def test_an_epoch_schedule_on_an_endless_stream_warns_once():
    with pytest.warns(UserWarning, match=r"never moves past epoch 0.*`ramp_start_step`") as record:
        mixed = stream_fit(MixupCallback(alpha=1.0, ramp_epochs=2))
    assert sum("never moves past epoch 0" in str(w.message) for w in record) == 1
    assert not any(mixed)  # the epoch ramp never started, and now the user is told


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ramp_epochs": 2, "ramp_steps": 100}, "The schedule is in epochs or in steps, not both"),
        ({"ramp_start_step": 10, "stop_step": 10}, "`stop_step` must be after `ramp_start_step`"),
        ({"ramp_steps": -1}, "`ramp_steps` must be an integer >= 0, got -1"),
    ],
)
def test_step_schedule_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixupCallback(**kwargs)


def test_callbacks_in_different_units_cannot_prove_they_never_overlap():
    epochs = MixupCallback(alpha=1.0, stop_epoch=1)
    steps = MixupCallback(alpha=1.0, ramp_start_step=1000, name="late")
    with pytest.raises(
        ValueError, match=r"mixing in epochs \[0, 1\).*mixing in steps \[1000, inf\)"
    ):
        tiny_trainer(callbacks=[epochs, steps]).fit(RecordingModule(), loader(8, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_an_inf_batch_comes_back_as_it_was():
    x = torch.rand(16, 2, 4, 4)
    x[5, 0, 1, 1] = float("inf")  # batch 1 holds samples 4-7
    module = RecordingModule(num_classes=4)
    with pytest.warns(UserWarning, match="NaN or Inf"):
        tiny_trainer(accelerator="gpu", callbacks=[MixupCallback(alpha=1.0, mode="elem")]).fit(
            module, tensor_loader(x, torch.arange(16) % 4)
        )
    assert torch.equal(module.train_records[1]["x"].cpu(), x[4:8])
