"""Max-softmax OOD detection: ``ood_auroc`` on hand-made cases and ``OODEval`` in real test runs."""

from __future__ import annotations

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mixup import DigitsDataModule, SmallCNN, SoftLabelClassifier
from lightning_mixup.evaluation import AdversarialEval, OODEval, TemperatureScaling, fgsm, ood_auroc
from lightning_mixup.evaluation.ood import max_softmax

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- ood_auroc
def test_perfect_separation_is_one():
    assert ood_auroc(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0.5, 0.2])) == 1.0


def test_reversed_separation_is_zero():
    assert ood_auroc(torch.tensor([0.1, 0.2]), torch.tensor([0.5, 0.6, 0.99])) == 0.0


def test_identical_scores_are_chance():
    assert ood_auroc(torch.full((5,), 0.7), torch.full((3,), 0.7)) == 0.5


def test_a_hand_computed_case():
    # Pairs (in, out): 0.9 beats 0.5 and 0.1; 0.4 loses to 0.5, beats 0.1; 0.5 ties 0.5 (½)
    # and beats 0.1: (2 + 1 + 1.5) / 6 = 0.75.
    auroc = ood_auroc(torch.tensor([0.9, 0.4, 0.5]), torch.tensor([0.5, 0.1]))
    assert auroc == pytest.approx(4.5 / 6)


def test_only_the_order_of_the_scores_matters():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(50, generator=g), torch.rand(40, generator=g) * 0.8
    expected = ood_auroc(a, b)
    assert ood_auroc(a.double() * 0.5, b.double() * 0.5) == pytest.approx(expected)
    # Scores outside [0, 1] (e.g. negative energies) keep their order through the sigmoid.
    assert ood_auroc(a * 20 - 10, b * 20 - 10) == pytest.approx(expected)
    pairs = (a[:, None] > b[None, :]).double().mean().item()
    assert expected == pytest.approx(pairs)


@pytest.mark.parametrize(
    ("in_scores", "out_scores", "error", "match"),
    [
        (torch.empty(0), torch.ones(2), ValueError, r"`in_scores` must be a non-empty 1-D"),
        (torch.ones(2), torch.ones(2, 1), ValueError, r"`out_scores` .* got shape \(2, 1\)"),
        (torch.tensor([0.5, math.nan]), torch.ones(2), ValueError, r"`in_scores` must be finite"),
        (torch.ones(2), torch.tensor([True, False]), TypeError, r"`out_scores` must hold real"),
        ("high", torch.ones(2), TypeError, r"`in_scores` must be a 1-D tensor"),
    ],
)
def test_auroc_errors(in_scores, out_scores, error, match):
    with pytest.raises(error, match=match):
        ood_auroc(in_scores, out_scores)


def test_max_softmax():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    torch.testing.assert_close(max_softmax(logits), torch.tensor([0.5, 0.75]))
    dense = torch.zeros(2, 2, 2, 2)
    dense[1, 0, 0, 0] = math.log(3.0)  # one pixel at 0.75, three at 0.5
    torch.testing.assert_close(max_softmax(dense), torch.tensor([0.5, 0.5625]))
    with pytest.raises(TypeError, match=r"`logits` must be a floating-point"):
        max_softmax(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got \(3,\)"):
        max_softmax(torch.zeros(3))


# ---------------------------------------------------------------------------- the callback
class ConfidenceIsInput(pl.LightningModule):
    """forward(x) = x: each sample's logits are its inputs, so its confidence is known."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Linear(1, 1)

    def forward(self, x):
        return x

    def test_step(self, batch, batch_idx):
        self(batch[0])


def logits_with_confidence(p: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.stack([p, 1 - p], dim=1))


def quiet_trainer(root, callbacks, **kw) -> pl.Trainer:
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


def test_callback_logs_the_auroc_of_each_set(tmp_path):
    p_in = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.6])
    sets = {
        "far": torch.tensor([0.5, 0.55, 0.52]),  # all below the test split: AUROC 1
        "mixed": torch.tensor([0.5, 0.85, 0.99, 0.75]),
    }
    loaders = {
        name: DataLoader(
            TensorDataset(logits_with_confidence(p), -torch.ones(len(p))), batch_size=2
        )
        for name, p in sets.items()
    }
    cb = OODEval(loaders)
    test = DataLoader(TensorDataset(logits_with_confidence(p_in), torch.zeros(5).long()), 2)
    trainer = quiet_trainer(tmp_path, [cb])
    trainer.test(ConfidenceIsInput(), test)
    metrics = trainer.callback_metrics
    assert float(metrics["test/ood_auroc/far"]) == pytest.approx(1.0)
    expected = ood_auroc(p_in, sets["mixed"])
    assert float(metrics["test/ood_auroc/mixed"]) == pytest.approx(expected)
    assert 0.3 < expected < 0.9
    assert cb.results == pytest.approx({"far": 1.0, "mixed": expected})


def test_the_ood_forward_goes_through_temperature_scaling(tmp_path):
    # Temperature scaling changes the confidences of both splits; with T set, the AUROC is the
    # one of the scaled confidences, whatever the order of the callbacks.
    g = torch.Generator().manual_seed(0)
    x_in, x_out = torch.randn(30, 3, generator=g) * 3, torch.randn(30, 3, generator=g)
    x_in[:, 0] += torch.linspace(0, 6, 30)
    x_out[:, 1] += 2
    scaled = ood_auroc(max_softmax(x_in / 4.0), max_softmax(x_out / 4.0))
    assert scaled != pytest.approx(ood_auroc(max_softmax(x_in), max_softmax(x_out)), abs=1e-3)
    for order in (0, 1):
        ts = TemperatureScaling()
        ts.load_state_dict({"temperature": 4.0, "fitted": True})
        ood = OODEval({"out": DataLoader(TensorDataset(x_out), batch_size=8)})
        trainer = quiet_trainer(tmp_path, [ts, ood] if order == 0 else [ood, ts])
        trainer.test(ConfidenceIsInput(), DataLoader(TensorDataset(x_in), batch_size=8))
        assert float(trainer.callback_metrics["test/ood_auroc/out"]) == pytest.approx(scaled)


def test_test_scores_come_from_the_test_step_not_from_other_callbacks(tmp_path):
    # AdversarialEval calls the module on attacked inputs in its on_test_batch_end, before
    # OODEval's: the test split's scores must still be those of the clean forward in test_step.
    g = torch.Generator().manual_seed(1)
    x_in, x_out = torch.randn(24, 2, generator=g) * 2, torch.randn(24, 2, generator=g)
    y_in = x_in.argmax(1)
    clean = ood_auroc(max_softmax(x_in), max_softmax(x_out))
    attack = AdversarialEval(epsilons=[1.5], save_diagram=False)
    ood = OODEval({"out": DataLoader(TensorDataset(x_out), batch_size=8)})
    trainer = quiet_trainer(tmp_path, [attack, ood])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AdversarialEval: no mean/std, raw inputs
        trainer.test(ConfidenceIsInput(), DataLoader(TensorDataset(x_in, y_in), batch_size=8))
    attacked = ood_auroc(
        max_softmax(fgsm(ConfidenceIsInput(), x_in, y_in, 1.5)), max_softmax(x_out)
    )
    assert attacked != pytest.approx(clean, abs=1e-3)
    assert ood.results["out"] == pytest.approx(clean)


def test_digits_classifier_on_the_datamodule_sets(tmp_path):
    pl.seed_everything(0)
    dm = DigitsDataModule(classes=[0, 1, 2, 3, 4], batch_size=64, val_size=100, test_size=200)
    model = SoftLabelClassifier(SmallCNN(num_classes=5, width=8), 5, lr_scheduler=None)
    cb = OODEval()
    trainer = quiet_trainer(tmp_path, [cb], max_epochs=2, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    metrics = trainer.callback_metrics
    for name in ("unseen_classes", "noise"):
        value = float(metrics[f"test/ood_auroc/{name}"])
        assert 0.0 <= value <= 1.0 and value == pytest.approx(cb.results[name], abs=1e-6)
    # The callback's test-split scores are the model's own confidences on the test split.
    model.eval()
    with torch.no_grad():
        conf_in = torch.cat([max_softmax(model(x)) for x, _ in dm.test_dataloader()])
        conf_out = torch.cat([max_softmax(model(x)) for x, _ in dm.ood_dataloaders()["noise"]])
    assert cb.results["noise"] == pytest.approx(ood_auroc(conf_in, conf_out), abs=1e-6)


def test_without_loaders_the_datamodule_must_provide_them(tmp_path):
    trainer = quiet_trainer(tmp_path, [OODEval()])
    test = DataLoader(TensorDataset(torch.zeros(2, 2)), batch_size=2)
    with pytest.raises(ValueError, match=r"has no such method; pass `OODEval\(ood_loaders="):
        trainer.test(ConfidenceIsInput(), test)


def test_an_empty_set_is_skipped_with_a_warning(tmp_path):
    empty = DataLoader(TensorDataset(torch.zeros(0, 2)), batch_size=2)
    full = DataLoader(TensorDataset(torch.zeros(3, 2)), batch_size=2)
    cb = OODEval({"empty": empty, "full": full})
    trainer = quiet_trainer(tmp_path, [cb])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.test(ConfidenceIsInput(), DataLoader(TensorDataset(torch.ones(3, 2)), batch_size=2))
    assert any("'empty' is empty" in str(w.message) for w in record)
    assert set(cb.results) == {"full"} and "test/ood_auroc/empty" not in trainer.callback_metrics


class DictOutput(ConfidenceIsInput):
    """A forward that returns a dict, as many wrapped models do: it holds no logits tensor."""

    def forward(self, x):
        return {"logits": x}

    def test_step(self, batch, batch_idx):
        self(batch[0])["logits"]


class NoForward(ConfidenceIsInput):
    def test_step(self, batch, batch_idx):
        self.unused(batch[0][:, :1])


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (DictOutput(), "the module's forward returned dict, not logits"),
        (NoForward(), "test_step never called the module's forward"),
    ],
)
def test_a_test_split_without_logits_warns_why(tmp_path, model, why):
    cb = OODEval({"out": DataLoader(TensorDataset(torch.zeros(3, 2)), batch_size=2)})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        quiet_trainer(tmp_path, [cb]).test(
            model, DataLoader(TensorDataset(torch.ones(3, 2)), batch_size=2)
        )
    found = [str(w.message) for w in record if "OODEval" in str(w.message)]
    assert len(found) == 1 and "gave no confidence" in found[0] and why in found[0]
    assert cb.results == {}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ood_loaders": {}}, ValueError, r"`ood_loaders` must name at least one OOD set"),
        ({"ood_loaders": [DataLoader([])]}, TypeError, r"`ood_loaders` must be a mapping"),
        ({"ood_loaders": {"a/b": DataLoader([])}}, ValueError, r"without '/', got 'a/b'"),
        ({"input_key": None}, ValueError, r"`input_key` must be a list index or a dict key"),
    ],
)
def test_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        OODEval(**kwargs)


class UnevenRanks(ConfidenceIsInput):
    """Rank 0 tests samples 0-2, rank 1 samples 3-4; each rank saves what OODEval found."""

    def __init__(self, out_dir: str, x: torch.Tensor) -> None:
        super().__init__()
        self.out_dir, self.x = out_dir, x

    def test_dataloader(self):
        part = slice(0, 3) if self.global_rank == 0 else slice(3, None)
        # 3 and 2 samples in one batch each: uneven rows, the same number of test steps
        return DataLoader(TensorDataset(self.x[part]), batch_size=3)

    def on_test_end(self):
        cb = next(c for c in self.trainer.callbacks if isinstance(c, OODEval))
        torch.save(cb.results, f"{self.out_dir}/rank{self.global_rank}.pt")


@pytest.mark.slow
def test_ddp_gathers_both_kinds_of_scores(tmp_path):
    # Test split and OOD batches split unevenly over 2 processes: every process computes the
    # AUROC of all the scores (a per-process AUROC would differ).
    p_in = torch.tensor([0.9, 0.6, 0.7, 0.52, 0.8])
    p_out = torch.tensor([0.5, 0.75, 0.55, 0.65, 0.85])
    out = DataLoader(TensorDataset(logits_with_confidence(p_out)), batch_size=2)  # 3 batches
    trainer = quiet_trainer(
        tmp_path, [OODEval({"out": out})], devices=2, strategy="ddp_spawn",
        use_distributed_sampler=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.test(UnevenRanks(str(tmp_path), logits_with_confidence(p_in)))
    expected = ood_auroc(p_in, p_out)
    assert expected != pytest.approx(ood_auroc(p_in[:3], p_out[[0, 1, 4]]), abs=1e-3)
    for rank in (0, 1):
        assert torch.load(tmp_path / f"rank{rank}.pt")["out"] == pytest.approx(expected)
    assert float(trainer.callback_metrics["test/ood_auroc/out"]) == pytest.approx(expected)


def test_auroc_is_the_fraction_of_pairs_ranked_right_with_ties_half():
    # The Mann-Whitney statistic, counted pair by pair, on scores with many ties.
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 8, (40,), generator=g).float() / 8
    b = torch.randint(0, 6, (30,), generator=g).float() / 8
    wins = (a[:, None] > b[None, :]).double() + 0.5 * (a[:, None] == b[None, :]).double()
    assert ood_auroc(a, b) == pytest.approx(wins.mean().item())
