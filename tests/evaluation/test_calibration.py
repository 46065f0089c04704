"""Temperature scaling: ``fit_temperature`` on synthetic logits and the callback in real runs."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mixup import DigitsDataModule, SmallCNN, SoftLabelClassifier
from lightning_mixup.evaluation import TemperatureScaling, fit_temperature
from lightning_mixup.evaluation.calibration import _gather_rows
from lightning_mixup.segmentation import DigitsSegmentationDataModule, SmallFCN, SoftLabelSegmenter

pytestmark = pytest.mark.usefixtures("one_thread")


def sampled(n: int, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """True logits z and labels drawn from softmax(z): the calibrated temperature of z is 1."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g) * 2
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    return z, y


# ---------------------------------------------------------------------------- fit_temperature
@pytest.mark.parametrize("factor", [3.0, 0.5])
def test_recovers_a_known_temperature_from_index_labels(factor):
    z, y = sampled(10000)
    assert fit_temperature(z * factor, y) == pytest.approx(factor, rel=0.05)


def test_calibrated_logits_need_no_temperature():
    z, y = sampled(10000, seed=1)
    assert fit_temperature(z, y) == pytest.approx(1.0, rel=0.05)


def test_soft_targets_of_the_true_distribution_give_the_exact_temperature():
    # Cross-entropy against the true probabilities is minimised exactly by them: T = 3.
    z, _ = sampled(500)
    assert fit_temperature(z * 3, z.softmax(1)) == pytest.approx(3.0, rel=1e-4)


def test_one_hot_rows_give_the_temperature_of_their_indices():
    z, y = sampled(2000)
    one_hot = F.one_hot(y, 5).float()
    assert fit_temperature(z * 2, one_hot) == pytest.approx(fit_temperature(z * 2, y), rel=1e-9)


def test_dense_logits_count_one_row_per_pixel():
    z, y = sampled(4000)  # 10 images of 20 × 20 pixels
    dense = z.view(10, 20, 20, 5).permute(0, 3, 1, 2)  # (N, K, H, W)
    t_dense = fit_temperature(dense * 3, y.view(10, 20, 20))
    assert t_dense == pytest.approx(fit_temperature(z * 3, y), rel=1e-9)
    soft = z.softmax(1).view(10, 20, 20, 5).permute(0, 3, 1, 2)
    assert fit_temperature(dense * 3, soft) == pytest.approx(3.0, rel=1e-4)


def test_unlabelled_rows_are_left_out():
    z, y = sampled(2000)
    expected = fit_temperature(z * 3, y)
    junk = torch.randn(600, 5) * 50  # would pull T far away if counted
    logits = torch.cat([z * 3, junk])
    ignored = torch.cat([y, torch.full((300,), 255), torch.full((300,), -100)])
    assert fit_temperature(logits, ignored, ignore_index=255) == pytest.approx(expected, rel=1e-9)
    soft = torch.cat([F.one_hot(y, 5).float(), torch.zeros(600, 5)])
    assert fit_temperature(logits, soft) == pytest.approx(expected, rel=1e-9)
    # PyTorch's -100 is skipped even without ignore_index; 255 then is an error.
    with pytest.raises(ValueError, match=r"class index 255, outside \[0, 5\)"):
        fit_temperature(logits, ignored)


def test_is_deterministic_and_leaves_inputs_alone():
    z, y = sampled(1000)
    logits = (z * 3).to(torch.bfloat16)
    before = logits.clone()
    t1, t2 = fit_temperature(logits, y), fit_temperature(logits, y)
    assert t1 == t2 and isinstance(t1, float)
    assert torch.equal(logits, before)


def test_works_inside_inference_mode():
    z, y = sampled(1000)
    expected = fit_temperature(z * 3, y)
    with torch.inference_mode():
        assert fit_temperature(z * 3, y) == expected


def test_temperature_is_bounded_when_every_sample_is_right_or_wrong():
    z, _ = sampled(200)
    assert fit_temperature(z, z.argmax(1)) == pytest.approx(0.01)
    assert fit_temperature(z, (z.argmax(1) + 1) % 5) == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("logits", "target", "kwargs", "error", "match"),
    [
        (torch.zeros(0, 3), torch.zeros(0).long(), {}, ValueError, r"`logits` must not be empty"),
        (torch.zeros(4), torch.zeros(4).long(), {}, ValueError, r"shape \(N, K\).*got \(4,\)"),
        (torch.zeros(4, 3).long(), torch.zeros(4).long(), {}, TypeError, r"floating-point"),
        (torch.zeros(4, 3), torch.zeros(5).long(), {}, ValueError, r"\(N, \*spatial\) = \(4,\)"),
        (torch.zeros(4, 3), torch.zeros(4, 2), {}, ValueError, r"logits' shape \(4, 3\)"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 5).long(), {}, ValueError, r"= \(2, 4\)"),
        (torch.zeros(4, 3), torch.zeros(4).bool(), {}, TypeError, r"got dtype torch.bool"),
        (torch.zeros(4, 3), [0, 1, 2, 0], {}, TypeError, r"`target` must be .* got list"),
        (torch.zeros(4, 3), torch.full((4,), 7), {"ignore_index": 7}, ValueError, "labels no"),
        (torch.zeros(2, 3), torch.zeros(2, 3), {}, ValueError, r"labels no sample"),
        (torch.full((2, 3), math.nan), torch.zeros(2).long(), {}, ValueError, r"must be finite"),
        (torch.zeros(2, 3), torch.zeros(2).long(), {"max_iter": 0}, ValueError, r"`max_iter`"),
        (torch.zeros(2, 3), torch.zeros(2).long(), {"ignore_index": True}, ValueError, r"got True"),
    ],
)
def test_errors_name_the_argument_and_the_value(logits, target, kwargs, error, match):
    with pytest.raises(error, match=match):
        fit_temperature(logits, target, **kwargs)


# ---------------------------------------------------------------------------- probe
IN, K = 4, 3
W_TRUE = torch.tensor([[1.5, -1.0, 0.5, 0.0], [-0.5, 1.0, 0.0, 1.0], [0.0, 0.0, -1.0, -1.0]])


def probe_data(n: int, seed: int = 0) -> TensorDataset:
    """Labels drawn from softmax(x·W_TRUEᵀ): a model with 3·W_TRUE is 3 times too confident."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g)
    y = torch.multinomial((x @ W_TRUE.T).softmax(1), 1, generator=g).squeeze(1)
    return TensorDataset(x, y)


class Probe(pl.LightningModule):
    """Linear classifier set to 3·W_TRUE; records what its steps see (module level: pickles)."""

    def __init__(self, out_dir: str | None = None, lr: float = 0.0, val_parts: int = 0) -> None:
        super().__init__()
        self.net = nn.Linear(IN, K, bias=False)
        with torch.no_grad():
            self.net.weight.copy_(3 * W_TRUE)
        self.out_dir, self.lr, self.val_parts = out_dir, lr, val_parts
        self.train_unscaled: list[bool] = []
        self.test_ratio: list[torch.Tensor] = []
        self.val_temperatures: list[float] = []
        self.t_at_train_start: tuple[float, bool] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def scaling(self) -> TemperatureScaling:
        return next(c for c in self.trainer.callbacks if isinstance(c, TemperatureScaling))

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.train_unscaled.append(torch.equal(out, self.net(x)))
        return F.cross_entropy(out, y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val/loss", F.cross_entropy(out, y))
        return out  # a (B, K) tensor from the step: under DDP the wrapper call returns it

    def test_step(self, batch, batch_idx):
        x, _ = batch
        self.test_ratio.append(self.net(x) / self(x))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0])

    def on_train_start(self):
        cb = self.scaling()
        self.t_at_train_start = (cb.temperature, cb.fitted)

    def on_validation_epoch_end(self):  # runs after the callbacks' hook
        if not self.trainer.sanity_checking:
            self.val_temperatures.append(self.scaling().temperature)

    def on_fit_end(self):
        if self.out_dir is not None:
            path = Path(self.out_dir) / f"rank{self.global_rank}.pt"
            torch.save({"temperatures": self.val_temperatures}, path)

    def val_dataloader(self):
        data = probe_data(512, seed=1)
        if self.val_parts:  # uneven per-rank validation sets, no distributed sampler
            part = slice(0, 300) if self.global_rank == 0 else slice(300, None)
            # 300 and 212 rows, in 3 batches each: uneven rows, the same number of steps
            return DataLoader(TensorDataset(*data[part]), batch_size=100)
        return DataLoader(data, batch_size=64)

    def train_dataloader(self):
        return DataLoader(probe_data(64), batch_size=16)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def trainer_for(root: Path, callbacks: list, **kw) -> pl.Trainer:
    opts = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": str(root),
    }
    return pl.Trainer(callbacks=callbacks, **opts | kw)


def expected_probe_temperature() -> float:
    x, y = probe_data(512, seed=1).tensors
    return fit_temperature(x @ (3 * W_TRUE).T, y)


def test_callback_fits_on_validation_and_scales_only_test_and_predict(tmp_path):
    model, cb = Probe(), TemperatureScaling()
    trainer = trainer_for(tmp_path, [cb], num_sanity_val_steps=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model)
    assert temperature_warnings(record) == []
    expected = expected_probe_temperature()
    assert expected == pytest.approx(3.0, rel=0.2)  # the probe is over-confident
    # Not fitted during the sanity check; fitted at each of the 2 validation epochs.
    assert model.t_at_train_start == (1.0, False)
    assert model.val_temperatures == pytest.approx([expected] * 2, rel=1e-6)
    assert cb.temperature == pytest.approx(expected, rel=1e-6) and cb.fitted
    metrics = trainer.callback_metrics
    assert float(metrics["val/temperature"]) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["val/nll_ts"]) < float(metrics["val/nll_raw"])
    assert float(metrics["val/ece_ts"]) < float(metrics["val/ece_raw"])
    assert float(metrics["val/nll_raw"]) == pytest.approx(float(metrics["val/loss"]), rel=1e-5)
    # Training steps see raw logits.
    assert model.train_unscaled and all(model.train_unscaled)

    trainer.test(model, DataLoader(probe_data(40), batch_size=16))
    ratio = torch.cat(model.test_ratio)
    torch.testing.assert_close(ratio, torch.full_like(ratio, cb.temperature))

    x = probe_data(10).tensors[0]
    (out,) = trainer.predict(model, DataLoader(TensorDataset(x), batch_size=10))
    torch.testing.assert_close(out, model.net(x).detach() / cb.temperature)
    # Validation stays raw: a later validate() refits on raw logits, to the same T.
    trainer.validate(model)
    assert float(trainer.callback_metrics["val/temperature"]) == pytest.approx(expected, rel=1e-6)


class Wrapper(nn.Module):
    """What DDP/FSDP-style strategies put around the module: its forward calls the module."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self.module(*args)


def test_a_wrapper_call_around_the_step_is_not_scaled_again():
    # A wrapping strategy runs predict_step through the wrapper's forward, which calls the module
    # (Lightning's forward redirection); predict_step then calls it again. Only that inner call is
    # scaled: the step's output is raw / T, not raw / T².
    from lightning.pytorch.strategies.strategy import _ForwardRedirection

    model, cb = Probe(), TemperatureScaling()
    cb.load_state_dict({"temperature": 2.0, "fitted": True})
    state = SimpleNamespace(validating=False, testing=False, predicting=True)
    cb.setup(state, model, "predict")
    x = probe_data(4).tensors[0]
    with torch.no_grad():
        out = _ForwardRedirection()(Wrapper(model), model, "predict_step", (x,), 0)
        torch.testing.assert_close(out, model.net(x) / 2.0)
    cb.teardown(state, model, "predict")
    torch.testing.assert_close(model(x), model.net(x))


class StepWithoutForward(Probe):
    def validation_step(self, batch, batch_idx):
        return F.cross_entropy(self.net(batch[0]), batch[1])  # self.net, not self(x)


def test_a_redirected_step_without_forward_is_not_taken_for_forward_output():
    # Under DDP the step runs inside the wrapper's call of the module, so that call's "output" is
    # the step's loss: the explanation must stay that the step never called forward.
    from lightning.pytorch.strategies.strategy import _ForwardRedirection

    model, cb = StepWithoutForward(), TemperatureScaling()
    state = SimpleNamespace(validating=True, testing=False, predicting=False)
    cb.setup(state, model, "fit")
    x, y = probe_data(4).tensors
    with torch.no_grad():
        _ForwardRedirection()(Wrapper(model), model, "validation_step", (x, y), 0)
    assert cb._tap.why_missed("validation_step") == (
        "validation_step never called the module's forward, `self(x)`"
    )
    cb.teardown(state, model, "fit")


def test_weights_are_never_touched(tmp_path):
    model = Probe(lr=0.0)
    names = [n for n, _ in model.named_parameters()]
    flags = [p.requires_grad for p in model.parameters()]
    trainer = trainer_for(tmp_path, [TemperatureScaling()], max_epochs=1)
    trainer.fit(model)
    trainer.test(model, DataLoader(probe_data(8), batch_size=8))
    assert [n for n, _ in model.named_parameters()] == names
    assert [p.requires_grad for p in model.parameters()] == flags
    assert set(model.state_dict()) == {"net.weight"}
    torch.testing.assert_close(model.net.weight, 3 * W_TRUE)
    assert not model._forward_hooks and not model._forward_pre_hooks  # removed at teardown


class DictBatches(Probe):
    def validation_step(self, batch, batch_idx):
        self(batch["image"])

    def val_dataloader(self):
        x, y = probe_data(512, seed=1).tensors
        return DataLoader([{"image": a, "label": b} for a, b in zip(x, y)], batch_size=64)


def test_dict_batches_with_target_key(tmp_path):
    cb = TemperatureScaling(target_key="label")
    trainer_for(tmp_path, [cb], max_epochs=1).fit(DictBatches())
    assert cb.temperature == pytest.approx(expected_probe_temperature(), rel=1e-6)


class TwoForwards(Probe):
    def validation_step(self, batch, batch_idx):
        x, _ = batch
        self(x)
        self(torch.randn_like(x) * 10)  # e.g. a second view: not paired with the targets


def test_the_first_forward_call_of_a_validation_batch_is_paired(tmp_path):
    cb = TemperatureScaling()
    trainer_for(tmp_path, [cb], max_epochs=1).fit(TwoForwards())
    assert cb.temperature == pytest.approx(expected_probe_temperature(), rel=1e-6)


class WrongTargets(Probe):
    def validation_step(self, batch, batch_idx):
        self(batch[0])

    def val_dataloader(self):
        x = torch.randn(8, IN)
        return DataLoader(TensorDataset(x, torch.zeros(8, 2)), batch_size=4)


def test_targets_that_do_not_fit_the_logits_are_an_error(tmp_path):
    trainer = trainer_for(tmp_path, [TemperatureScaling()], max_epochs=1)
    with pytest.raises(ValueError, match=r"forward output \(shape \(4, 3\).*do not fit"):
        trainer.fit(WrongTargets())


class UnlabelledVal(Probe):
    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, IN), torch.full((8,), -100)), batch_size=4)


def temperature_warnings(record: list) -> list[str]:
    return [str(w.message) for w in record if "TemperatureScaling" in str(w.message)]


@pytest.mark.parametrize(
    ("model", "kw", "match"),
    [
        (Probe(), {"limit_val_batches": 0}, "the fit ran no validation epoch"),
        (UnlabelledVal(), {}, "the validation set gave no labelled sample"),
    ],
)
def test_without_validation_data_t_stays_one_with_one_warning(tmp_path, model, kw, match):
    cb = TemperatureScaling()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer_for(tmp_path, [cb], **kw).fit(model)
        trainer_for(tmp_path, [cb]).test(model, DataLoader(probe_data(8), batch_size=8))
    found = temperature_warnings(record)
    assert len(found) == 1 and match in found[0] and "T stays 1" in found[0]
    assert cb.temperature == 1.0 and not cb.fitted
    torch.testing.assert_close(torch.cat(model.test_ratio), torch.ones(8, K))


class DictForward(Probe):
    """Its forward returns a dict: TemperatureScaling finds no logits and says what it got."""

    def forward(self, x):
        return {"logits": self.net(x)}

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0])["logits"], batch[1])

    def validation_step(self, batch, batch_idx):
        self(batch[0])


def test_a_forward_without_logits_is_named_in_the_warning(tmp_path):
    cb = TemperatureScaling()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer_for(tmp_path, [cb], max_epochs=1).fit(DictForward())
    found = temperature_warnings(record)
    assert len(found) == 1 and "the module's forward returned dict, not logits" in found[0]
    assert not cb.fitted


class SeparableVal(Probe):
    """Validation labels are the model's own argmax: every sample right, T not identified."""

    def val_dataloader(self):
        x = probe_data(64, seed=1).tensors[0]
        return DataLoader(TensorDataset(x, (x @ W_TRUE.T).argmax(1)), batch_size=32)


def test_a_perfectly_classified_validation_split_keeps_t_at_one_with_a_warning(tmp_path):
    cb = TemperatureScaling()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer_for(tmp_path, [cb]).fit(SeparableVal())
    found = temperature_warnings(record)
    assert len(found) == 1 and "has no minimum at a finite temperature" in found[0]
    assert cb.temperature == 1.0 and cb.fitted
    x, y = SeparableVal().val_dataloader().dataset.tensors
    assert fit_temperature(x @ (3 * W_TRUE).T, y) == pytest.approx(0.01)  # the bound, not a fit


def test_state_dict_round_trip_and_checks():
    cb = TemperatureScaling()
    cb.load_state_dict({"temperature": 2.5, "fitted": True})
    assert cb.state_dict() == {"temperature": 2.5, "fitted": True}
    assert TemperatureScaling().state_key == "TemperatureScaling"
    for bad in (0, -1.0, math.inf, "2"):
        with pytest.raises(ValueError, match=r"`temperature` must be a positive number, got "):
            cb.load_state_dict({"temperature": bad})
    assert cb.temperature == 2.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_key": True}, r"`target_key` must be a list index or a dict key, got True\."),
        ({"target_key": 1.5}, r"`target_key` .* got 1\.5\."),
        ({"max_iter": 0}, r"`max_iter` must be a positive integer, got 0\."),
    ],
)
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemperatureScaling(**kwargs)


# ---------------------------------------------------------------------------- real modules
def val_logits(model: pl.LightningModule, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        pairs = [(model(x), y) for x, y in loader]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def test_classifier_checkpoints_hold_the_temperature_of_their_own_weights(tmp_path):
    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=64, val_size=200, test_size=100)
    model = SoftLabelClassifier(SmallCNN(num_classes=10, width=8), 10, lr_scheduler=None)
    cb = TemperatureScaling()
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
    trainer = trainer_for(
        tmp_path, [cb, ckpt], max_epochs=3, limit_train_batches=6, enable_checkpointing=True
    )
    trainer.fit(model, datamodule=dm)
    m = trainer.callback_metrics
    # The raw values are the module's own; scaling lowers both NLL and ECE on this set.
    assert float(m["val/nll_raw"]) == pytest.approx(float(m["val/nll"]), rel=1e-4)
    assert float(m["val/ece_raw"]) == pytest.approx(float(m["val/ece"]), abs=1e-5)
    assert float(m["val/nll_ts"]) <= float(m["val/nll_raw"])
    assert float(m["val/ece_ts"]) <= float(m["val/ece_raw"])
    assert float(m["val/temperature"]) == pytest.approx(cb.temperature, rel=1e-6)

    stored = {}
    for epoch in range(3):
        state = torch.load(tmp_path / f"epoch={epoch}.ckpt", weights_only=False)
        stored[epoch] = state["callbacks"]["TemperatureScaling"]["temperature"]
        weights = SoftLabelClassifier(SmallCNN(num_classes=10, width=8), 10)
        weights.load_state_dict(state["state_dict"])
        logits, y = val_logits(weights, dm.val_dataloader())
        assert stored[epoch] == pytest.approx(fit_temperature(logits, y), rel=1e-5)
    assert stored[2] == cb.temperature
    assert len({round(t, 6) for t in stored.values()}) == 3  # refitted every epoch

    # A fresh Trainer and callback: test/predict from the epoch-0 checkpoint use its T.
    fresh = TemperatureScaling()
    tester = trainer_for(tmp_path, [fresh])
    tester.test(model, datamodule=dm, ckpt_path=str(tmp_path / "epoch=0.ckpt"))
    assert fresh.temperature == stored[0] and fresh.fitted
    probs = torch.cat(
        tester.predict(model, dm.test_dataloader(), ckpt_path=str(tmp_path / "epoch=0.ckpt"))
    )
    logits, _ = val_logits(model, dm.test_dataloader())  # the epoch-0 weights, raw forward
    torch.testing.assert_close(probs, (logits / stored[0]).softmax(1), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(probs, logits.softmax(1), atol=1e-3)


class HparamsIgnore(Probe):
    """Keeps `ignore_index` only in its hyperparameters, as torchgeo's tasks do (class 0 here)."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"ignore_index": 0})


class IgnoringData(pl.LightningDataModule):
    """Probe data whose datamodule names the ignored label."""

    ignore_index = 0

    def train_dataloader(self):
        return DataLoader(probe_data(64), batch_size=16)

    def val_dataloader(self):
        return DataLoader(probe_data(512, seed=1), batch_size=64)


@pytest.mark.parametrize("where", ["hparams", "datamodule"])
def test_ignore_index_is_found_where_mixup_callback_finds_it(tmp_path, where):
    # A label 0 that marks unlabelled rows must be left out of the fit, also when it is only in
    # the module's hparams or on the datamodule (it is a valid class, so nothing else catches it).
    cb = TemperatureScaling()
    trainer = trainer_for(tmp_path, [cb], max_epochs=1)
    if where == "hparams":
        trainer.fit(HparamsIgnore())
    else:
        trainer.fit(Probe(), datamodule=IgnoringData())
    x, y = probe_data(512, seed=1).tensors
    logits = x @ (3 * W_TRUE).T
    assert cb.temperature == pytest.approx(fit_temperature(logits, y, ignore_index=0), rel=1e-6)
    assert cb.temperature != pytest.approx(fit_temperature(logits, y), rel=1e-3)


class Undeclared255(Probe):
    def validation_step(self, batch, batch_idx):
        self(batch[0])

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, IN), torch.full((8,), 255)), batch_size=4)


def test_an_undeclared_ignore_value_says_where_ignore_index_is_read(tmp_path):
    with pytest.raises(ValueError, match=r"index 255.*reads `ignore_index` from the module, its "):
        trainer_for(tmp_path, [TemperatureScaling()], max_epochs=1).fit(Undeclared255())


def test_segmenter_fits_on_labelled_pixels(tmp_path):
    pl.seed_everything(0)
    dm = DigitsSegmentationDataModule(
        train_canvases=32, val_canvases=8, test_canvases=8, canvas_size=16, batch_size=8,
        ignore_index=255,
    )  # fmt: skip
    model = SoftLabelSegmenter(SmallFCN(num_classes=11, width=8), 11, ignore_index=255)
    cb = TemperatureScaling()
    trainer = trainer_for(tmp_path, [cb], max_epochs=1)
    trainer.fit(model, datamodule=dm)
    logits, masks = val_logits(model, dm.val_dataloader())
    assert logits.ndim == 4 and (masks == 255).any()
    assert cb.temperature == pytest.approx(
        fit_temperature(logits, masks, ignore_index=255), rel=1e-5
    )
    m = trainer.callback_metrics
    assert float(m["val/nll_raw"]) == pytest.approx(float(m["val/nll"]), rel=1e-4)
    assert float(m["val/nll_ts"]) <= float(m["val/nll_raw"])


# ---------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_ranks_end_with_the_same_temperature_fitted_on_all_the_data(tmp_path):
    # Uneven validation sets (rank 0: 300 samples, rank 1: 212) without a distributed sampler:
    # the rows are gathered (padded and trimmed), and both ranks hold the T of all 512.
    trainer = trainer_for(
        tmp_path, [TemperatureScaling()], devices=2, strategy="ddp_spawn",
        use_distributed_sampler=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Probe(out_dir=str(tmp_path), val_parts=2))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt")["temperatures"] for r in (0, 1))
    assert len(r0) == 2 and r0 == r1
    assert r0[-1] == pytest.approx(expected_probe_temperature(), rel=1e-6)
    x, y = probe_data(512, seed=1)[:300]
    assert r0[-1] != pytest.approx(fit_temperature(x @ (3 * W_TRUE).T, y), rel=1e-3)


@pytest.mark.slow
def test_ddp_without_a_labelled_validation_row_keeps_t_at_one(tmp_path):
    # No process holds a labelled row: every rank takes the no-sample path (T stays 1), where
    # the gather once failed reshaping the empty rows to zero classes.
    trainer = trainer_for(tmp_path, [TemperatureScaling()], devices=2, strategy="ddp_spawn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(UnlabelledVal(out_dir=str(tmp_path)))
    for rank in (0, 1):
        assert torch.load(tmp_path / f"rank{rank}.pt")["temperatures"] == [1.0, 1.0]


class GathersRows(pl.LightningModule):
    """Gathers rank-dependent row counts with ``_gather_rows``; saves what each rank received."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.net = nn.Linear(1, 1)

    def test_step(self, batch, batch_idx) -> None:
        return None

    def test_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=1)

    def on_test_epoch_end(self) -> None:
        r = self.global_rank
        cases = {
            "uneven": torch.arange(6.0).reshape(3, 2)[: 3 - 2 * r] + 10 * r,  # 3 rows, then 1
            "one_empty": torch.ones(2 * (1 - r), 4),  # 2 rows, then none
            "all_empty": torch.empty(0, 5),
            "indices": torch.arange(r + 1) + 100 * r,  # int64: [0], then [100, 101]
        }
        got = {name: _gather_rows(self.trainer, self.device, rows) for name, rows in cases.items()}
        torch.save(got, f"{self.out_dir}/rank{r}.pt")


@pytest.mark.slow
def test_ddp_row_gather_keeps_rank_order_dtype_and_empty_processes(tmp_path):
    # torchmetrics' gather_all_tensors pads uneven counts and trims them again; a process with
    # no row, and all processes with none, give the other processes' rows, or none.
    trainer = trainer_for(tmp_path, [], devices=2, strategy="ddp_spawn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.test(GathersRows(str(tmp_path)), verbose=False)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["uneven"].tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [10.0, 11.0]]
        assert torch.equal(got["one_empty"], torch.ones(2, 4))
        assert got["all_empty"].shape == (0, 5)
        assert got["indices"].dtype == torch.int64 and got["indices"].tolist() == [0, 100, 101]
        assert all(t.device == torch.device("cpu") for t in got.values())
