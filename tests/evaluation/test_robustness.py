"""FGSM/PGD on hand-checkable models, the pixel-space ε convention, and ``AdversarialEval``."""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import matplotlib.image
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mixup import DigitsDataModule, SmallCNN, SoftLabelClassifier
from lightning_mixup.evaluation.robustness import AdversarialEval, fgsm, pgd

# Two classes, logits = W·x with hand-set W. For label 0 the cross-entropy gradient is
# p1·(W1 - W0), whose sign is sign(W1 - W0) = (-1, +1, -1) for every x; for label 1 it flips.
W = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 2.0, -0.5]])
SIGN_LABEL0 = torch.tensor([-1.0, 1.0, -1.0])


def linear_model() -> nn.Module:
    model = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(W)
    return model.eval()


def margin(x: torch.Tensor) -> torch.Tensor:
    """logit_0 - logit_1 = 2·w·x with w = (1, -2, 0.5)."""
    return x @ (W[0] - W[1])


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- FGSM
def test_fgsm_moves_each_input_by_eps_times_the_gradient_sign():
    x = torch.tensor([[0.5, 0.0, 0.0], [0.2, -0.3, 0.7], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 0])
    adv = fgsm(linear_model(), x, y, eps=0.1)
    expected_sign = torch.stack([SIGN_LABEL0, -SIGN_LABEL0, SIGN_LABEL0])
    torch.testing.assert_close(adv - x, 0.1 * expected_sign)


def test_fgsm_prediction_matches_the_hand_computed_margin():
    # margin(x) = 1.0 for x = (0.5, 0, 0); the FGSM step against label 0 lowers it by
    # 2·ε·|w|₁ = 7ε: ε = 0.1 leaves 0.3 (still class 0), ε = 0.2 gives -0.4 (class 1).
    model = linear_model()
    x, y = torch.tensor([[0.5, 0.0, 0.0]]), torch.tensor([0])
    assert margin(x).item() == pytest.approx(1.0)
    for eps, expected_margin, expected_class in ((0.1, 0.3, 0), (0.2, -0.4, 1)):
        adv = fgsm(model, x, y, eps)
        assert margin(adv).item() == pytest.approx(expected_margin, abs=1e-6)
        assert model(adv).argmax(dim=1).item() == expected_class


def test_fgsm_with_zero_eps_is_the_identity_and_respects_the_clamp():
    x = torch.tensor([[0.95, 0.02, 0.5]])
    y = torch.tensor([0])
    torch.testing.assert_close(fgsm(linear_model(), x, y, 0), x)
    # Against label 1 the step is +0.1·(1, -1, 1): (1.05, -0.08, 0.6), clamped to [0, 1].
    adv = fgsm(linear_model(), x, torch.tensor([1]), 0.1, lower=0.0, upper=1.0)
    torch.testing.assert_close(adv, torch.tensor([[1.0, 0.0, 0.6]]))


def test_fgsm_accepts_soft_targets():
    x = torch.tensor([[0.5, 0.0, 0.0]])
    hard = fgsm(linear_model(), x, torch.tensor([0]), 0.1)
    soft = fgsm(linear_model(), x, torch.tensor([[1.0, 0.0]]), 0.1)
    torch.testing.assert_close(hard, soft)


def test_attacks_leave_parameters_and_grads_alone_even_in_inference_mode():
    model = linear_model()
    before = model.weight.detach().clone()
    x, y = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 0, 1])
    with torch.inference_mode():
        adv_f = fgsm(model, x, y, 0.1)
        adv_p = pgd(model, x, y, 0.1, steps=3, generator=torch.Generator().manual_seed(1))
    assert model.weight.grad is None
    torch.testing.assert_close(model.weight.detach(), before)
    assert not adv_f.requires_grad and not adv_p.requires_grad


def test_output_keeps_dtype_and_device():
    model = linear_model().to(torch.float64)
    x = torch.zeros(2, 3, dtype=torch.float64)
    adv = fgsm(model, x, torch.tensor([0, 1]), 0.25)
    assert adv.dtype == torch.float64 and adv.device == x.device


# ---------------------------------------------------------------------------- PGD
def test_pgd_stays_in_the_eps_ball_and_is_at_least_as_strong_as_fgsm():
    model = linear_model()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g) * 0.3
    y = torch.randint(0, 2, (8,), generator=g)
    eps = 0.1
    adv_f = fgsm(model, x, y, eps)
    adv_p = pgd(model, x, y, eps, steps=10, generator=torch.Generator().manual_seed(3))
    assert (adv_p - x).abs().max() <= eps + 1e-6
    loss = nn.functional.cross_entropy
    per_sample_f = loss(model(adv_f), y, reduction="none")
    per_sample_p = loss(model(adv_p), y, reduction="none")
    assert torch.all(per_sample_p >= per_sample_f - 1e-5)
    # On a linear two-class model the best L∞ point is the corner FGSM reaches; PGD finds it too.
    torch.testing.assert_close(adv_p, adv_f)


def test_pgd_on_a_nonlinear_model_stays_in_the_ball_and_the_clamp():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    x = torch.rand(16, 6, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    eps = 0.2
    adv = pgd(model, x, y, eps, steps=7, step_size=0.05, lower=0.0, upper=1.0, generator=g)
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    loss = nn.functional.cross_entropy
    assert loss(model(adv), y) > loss(model(x), y)


def test_one_pgd_step_without_random_start_is_fgsm():
    model = linear_model()
    x = torch.tensor([[0.5, 0.0, 0.0], [0.2, -0.3, 0.7]])
    y = torch.tensor([0, 1])
    torch.testing.assert_close(
        pgd(model, x, y, 0.1, steps=1, step_size=0.1), fgsm(model, x, y, 0.1)
    )


def test_pgd_random_start_comes_from_the_generator_only():
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).eval()
    x, y = torch.zeros(4, 3), torch.tensor([0, 1, 0, 1])

    def run(seed: int) -> torch.Tensor:
        return pgd(
            model, x, y, 0.3, steps=1, step_size=0.01, generator=torch.Generator().manual_seed(seed)
        )

    torch.manual_seed(123)
    a = run(5)
    torch.manual_seed(456)  # the global RNG must not matter
    torch.testing.assert_close(run(5), a)
    assert not torch.allclose(run(6), a)


# ---------------------------------------------------------------------------- the ε convention
def test_with_mean_and_std_the_perturbation_is_in_pixel_units():
    mean, std = 0.5, 0.25
    pixels = torch.tensor([[0.5, 0.5, 0.5], [0.95, 0.02, 0.5]])
    x = (pixels - mean) / std  # what a datamodule hands the model
    y = torch.tensor([0, 0])
    adv = fgsm(linear_model(), x, y, eps=0.1, mean=mean, std=std)
    adv_pixels = adv * std + mean
    # Each pixel moves by exactly ε = 0.1 (0.4 in normalised units); against label 0 the step
    # is 0.1·(-1, 1, -1), which keeps row 1 (0.85, 0.12, 0.4) inside [0, 1].
    torch.testing.assert_close(adv_pixels - pixels, 0.1 * SIGN_LABEL0.expand(2, 3))
    torch.testing.assert_close(adv[0] - x[0], 0.4 * SIGN_LABEL0)
    # Label 1 pushes the other way: 0.95 + 0.1 and 0.02 - 0.1 are clamped to the [0, 1] pixels.
    adv1 = fgsm(linear_model(), x[1:], torch.tensor([1]), eps=0.1, mean=mean, std=std)
    torch.testing.assert_close(adv1 * std + mean, torch.tensor([[1.0, 0.0, 0.6]]))


def test_per_channel_statistics_and_custom_pixel_range():
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.4, 0.1]
    g = torch.Generator().manual_seed(0)
    pixels = 0.2 + 0.6 * torch.rand(4, 3, 2, 2, generator=g)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x = (pixels - m) / s
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).eval()
    y = torch.tensor([0, 1, 2, 3])
    adv = fgsm(model, x, y, 0.05, mean=mean, std=std)
    delta = adv * s + m - pixels
    torch.testing.assert_close(delta.abs(), torch.full_like(delta, 0.05))
    # The sign of the step equals the sign of the gradient in normalised space (std > 0).
    xg = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(xg), y, reduction="sum").backward()
    torch.testing.assert_close(delta.sign(), xg.grad.sign())
    # A custom pixel range clamps in pixel units.
    clamped = fgsm(model, x, y, 0.5, lower=0.1, upper=0.7, mean=mean, std=std) * s + m
    assert clamped.min() >= 0.1 - 1e-6 and clamped.max() <= 0.7 + 1e-6


def test_without_statistics_raw_inputs_are_not_clamped():
    x = torch.tensor([[5.0, -5.0, 0.0]])
    adv = fgsm(linear_model(), x, torch.tensor([0]), 2.0)
    torch.testing.assert_close(adv, x + 2.0 * SIGN_LABEL0)


# ---------------------------------------------------------------------------- argument errors
X, Y = torch.zeros(2, 3), torch.tensor([0, 1])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": -0.1}, ValueError, r"`eps` must be a number >= 0, got -0.1"),
        ({"eps": True}, ValueError, r"`eps` must be a number >= 0"),
        ({"eps": math.inf}, ValueError, r"`eps` must be a number >= 0"),
        (
            {"eps": -1, "mean": 0.5, "std": 0.2},
            ValueError,
            r"`eps` must be a number >= 0 \(in \[0, 1\] pixel units\)",
        ),
        ({"y": torch.tensor([0, 1, 1])}, ValueError, r"`y` must be \(2,\) class indices"),
        ({"x": torch.zeros(2, 3, dtype=torch.long)}, TypeError, r"`x` must be a floating-point"),
        ({"model": 3}, TypeError, r"`model` must be a callable module, got int"),
        ({"lower": 1.0, "upper": 0.0}, ValueError, r"`lower` must be below `upper`"),
        ({"lower": "a"}, ValueError, r"`lower` must be a finite number or None, got 'a'"),
        ({"mean": 0.5}, ValueError, r"`mean` and `std` must be given together"),
        ({"mean": 0.5, "std": 0.0}, ValueError, r"`std` must be positive, got 0.0"),
        ({"mean": "abc", "std": 1.0}, ValueError, r"`mean` must be a number or a sequence"),
        ({"mean": math.nan, "std": 1.0}, ValueError, r"`mean` must hold finite numbers"),
        ({"mean": [0, 0], "std": [1, 1, 1]}, ValueError, r"must have as many entries"),
        ({"mean": [0, 0], "std": [1, 1]}, ValueError, r"must match the channel dimension"),
    ],
)
def test_fgsm_rejects_bad_arguments(kwargs, error, match):
    args = {"model": linear_model(), "x": X, "y": Y, "eps": 0.1} | kwargs
    with pytest.raises(error, match=match):
        fgsm(**args)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": 0}, ValueError, r"`steps` must be an integer >= 1, got 0"),
        ({"steps": 2.0}, ValueError, r"`steps` must be an integer >= 1"),
        ({"step_size": 0}, ValueError, r"`step_size` must be a positive number or None, got 0"),
        ({"generator": 0}, TypeError, r"`generator` must be a torch.Generator or None, got int"),
        ({"eps": -1}, ValueError, r"`eps` must be a number >= 0"),
    ],
)
def test_pgd_rejects_bad_arguments(kwargs, error, match):
    args = {"model": linear_model(), "x": X, "y": Y, "eps": 0.1} | kwargs
    with pytest.raises(error, match=match):
        pgd(**args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsilons": []}, r"`epsilons` must be a non-empty list of numbers, got \[\]"),
        ({"epsilons": "0.1"}, r"`epsilons` must be a non-empty list"),
        ({"epsilons": [0.1, -0.2]}, r"`epsilons` must be a number >= 0 .*got -0.2"),
        ({"epsilons": [0.1, 0.1]}, r"`epsilons` must be distinct"),
        ({"pgd_steps": -1}, r"`pgd_steps` must be an integer >= 0, got -1"),
        ({"pgd_step_size": 0.0}, r"`pgd_step_size` must be a positive number or None"),
        ({"mean": [0.5]}, r"`mean` and `std` must be given together"),
        ({"mean": 0.5, "std": -1.0}, r"`std` must be positive"),
        ({"lower": 1, "upper": 0}, r"`lower` must be below `upper`"),
        ({"seed": "x"}, r"`seed` must be an integer, got 'x'"),
        ({"n_bins": 0}, r"`n_bins` must be an integer >= 1, got 0"),
        ({"input_key": True}, r"`input_key` must be a list index or a dict key"),
    ],
)
def test_adversarial_eval_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdversarialEval(**kwargs)


def test_adversarial_eval_names_missing_batch_entries():
    with pytest.raises(TypeError, match=r"reads the inputs at `batch\['image'\]`"):
        AdversarialEval(input_key="image")._unpack({"x": torch.zeros(1)})
    with pytest.raises(
        TypeError, match=r"needs the targets at `batch\[1\]` to be a tensor, got list"
    ):
        AdversarialEval()._unpack([torch.zeros(1), [1]])


def test_adversarial_eval_needs_matplotlib_for_the_diagram(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"install it .* or pass `save_diagram=False`"):
        AdversarialEval().setup(None, None, "test")
    AdversarialEval(save_diagram=False).setup(None, None, "test")  # no matplotlib needed


# ---------------------------------------------------------------------------- callback in a Trainer
class LogitsAreInputs(pl.LightningModule):
    """forward(x) = x·scale: the inputs are the logits, so every number can be worked by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def test_step(self, batch, batch_idx):
        return None


def quiet_trainer(root: Path, callbacks: list, **kw) -> pl.Trainer:
    opts = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": str(root),
    }
    return pl.Trainer(callbacks=callbacks, **opts | kw)


def test_callback_logs_hand_computed_values_on_an_identity_model(tmp_path):
    # Logits (log 0.9, log 0.1): confidence 0.9 on class 0. Labels 0, 0, 1, 1: accuracy 0.5,
    # so conf_gap = 0.9 - 0.5 = +0.4 (over-confident). FGSM moves (a, b) to (a - ε, b + ε) against
    # label 0, lowering the margin log 9 ≈ 2.197 by 2ε: ε = 1.0 keeps both hits, ε = 1.2 flips them.
    over = torch.log(torch.tensor([[0.9, 0.1]] * 4))
    # Logits (log 0.6, log 0.4), all labels 0: accuracy 1, conf_gap = 0.6 - 1 = -0.4.
    under = torch.log(torch.tensor([[0.6, 0.4]] * 4))
    cases = [
        (over, torch.tensor([0, 0, 1, 1]), 0.4, {"1": 0.5, "1.2": 0.0}),
        (under, torch.tensor([0, 0, 0, 0]), -0.4, {"1": 0.0, "1.2": 0.0}),
    ]
    for x, y, gap, fgsm_acc in cases:
        model = LogitsAreInputs()
        cb = AdversarialEval(epsilons=[1.0, 1.2], save_diagram=False)
        trainer = quiet_trainer(tmp_path, [cb])
        with pytest.warns(UserWarning, match=r"attacked as unnormalised"):
            trainer.test(model, DataLoader(TensorDataset(x, y), batch_size=3), verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        assert metrics["test/conf_gap"] == pytest.approx(gap, abs=1e-5)
        for eps, acc in fgsm_acc.items():
            assert metrics[f"test/fgsm_acc@{eps}"] == pytest.approx(acc)
        assert cb.confidences.shape == (4,) and cb.correct.shape == (4,)
        assert float(cb.confidences.mean() - cb.correct.mean()) == pytest.approx(gap, abs=1e-5)
        assert model.scale.grad is None and model.scale.item() == 1.0


def test_callback_on_digits_logs_every_key_keeps_weights_and_uses_pixel_units(tmp_path):
    pl.seed_everything(0, verbose=False)
    dm = DigitsDataModule(val_size=50, test_size=40, batch_size=16)
    model = SoftLabelClassifier(SmallCNN(num_classes=10, width=4), num_classes=10)
    trainer = quiet_trainer(tmp_path, [], max_epochs=1, limit_train_batches=5, limit_val_batches=1)
    trainer.fit(model, datamodule=dm)

    cb = AdversarialEval(epsilons=[0.0, 0.05, 0.1], pgd_steps=3, seed=7)
    trainer = quiet_trainer(tmp_path, [cb])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.test(model, datamodule=dm, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    expected = {f"test/{kind}_acc@{e}" for kind in ("fgsm", "pgd") for e in ("0", "0.05", "0.1")}
    assert expected | {"test/conf_gap", "test/acc", "test/ece"} <= set(metrics)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())

    # ε = 0 is the clean accuracy; the stored hits agree with the module's own metric.
    assert metrics["test/fgsm_acc@0"] == pytest.approx(metrics["test/acc"])
    assert float(cb.correct.mean()) == pytest.approx(metrics["test/acc"])
    assert metrics["test/conf_gap"] == pytest.approx(
        float(cb.confidences.mean() - cb.correct.mean()), abs=1e-6
    )
    # The logged FGSM accuracy is fgsm() in pixel units with the datamodule's statistics.
    x, y = dm.test_dataset.images, dm.test_dataset.labels
    model.eval()
    for eps in (0.05, 0.1):
        adv = fgsm(model, x, y, eps, mean=dm.mean, std=dm.std)
        assert ((adv * dm.std + dm.mean) - (x * dm.std + dm.mean)).abs().max() <= eps + 1e-5
        acc = (model(adv).argmax(1) == y).float().mean().item()
        assert metrics[f"test/fgsm_acc@{eps:g}"] == pytest.approx(acc, abs=1e-6)
    # The reliability diagram went to the run folder.
    assert cb.diagram_path == tmp_path / "reliability_diagram.png"
    assert matplotlib.image.imread(cb.diagram_path).shape[2] in (3, 4)


def test_callback_from_the_command_line(tmp_path):
    from lightning_mixup.cli import main

    root = Path(__file__).resolve().parents[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = main(
            [
                "fit",
                f"--config={root / 'examples' / 'digits.yaml'}",
                f"--trainer.default_root_dir={tmp_path}",
                "--trainer.fast_dev_run=true",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false",
                "--model.backbone.init_args.width=4",
                "--trainer.callbacks+=lightning_mixup.evaluation.robustness.AdversarialEval",
                "--trainer.callbacks.epsilons=[0.03,0.1]",
                "--trainer.callbacks.save_diagram=false",
            ]
        )
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, AdversarialEval))
    assert cb.epsilons == [0.03, 0.1]
    assert {"test/fgsm_acc@0.03", "test/fgsm_acc@0.1", "test/conf_gap"} <= set(
        cli.trainer.callback_metrics
    )


class SavesGatheredCalibration(LogitsAreInputs):
    """Saves, per rank, what AdversarialEval gathered (the parent of ddp_spawn cannot see it)."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir

    def on_test_end(self) -> None:
        cb = next(c for c in self.trainer.callbacks if isinstance(c, AdversarialEval))
        path = Path(self.out_dir) / f"rank{self.global_rank}.pt"
        torch.save({"conf": cb.confidences, "hit": cb.correct}, path)


@pytest.mark.slow
def test_callback_gathers_all_processes_under_ddp(tmp_path):
    p = torch.tensor([0.55, 0.6, 0.7, 0.8, 0.9, 0.95])
    x = torch.log(torch.stack([p, 1 - p], dim=1))
    y = torch.tensor([0, 1, 0, 0, 1, 0])  # hits: 1 0 1 1 0 1 → accuracy 4/6
    cb = AdversarialEval(epsilons=[0.0])
    trainer = quiet_trainer(tmp_path, [cb], devices=2, strategy="ddp_spawn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.test(SavesGatheredCalibration(str(tmp_path)), DataLoader(TensorDataset(x, y), 2))
    expected_gap = p.mean().item() - 4 / 6
    assert float(trainer.callback_metrics["test/conf_gap"]) == pytest.approx(expected_gap, abs=1e-5)
    assert float(trainer.callback_metrics["test/fgsm_acc@0"]) == pytest.approx(4 / 6)
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        order = saved["conf"].argsort()
        torch.testing.assert_close(saved["conf"][order], p)
        torch.testing.assert_close(saved["hit"][order], torch.tensor([1.0, 0, 1, 1, 0, 1]))
    assert (tmp_path / "reliability_diagram.png").exists()


class UnevenRanks(SavesGatheredCalibration):
    """Rank 0 tests samples 0-3, rank 1 sample 4 only: states of different lengths.

    One batch on each rank: ranks that run different numbers of steps can abort in gloo's
    teardown ("terminate called without an active exception"), which failed this test at times.
    """

    def __init__(self, out_dir: str, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__(out_dir)
        self.x, self.y = x, y

    def test_dataloader(self) -> DataLoader:
        part = slice(0, 4) if self.global_rank == 0 else slice(4, 5)
        return DataLoader(TensorDataset(self.x[part], self.y[part]), batch_size=4)


@pytest.mark.slow
def test_uneven_processes_are_gathered_in_rank_order_by_the_metric_sync(tmp_path):
    # No distributed sampler: each rank has its own data, so the states differ in length (4 and
    # 1), and torchmetrics' sync must pad and trim them. Both ranks end with rank 0's values then
    # rank 1's, as 1-D float32 CPU tensors; rank 0 alone draws the diagram.
    p = torch.tensor([0.55, 0.6, 0.7, 0.8, 0.9])
    x = torch.log(torch.stack([p, 1 - p], dim=1))
    y = torch.tensor([0, 1, 0, 0, 1])
    cb = AdversarialEval(epsilons=[0.0])
    trainer = quiet_trainer(
        tmp_path, [cb], devices=2, strategy="ddp_spawn", use_distributed_sampler=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.test(UnevenRanks(str(tmp_path), x, y))
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        for values in saved.values():
            assert values.dtype == torch.float32 and values.ndim == 1
            assert values.device == torch.device("cpu")
        torch.testing.assert_close(saved["conf"], p)
        torch.testing.assert_close(saved["hit"], torch.tensor([1.0, 0, 1, 1, 0]))
    assert (tmp_path / "reliability_diagram.png").exists()


def test_a_second_test_run_starts_from_empty_states(tmp_path):
    p = torch.tensor([0.6, 0.7, 0.9])
    x, y = torch.log(torch.stack([p, 1 - p], dim=1)), torch.tensor([0, 1, 0])
    cb = AdversarialEval(epsilons=[0.0], save_diagram=False)
    trainer = quiet_trainer(tmp_path, [cb])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(2):
            trainer.test(LogitsAreInputs(), DataLoader(TensorDataset(x, y), 2), verbose=False)
            torch.testing.assert_close(cb.confidences, p)
            torch.testing.assert_close(cb.correct, torch.tensor([1.0, 0, 1]))


def test_diagram_goes_to_lightnings_log_dir(tmp_path):
    # With a CSV logger, trainer.log_dir is its versioned folder, not default_root_dir.
    p = torch.tensor([0.6, 0.7, 0.9])
    x, y = torch.log(torch.stack([p, 1 - p], dim=1)), torch.tensor([0, 1, 0])
    cb = AdversarialEval(epsilons=[0.0])
    logger = CSVLogger(tmp_path, name="csv", version=3)
    trainer = quiet_trainer(tmp_path / "root", [cb], logger=logger)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.test(LogitsAreInputs(), DataLoader(TensorDataset(x, y), 2), verbose=False)
    assert cb.diagram_path == tmp_path / "csv" / "version_3" / "reliability_diagram.png"
    assert cb.diagram_path.exists() and not (tmp_path / "root").exists()
