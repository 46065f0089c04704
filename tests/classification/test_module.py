import functools
import math
import pickle
import sys
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mixup.callback import MixupCallback
from lightning_mixup.classification.models import SmallCNN
from lightning_mixup.classification.module import (
    SoftLabelClassifier,
    cosine_annealing,
    default_optimizer,
)

K = 3
DOUBLE_SMOOTHING = "Label smoothing is set twice"
METRIC_KEYS = {"train/loss", "train/acc_dominant", "val/acc", "val/nll", "val/ece"}


# ---------------------------------------------------------------------------- helpers
def _trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**defaults, **kwargs})


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    # Class-dependent mean so the classes are learnable, plus noise.
    x = torch.randn(n, 1, 8, 8, generator=g) + y.view(n, 1, 1, 1).float()
    return x, y


def _loader(n: int = 64, batch_size: int = 16, seed: int = 0, **kwargs) -> DataLoader:
    return DataLoader(TensorDataset(*_data(n, seed)), batch_size=batch_size, **kwargs)


def _linear() -> nn.Module:
    # Deterministic in train mode (no BatchNorm, no dropout), so logits can be recomputed exactly.
    return nn.Sequential(nn.Flatten(), nn.Linear(64, K))


def _module(seed: int = 0, **kwargs) -> SoftLabelClassifier:
    torch.manual_seed(seed)
    return SoftLabelClassifier(_linear(), num_classes=K, **kwargs)


def _manual_ce(logits: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    rows = F.one_hot(target, K).float() if target.ndim == 1 else target
    rows = (1 - eps) * rows + eps / K
    return -(rows * logits.float().log_softmax(dim=1)).sum(dim=1).mean()


def _manual_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    conf, pred = probs.max(dim=1)
    bins = (conf * n_bins).floor().clamp(max=n_bins - 1).long()
    ece = 0.0
    for b in bins.unique():
        sel = bins == b
        acc = (pred[sel] == labels[sel]).float().mean()
        ece += sel.float().mean().item() * abs(acc.item() - conf[sel].mean().item())
    return ece


def _count(record, text: str) -> int:
    return sum(text in str(w.message) for w in record)


class _Probe(SoftLabelClassifier):
    """Records, for every training step, the logits, the target it received and the loss."""

    def on_fit_start(self) -> None:
        self.records = []

    def training_step(self, batch, batch_idx):
        x, target = batch
        logits = self(x).detach().float()
        loss = super().training_step(batch, batch_idx)
        self.records.append((self.current_epoch, logits, target.clone(), loss.detach()))
        return loss

    def validation_step(self, batch, batch_idx):
        if not self.trainer.sanity_checking:
            self.val_target_ndims = getattr(self, "val_target_ndims", set()) | {batch[1].ndim}
        return super().validation_step(batch, batch_idx)


def _probe(seed: int = 0, **kwargs) -> _Probe:
    torch.manual_seed(seed)
    return _Probe(_linear(), num_classes=K, **kwargs)


class _DataModule(pl.LightningDataModule):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def train_dataloader(self) -> DataLoader:
        return _loader()

    def val_dataloader(self) -> DataLoader:
        return _loader(seed=1)


class _LrRecorder(pl.Callback):
    def __init__(self) -> None:
        self.lrs = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


# ---------------------------------------------------------------------------- training runs
def test_trains_with_index_targets_and_logs_every_metric():
    torch.manual_seed(0)
    model = _Probe(SmallCNN(num_classes=K, in_channels=1, width=8), num_classes=K)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = _trainer()
    trainer.fit(model, _loader(), _loader(seed=1))
    metrics = trainer.callback_metrics
    assert METRIC_KEYS <= metrics.keys()
    assert all(math.isfinite(metrics[k].item()) for k in METRIC_KEYS)
    assert 0 <= metrics["val/acc"] <= 1 and 0 <= metrics["val/ece"] <= 1
    assert {r[2].ndim for r in model.records} == {1}
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_trains_with_mixup_soft_targets_and_evaluates_on_index_targets():
    model = _probe()
    trainer = _trainer(callbacks=[MixupCallback(alpha=1.0, seed=0)])
    trainer.fit(model, _loader(), _loader(seed=1))
    metrics = trainer.callback_metrics
    assert METRIC_KEYS <= metrics.keys()
    assert all(math.isfinite(metrics[k].item()) for k in METRIC_KEYS)
    targets = [r[2] for r in model.records]
    assert all(t.shape == (16, K) and t.dtype == torch.float32 for t in targets)
    assert any((t.max(dim=1).values < 1).any() for t in targets)  # really mixed
    assert model.val_target_ndims == {1}


def test_epoch_metrics_match_the_steps_of_the_last_epoch():
    model = _probe()
    trainer = _trainer(callbacks=[MixupCallback(alpha=1.0, seed=0)])
    trainer.fit(model, _loader(), _loader(seed=1))
    last = [r for r in model.records if r[0] == trainer.max_epochs - 1]
    assert len(last) == 4
    losses = torch.stack([r[3] for r in last])
    hits = torch.cat([r[1].argmax(1) == r[2].argmax(1) for r in last]).float()
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(
        losses.mean().item(), abs=1e-6
    )
    assert trainer.callback_metrics["train/acc_dominant"].item() == pytest.approx(
        hits.mean().item(), abs=1e-6
    )


def test_tuple_batches_are_accepted():
    trainer = _trainer(max_epochs=1)
    collate = lambda samples: tuple(torch.stack(t) for t in zip(*samples))  # noqa: E731
    trainer.fit(_module(), _loader(collate_fn=collate), _loader(seed=1, collate_fn=collate))
    assert METRIC_KEYS <= trainer.callback_metrics.keys()


def test_dict_batches_are_rejected_with_a_clear_error():
    collate = lambda samples: {"input": torch.stack([s[0] for s in samples])}  # noqa: E731
    with pytest.raises(TypeError, match=r"expects batches `\[x, y\]`.*got dict\.$"):
        _trainer(max_epochs=1).fit(_module(), _loader(collate_fn=collate))


def test_a_batch_without_targets_is_rejected_with_a_clear_error():
    loader = DataLoader(TensorDataset(_data()[0]), batch_size=16)
    with pytest.raises(TypeError, match=r"got list of length 1\.$"):
        _trainer(max_epochs=1).fit(_module(), loader)


def test_predict_returns_probabilities():
    model = _module()
    x, y = _data(20)
    expected = model(x).softmax(dim=1)
    for loader in (
        DataLoader(TensorDataset(x), batch_size=8),
        DataLoader(TensorDataset(x, y), batch_size=8),
    ):
        probs = torch.cat(_trainer().predict(model, loader))
        assert probs.dtype == torch.float32
        assert torch.allclose(probs, expected, atol=1e-6)
        assert torch.allclose(probs.sum(dim=1), torch.ones(20))


# ---------------------------------------------------------------------------- one loss
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_one_hot_rows_give_exactly_the_index_loss(eps):
    model = _module()
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(32, K, generator=g)
    index = torch.randint(0, K, (32,), generator=g)
    from_index = model.loss(logits, index, label_smoothing=eps)
    from_rows = model.loss(logits, F.one_hot(index, K).float(), label_smoothing=eps)
    assert (from_index - from_rows).abs().item() <= 1e-6
    # And it is the smoothed cross-entropy written out by hand, so the smoothing really applies.
    assert from_index.item() == pytest.approx(_manual_ce(logits, index, eps).item(), abs=1e-5)
    if eps > 0:
        assert from_index.item() != pytest.approx(_manual_ce(logits, index).item(), abs=1e-3)


def test_smoothing_soft_rows_is_smoothing_their_mixture():
    model = _module()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, K, generator=g)
    rows = torch.rand(8, K, generator=g).softmax(dim=1)
    smoothed_rows = 0.9 * rows + 0.1 / K
    assert torch.allclose(
        model.loss(logits, rows, label_smoothing=0.1), model.loss(logits, smoothed_rows), atol=1e-6
    )


def test_loss_is_float32_for_low_precision_logits():
    model = _module()
    logits = torch.randn(8, K).bfloat16()
    target = torch.randint(0, K, (8,))
    loss = model.loss(logits, target)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, F.cross_entropy(logits.float(), target))


def test_loss_per_sample():
    model = _module()
    logits, target = torch.randn(5, K), torch.randint(0, K, (5,))
    per_sample = model.loss(logits, target, reduction="none")
    assert per_sample.shape == (5,)
    assert torch.allclose(per_sample.mean(), model.loss(logits, target))


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [
        (
            torch.rand(4, K + 2),
            ValueError,
            r"^2-D targets must have `num_classes` = 3 columns, got shape \(4, 5\)\.$",
        ),
        (
            torch.zeros(4, K, dtype=torch.long),
            TypeError,
            r"^2-D targets must be floating point probability rows",
        ),
        (
            torch.rand(4),
            TypeError,
            r"^1-D targets must be integer class indices, got dtype torch.float32",
        ),
        (
            torch.zeros(4, dtype=torch.bool),
            TypeError,
            r"^1-D targets must be integer class indices",
        ),
        (
            torch.rand(4, K, 1),
            ValueError,
            r"^Targets must be \(batch,\) class indices .* got shape \(4, 3, 1\)\.$",
        ),
        (
            torch.zeros(5, dtype=torch.long),
            ValueError,
            r"^The targets hold 5 samples but the logits 4\.$",
        ),
    ],
)
def test_bad_targets_are_rejected(target, error, match):
    with pytest.raises(error, match=match):
        _module().loss(torch.randn(4, K), target)


def test_soft_targets_of_the_wrong_width_fail_inside_a_run():
    x, y = _data()
    loader = DataLoader(TensorDataset(x, F.one_hot(y, K + 1).float()), batch_size=16)
    with pytest.raises(ValueError, match=r"`num_classes` = 3 columns, got shape \(16, 4\)"):
        _trainer(max_epochs=1).fit(_module(), loader)


# ---------------------------------------------------------------------------- label smoothing, once
def _losses_match(model: _Probe, eps: float, other: float) -> None:
    assert model.records
    for _, logits, target, loss in model.records:
        assert loss.item() == pytest.approx(_manual_ce(logits, target, eps).item(), abs=1e-6)
        assert loss.item() != pytest.approx(_manual_ce(logits, target, other).item(), abs=1e-4)


def test_module_smoothing_applies_to_index_targets_without_a_callback():
    model = _probe(label_smoothing=0.1)
    _trainer().fit(model, _loader())
    assert model.train_label_smoothing == 0.1
    _losses_match(model, eps=0.1, other=0.0)


def test_module_smoothing_applies_to_mixed_targets_when_the_callback_does_not_smooth():
    model = _probe(label_smoothing=0.1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _trainer(callbacks=[MixupCallback(alpha=1.0, seed=0)]).fit(model, _loader())
    assert _count(record, DOUBLE_SMOOTHING) == 0
    assert model.train_label_smoothing == 0.1
    assert all(r[2].min() == 0 for r in model.records)  # the callback left some zeros
    _losses_match(model, eps=0.1, other=0.0)


def test_double_smoothing_warns_once_and_only_the_callback_smooths():
    model = _probe(label_smoothing=0.1)
    with pytest.warns(UserWarning, match=DOUBLE_SMOOTHING) as record:
        for _ in range(2):  # a second fit of the same module stays silent
            _trainer(callbacks=[MixupCallback(alpha=1.0, seed=0, label_smoothing=0.1)]).fit(
                model, _loader()
            )
        _trainer(callbacks=[MixupCallback(alpha=1.0, seed=0, label_smoothing=0.1)]).validate(
            model, _loader()
        )
    assert _count(record, DOUBLE_SMOOTHING) == 1
    message = next(str(w.message) for w in record if DOUBLE_SMOOTHING in str(w.message))
    assert "the module's is ignored for training" in message
    assert model.label_smoothing == 0.1 and model.train_label_smoothing == 0.0
    # The targets arrive smoothed by the callback (no zeros) and are not smoothed again.
    assert all(r[2].min() >= 0.1 / K - 1e-6 for r in model.records)
    _losses_match(model, eps=0.0, other=0.1)


def test_double_smoothing_losses_equal_callback_only_losses():
    both = _probe(label_smoothing=0.1)
    callback_only = _probe(label_smoothing=0.0)
    with pytest.warns(UserWarning, match=DOUBLE_SMOOTHING):
        _trainer(callbacks=[MixupCallback(alpha=1.0, seed=0, label_smoothing=0.1)]).fit(
            both, _loader()
        )
    _trainer(callbacks=[MixupCallback(alpha=1.0, seed=0, label_smoothing=0.1)]).fit(
        callback_only, _loader()
    )
    assert len(both.records) == len(callback_only.records) == 8
    for a, b in zip(both.records, callback_only.records):
        assert torch.equal(a[2], b[2])
        assert a[3].item() == pytest.approx(b[3].item(), abs=1e-6)


def test_no_warning_when_only_the_callback_smooths():
    model = _probe()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _trainer(callbacks=[MixupCallback(alpha=1.0, seed=0, label_smoothing=0.1)]).fit(
            model, _loader()
        )
    assert _count(record, DOUBLE_SMOOTHING) == 0
    _losses_match(model, eps=0.0, other=0.1)


# ---------------------------------------------------------------------------- evaluation metrics
@pytest.mark.parametrize("stage", ["val", "test"])
def test_eval_metrics_equal_hand_computed_values_without_smoothing(stage):
    model = _module(label_smoothing=0.3)  # must not leak into the evaluation NLL
    with torch.no_grad():
        model.backbone[1].weight.mul_(5)  # confident enough to spread over several ECE bins
    x, y = _data(n=10, seed=3)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)  # 4 + 4 + 2: uneven batches
    trainer = _trainer(limit_val_batches=None, limit_test_batches=None)
    run = trainer.validate if stage == "val" else trainer.test
    run(model, loader)
    metrics = trainer.callback_metrics
    with torch.no_grad():
        logits = model(x)
    probs = logits.softmax(dim=1)
    assert metrics[f"{stage}/nll"].item() == pytest.approx(
        F.cross_entropy(logits, y).item(), abs=1e-6
    )
    assert metrics[f"{stage}/acc"].item() == pytest.approx(
        (logits.argmax(1) == y).float().mean().item()
    )
    ece = metrics[f"{stage}/ece"].item()
    assert 0 <= ece <= 1
    assert ece == pytest.approx(_manual_ece(probs, y), abs=1e-6)


# ---------------------------------------------------------------------------- compatibility checks
def test_backbone_width_mismatch_is_reported():
    # A convolutional head: its width is only known once data flows, so the step catches it.
    head = nn.Sequential(nn.Conv2d(1, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = SoftLabelClassifier(head, num_classes=K)
    match = r"backbone returned logits of shape \(16, 5\).*`num_classes` = 3.*num_classes=3"
    with pytest.raises(ValueError, match=match):
        _trainer().fit(model, _loader())
    with pytest.raises(ValueError, match=match):
        _trainer().validate(model, _loader())


def test_datamodule_num_classes_mismatch_is_reported():
    with pytest.raises(
        ValueError, match=r"datamodule has `num_classes` = 7 but the module has `num_classes` = 3"
    ):
        _trainer().fit(_module(), datamodule=_DataModule(num_classes=7))


def test_matching_datamodule_trains():
    trainer = _trainer(max_epochs=1)
    trainer.fit(_module(), datamodule=_DataModule(num_classes=K))
    assert METRIC_KEYS <= trainer.callback_metrics.keys()


# ---------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10", None])
def test_num_classes_must_be_a_positive_integer(bad):
    with pytest.raises(
        ValueError, match=rf"^`num_classes` must be a positive integer, got {bad!r}\.$"
    ):
        SoftLabelClassifier(_linear(), num_classes=bad)


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.1", None, math.nan])
def test_label_smoothing_must_be_in_the_unit_interval(bad):
    with pytest.raises(
        ValueError, match=rf"^`label_smoothing` must be a number in \[0, 1\], got {bad!r}\.$"
    ):
        SoftLabelClassifier(_linear(), num_classes=K, label_smoothing=bad)
    model = _module()
    with pytest.raises(ValueError, match=r"^`label_smoothing` must be a number in \[0, 1\]"):
        model.label_smoothing = bad
    assert model.label_smoothing == 0.0


@pytest.mark.parametrize("value", [0, 1, 0.25])
def test_label_smoothing_accepts_ints_and_floats(value):
    model = _module(label_smoothing=value)
    assert model.label_smoothing == value and isinstance(model.label_smoothing, float)


def test_backbone_must_be_a_module():
    with pytest.raises(TypeError, match=r"^`backbone` must be a torch.nn.Module, got function\.$"):
        SoftLabelClassifier(lambda x: x, num_classes=K)


def test_optimizer_must_be_callable():
    with pytest.raises(
        TypeError, match=r"^`optimizer` must be a callable that takes the parameters.*got 'sgd'\.$"
    ):
        SoftLabelClassifier(_linear(), num_classes=K, optimizer="sgd")


def test_lr_scheduler_must_be_callable_or_none():
    with pytest.raises(
        TypeError, match=r"^`lr_scheduler` must be None or a callable.*got 'cosine'\.$"
    ):
        SoftLabelClassifier(_linear(), num_classes=K, lr_scheduler="cosine")


def test_hyperparameters_and_num_classes_are_exposed():
    model = _module(label_smoothing=0.2)
    assert model.num_classes == K
    assert dict(model.hparams) == {"num_classes": K, "label_smoothing": 0.2}


# ---------------------------------------------------------------------------- optimizers
def test_default_optimizer_and_cosine_schedule_per_epoch():
    lrs = _LrRecorder()
    trainer = _trainer(max_epochs=4, callbacks=[lrs])
    trainer.fit(_module(), _loader())
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 5e-4)
    (config,) = trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert config.scheduler.T_max == 4 and config.interval == "epoch"
    expected = [0.05 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert lrs.lrs == pytest.approx(expected)


def test_default_schedule_needs_max_epochs():
    with pytest.raises(
        ValueError,
        match=r"decays over `trainer.max_epochs`, got -1; set `Trainer\(max_epochs=...\)`",
    ):
        _trainer(max_epochs=-1, max_steps=2).fit(_module(), _loader())


def test_custom_optimizer_and_no_scheduler():
    lrs = _LrRecorder()
    model = _module(optimizer=functools.partial(torch.optim.Adam, lr=1e-3), lr_scheduler=None)
    trainer = _trainer(callbacks=[lrs])
    trainer.fit(model, _loader())
    assert isinstance(trainer.optimizers[0], torch.optim.Adam)
    assert trainer.lr_scheduler_configs == []
    assert lrs.lrs == [1e-3, 1e-3]


def test_custom_scheduler_is_stepped_per_epoch():
    lrs = _LrRecorder()
    model = _module(
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    )
    _trainer(max_epochs=3, callbacks=[lrs]).fit(model, _loader())
    assert lrs.lrs == pytest.approx([0.1, 0.05, 0.025])


def test_plateau_scheduler_monitors_val_nll():
    model = _module(lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau)
    trainer = _trainer()
    trainer.fit(model, _loader(), _loader(seed=1))
    (config,) = trainer.lr_scheduler_configs
    assert config.monitor == "val/nll" and config.interval == "epoch"


def test_cosine_annealing_needs_max_epochs():
    opt = default_optimizer(_linear().parameters())
    assert cosine_annealing(opt, max_epochs=7).T_max == 7
    with pytest.raises(ValueError, match=r"^`max_epochs` must be given: cosine_annealing decays"):
        cosine_annealing(opt)


def test_module_pickles_with_its_default_callables():
    model = pickle.loads(pickle.dumps(_module()))
    assert model.optimizer is default_optimizer and model.lr_scheduler is cosine_annealing


def test_lightning_cli_builds_the_module_from_config(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-mixup"])
    args = [
        "--model.backbone=lightning_mixup.classification.models.SmallCNN",
        "--model.backbone.init_args.num_classes=3",
        "--model.backbone.init_args.width=4",
        "--model.num_classes=3",
        "--model.label_smoothing=0.1",
        "--trainer.logger=false",
    ]
    cli = LightningCLI(SoftLabelClassifier, run=False, args=args, save_config_callback=None)
    model = cli.model
    assert isinstance(model.backbone, SmallCNN)
    assert model.optimizer is default_optimizer and model.lr_scheduler is cosine_annealing
    assert model.label_smoothing == 0.1

    args += [
        "--model.optimizer=torch.optim.Adam",
        "--model.optimizer.lr=0.01",
        "--model.lr_scheduler=null",
    ]
    model = LightningCLI(SoftLabelClassifier, run=False, args=args, save_config_callback=None).model
    optimizer = model.optimizer(model.parameters())
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 0.01
    assert model.lr_scheduler is None


def test_backbone_width_mismatch_is_caught_at_setup_before_any_step() -> None:
    import lightning.pytorch as pl
    from torch import nn

    from lightning_mixup import SoftLabelClassifier

    class NeverStep(SoftLabelClassifier):
        def training_step(self, batch, batch_idx):  # pragma: no cover - must not run
            raise AssertionError("setup should have failed first")

    backbone = nn.Sequential(nn.Flatten(), nn.Linear(4, 5))
    module = NeverStep(backbone, num_classes=3)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)),
        batch_size=4,
    )
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False
    )
    with pytest.raises(
        ValueError, match=r"last layer outputs 5 values per sample but `num_classes` = 3"
    ):
        trainer.fit(module, data)


class _HeadFirst(nn.Module):
    """Logits from `fc`, registered before a projection head of another width (unused here)."""

    def __init__(self, fc_width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(4, fc_width)
        self.proj = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.mark.parametrize("fc_width", [3, 5])
def test_an_output_layer_registered_before_another_layer_is_judged_by_its_logits(fc_width):
    from lightning_mixup import SoftLabelClassifier

    module = SoftLabelClassifier(_HeadFirst(fc_width), num_classes=3)
    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), 4)
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False
    )
    if fc_width == 3:  # the last registered layer outputs 8, but `fc` gives the logits
        trainer.fit(module, data)
        assert trainer.state.finished
    else:  # no layer outputs 3: refused at setup, as before
        with pytest.raises(ValueError, match=r"outputs 8 values per sample but `num_classes` = 3"):
            trainer.fit(module, data)
