"""Edges users hit when scaling out: precision, accumulation, compile, NaN inputs, two callbacks."""

import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_mixup import MixupCallback, SmallCNN, SoftLabelClassifier
from tests.probes import RecordingModule, loader, tensor_loader, tiny_trainer


class DtypeProbe(pl.Callback):
    """Records the input dtype the mixing callback sees (it runs after this one)."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(batch[0].dtype)


class LossRecorder(RecordingModule):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.train_records[-1]["loss"] = loss.detach().float()
        return loss


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16-mixed", torch.float32), ("bf16-true", torch.bfloat16)]
)
def test_bf16_precision_keeps_input_dtype_and_float32_targets(precision, dtype):
    module, probe = LossRecorder(), DtypeProbe()
    cb = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem")
    tiny_trainer(precision=precision, callbacks=[probe, cb]).fit(module, loader(16, 4))
    assert len(module.train_records) == 4
    for before, rec in zip(probe.seen, module.train_records):
        assert rec["x"].dtype == before  # the callback never changes the input dtype
        assert rec["x"].dtype in (dtype, torch.float32)
        assert rec["y"].dtype == torch.float32
        torch.testing.assert_close(rec["y"].sum(1), torch.ones(len(rec["y"])))
        assert math.isfinite(rec["loss"].item())


def test_bf16_inputs_are_mixed_in_bf16():
    x = torch.randn(8, 32).to(torch.bfloat16)
    module = RecordingModule(num_classes=4)
    batch = [x.clone(), torch.arange(8) % 4]
    cb = MixupCallback(alpha=1.0, num_classes=4, seed=0)
    trainer = tiny_trainer(callbacks=[cb])
    cb.setup(trainer, module, "fit")
    cb.on_train_batch_start(trainer, module, batch, 0)
    assert batch[0].dtype == torch.bfloat16 and batch[1].dtype == torch.float32
    lam, partner = cb.last_params.lam.float(), cb.last_params.partner
    expected = lam.view(-1, 1) * x.float() + (1 - lam.view(-1, 1)) * x.float()[partner]
    torch.testing.assert_close(batch[0].float(), expected, atol=0.05, rtol=0.02)


def test_gradient_accumulation_keeps_the_per_batch_ramp():
    module = RecordingModule(num_classes=32)

    strengths = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            strengths.append((trainer.current_epoch, batch_idx, trainer.global_step))

    cb = MixupCallback(alpha=1.0, ramp_epochs=2, seed=0)
    tiny_trainer(max_epochs=3, accumulate_grad_batches=4, callbacks=[cb, Watch()]).fit(
        module, loader(32, 4)
    )
    assert [s[2] for s in strengths][-1] == 6  # 8 batches per epoch, 2 optimizer steps per epoch
    for epoch, batch_idx, _ in strengths:
        assert cb.strength(epoch, batch_idx, 8) == pytest.approx(
            min((epoch + batch_idx / 8) / 2, 1.0)
        )
    frac = [
        sum(
            any(v < 1 for v in r["y"].max(1).values.tolist())
            for r in module.train_records
            if r["epoch"] == e
        )
        / 8
        for e in range(3)
    ]
    assert frac[0] < frac[2] == 1.0


@pytest.mark.slow
def test_compiled_backbone_trains_with_the_callback():
    backbone = torch.compile(nn.Sequential(nn.Flatten(), nn.Linear(32, 16)), backend="inductor")
    module = SoftLabelClassifier(backbone, num_classes=16)
    x, y = torch.randn(32, 2, 4, 4), torch.randint(0, 16, (32,))
    trainer = tiny_trainer(max_epochs=1, callbacks=[MixupCallback(alpha=1.0)])
    trainer.fit(module, tensor_loader(x, y, batch_size=8))
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
    assert trainer.callback_metrics["mixup/lambda_mean"].item() < 1.0


def test_nonfinite_batches_are_left_unmixed_with_one_warning():
    x = torch.randn(16, 2, 4, 4)
    x[5, 0, 1, 1] = float("nan")
    x[9, 1, 0, 0] = float("inf")  # batches 1 (samples 4-7) and 2 (8-11) are bad
    module = RecordingModule(num_classes=4)
    cb = MixupCallback(alpha=1.0, seed=0)
    with pytest.warns(UserWarning, match="contain NaN or Inf") as record:
        trainer = tiny_trainer(callbacks=[cb])
        trainer.fit(module, tensor_loader(x, torch.arange(16) % 4))
    assert sum("NaN or Inf" in str(w.message) for w in record) == 1
    recs = module.train_records
    for i, rec in enumerate(recs):
        bad = i in (1, 2)
        mixed = bool((rec["y"].max(1).values < 1).any())
        assert mixed != bad
        if bad:  # untouched: the bad values stayed in their own sample
            torch.testing.assert_close(rec["x"], x[4 * i : 4 * i + 4], equal_nan=True)
            assert torch.isfinite(rec["x"]).flatten(1).all(1).sum() == 3
    assert trainer.callback_metrics["mixup/nonfinite_batches"].item() == 2


@pytest.mark.parametrize(
    "dtype, scale",
    [(torch.float32, 1e38), (torch.float64, 1e300)],  # sums overflow; every value is finite
    ids=["float32-near-max", "float64-beyond-float32"],
)
def test_large_finite_batches_are_mixed_beside_a_true_nan_batch(dtype, scale):
    x = (torch.rand(16, 2, 4, 4, dtype=dtype) + 1) * scale
    assert torch.isfinite(x).all() and not torch.isfinite(x.sum(dtype=torch.float32))
    x[13, 0, 0, 0] = float("nan")  # batch 3 (samples 12-15) is truly bad
    module = RecordingModule(num_classes=4)
    with pytest.warns(UserWarning, match="batch 3 in epoch 0 contain NaN or Inf") as record:
        trainer = tiny_trainer(callbacks=[MixupCallback(alpha=1.0, seed=0)])
        trainer.fit(module, tensor_loader(x, torch.arange(16) % 4))
    assert sum("NaN or Inf" in str(w.message) for w in record) == 1
    for i, rec in enumerate(module.train_records):
        mixed = bool((rec["y"].max(1).values < 1).any())
        assert mixed == (i != 3) and rec["x"].dtype == dtype
        if mixed:  # a blend of two large finite values stays finite
            assert torch.isfinite(rec["x"]).all()
    assert trainer.callback_metrics["mixup/nonfinite_batches"].item() == 1


def test_all_finite_reads_no_sum():
    from lightning_mixup import functional as F

    assert bool(F.all_finite(torch.full((4, 3), 3e38)))
    assert bool(F.all_finite(torch.full((4, 3), 1e300, dtype=torch.float64)))
    assert bool(F.all_finite(torch.empty(0, 3)))
    assert bool(F.all_finite(torch.ones(2, 2, dtype=torch.bfloat16)))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.zeros(4, 3)
        x[2, 1] = bad
        assert not bool(F.all_finite(x))


def test_nonfinite_check_can_be_turned_off():
    x = torch.randn(8, 2, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    module = RecordingModule(num_classes=4)
    cb = MixupCallback(alpha=1.0, seed=0, skip_nonfinite=False)
    tiny_trainer(callbacks=[cb]).fit(module, tensor_loader(x, torch.arange(8) % 4))
    assert (~torch.isfinite(module.train_records[0]["x"])).flatten(1).any(1).sum() == 2  # spread


def test_two_callbacks_checkpoint_and_resume_separately(tmp_path, monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)

    def pair(seed_a=None):
        return [
            MixupCallback(alpha=1.0, stop_epoch=1, seed=seed_a),
            MixupCallback(
                alpha=0.0, cutmix_alpha=1.0, ramp_start_epoch=1, ramp_epochs=1, seed=42, name="cut"
            ),
        ]

    full = RecordingModule()
    tiny_trainer(max_epochs=3, callbacks=pair()).fit(full, loader(16, 4))
    first = RecordingModule()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    tiny_trainer(max_epochs=1, callbacks=[*pair(), ckpt], enable_checkpointing=True).fit(
        first, loader(16, 4)
    )
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]
    states = {k: v for k, v in saved.items() if k.startswith("MixupCallback")}
    assert sorted(v["seed"] for v in states.values()) == [0, 42]
    second = RecordingModule()
    tiny_trainer(max_epochs=3, callbacks=pair()).fit(
        second, loader(16, 4), ckpt_path=tmp_path / "last.ckpt"
    )
    both = first.train_records + second.train_records
    assert len(both) == len(full.train_records) == 12
    for a, b in zip(both, full.train_records):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])


def test_identical_callbacks_are_refused():
    with pytest.raises(RuntimeError, match="state_key"):
        tiny_trainer(callbacks=[MixupCallback(alpha=1.0), MixupCallback(alpha=1.0)]).fit(
            RecordingModule(), loader(8, 4)
        )


def test_small_cnn_soft_label_classifier_with_callback_learns_digits_like_data():
    torch.manual_seed(0)
    centers = torch.randn(4, 1, 8, 8) * 2
    labels = torch.randint(0, 4, (256,))
    x = centers[labels] + 0.3 * torch.randn(256, 1, 8, 8)
    module = SoftLabelClassifier(SmallCNN(num_classes=4, in_channels=1, width=8), num_classes=4)
    trainer = tiny_trainer(max_epochs=4, callbacks=[MixupCallback(alpha=0.4, cutmix_alpha=1.0)])
    trainer.fit(
        module,
        tensor_loader(x, labels, batch_size=32),
        tensor_loader(x[:64], labels[:64], batch_size=32),
    )
    assert trainer.callback_metrics["val/acc"].item() > 0.9


def test_accelerator_path_disables_nonfinite_batches_without_reading_back(monkeypatch):
    """The sync-free path used on GPUs, exercised on the CPU by pretending reads are costly."""
    import lightning_mixup.callback as cbmod

    monkeypatch.setattr(cbmod, "_reads_back_cheaply", lambda device: False)
    x = torch.randn(16, 2, 4, 4)
    x[5, 0, 1, 1] = float("nan")
    module = RecordingModule(num_classes=4)
    with pytest.warns(UserWarning, match="in epoch 0 contain NaN or Inf") as record:
        trainer = tiny_trainer(callbacks=[MixupCallback(alpha=1.0, seed=0)])
        trainer.fit(module, tensor_loader(x, torch.arange(16) % 4))
    assert sum("NaN or Inf" in str(w.message) for w in record) == 1
    bad = module.train_records[1]
    torch.testing.assert_close(bad["x"], x[4:8], equal_nan=True)  # paired with itself: unchanged
    assert torch.equal(bad["y"], torch.eye(4)[torch.arange(4, 8) % 4])
    for i in (0, 2, 3):
        assert (module.train_records[i]["y"].max(1).values < 1).any()
    assert trainer.callback_metrics["mixup/nonfinite_batches"].item() == 1


def test_accelerator_path_checks_labels_on_the_first_batch(monkeypatch):
    import lightning_mixup.callback as cbmod

    monkeypatch.setattr(cbmod, "_reads_back_cheaply", lambda device: False)
    x, y = torch.randn(8, 32), torch.tensor([0, 1, 2, 9, 0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"got values \[9\]"):
        tiny_trainer(callbacks=[MixupCallback(num_classes=4)]).fit(
            RecordingModule(num_classes=4), tensor_loader(x, y)
        )
