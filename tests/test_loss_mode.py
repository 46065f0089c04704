"""``targets="loss"``: the module's own criterion mixed for the step, its targets left as given."""

import copy
import logging
import pickle
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_mixup import MixupCallback
from lightning_mixup._criterion import CriterionSwap, LossMix, MixedCriterion, find_criterion
from lightning_mixup.policies import make_policy
from tests.probes import CriterionModule, MaskData, loader, tiny_trainer

SETTINGS = [
    {"alpha": 1.0},
    {"alpha": 0.0, "cutmix_alpha": 1.0},
    {"alpha": 1.0, "mode": "elem"},
    {"alpha": 1.0, "cutmix_alpha": 1.0, "mode": "elem", "p": 0.7},
]


def fit_records(targets: str, settings: dict, epochs: int = 2, n: int = 24, **module_kw: Any):
    pl.seed_everything(0)
    module = CriterionModule(**module_kw)
    cb = MixupCallback(targets=targets, seed=3, **settings)
    tiny_trainer(max_epochs=epochs, callbacks=[cb], limit_val_batches=1).fit(
        module, loader(n, 5, shape=(2, 4, 4)), loader(4, 4, shape=(2, 4, 4))
    )
    return module


@pytest.mark.parametrize("settings", SETTINGS)
def test_cross_entropy_mixed_as_a_loss_equals_soft_targets(settings):
    loss_mode = fit_records("loss", settings)
    soft_mode = fit_records("soft", settings)
    assert len(loss_mode.records) == len(soft_mode.records) == 10
    for a, b in zip(loss_mode.records, soft_mode.records):
        assert a["y"].dtype == torch.int64 and a["y"].shape == (len(a["x"]),)
        assert b["y"].dtype == torch.float32
        torch.testing.assert_close(a["x"], b["x"], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)
        assert a["criterion"] == "MixedCriterion"
    assert set(loss_mode.val_criteria) == {"CrossEntropyLoss"}
    assert type(loss_mode.criterion) is nn.CrossEntropyLoss
    assert "criterion" not in vars(loss_mode)  # nothing left in front of the submodule


def test_the_batch_keeps_its_labels_and_mixes_its_inputs():
    module = fit_records("loss", {"alpha": 1.0}, epochs=1, n=10)
    for k, record in enumerate(module.records):
        labels = torch.arange(5 * k, 5 * k + 5)  # IdentityData: sample i is the image i, label i
        assert torch.equal(record["y"], labels)
        assert not torch.equal(record["x"][:, 0, 0, 0], labels.float())  # the images are mixed


def test_auto_chooses_loss_with_a_criterion_and_says_so(caplog):
    caplog.set_level(logging.INFO)
    module = fit_records("auto", {"alpha": 1.0}, epochs=1, n=10)
    assert module.records[0]["y"].dtype == torch.int64
    assert "targets='loss' (CriterionModule has `criterion`)" in caplog.text


class NoCriterion(CriterionModule):
    """The loss is computed inline, so there is no attribute to mix."""

    def __init__(self) -> None:
        super().__init__()
        del self.criterion

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)


def test_auto_without_a_criterion_gives_soft_targets_and_says_what_to_change(caplog):
    caplog.set_level(logging.INFO)
    tiny_trainer(callbacks=[MixupCallback()], max_steps=1).fit(NoCriterion(), loader(8, 4))
    assert "targets='soft' (NoCriterion has none of the attributes" in caplog.text
    assert "self.criterion = nn.CrossEntropyLoss()" in caplog.text


def test_loss_mode_without_a_criterion_is_refused_at_setup():
    with pytest.raises(ValueError, match=r"targets='loss' mixes the module's own criterion, but "
                       r"NoCriterion has none of the attributes \('criterion', 'loss_fn'"):  # fmt: skip
        tiny_trainer(callbacks=[MixupCallback(targets="loss")]).fit(NoCriterion(), loader(8, 4))


def test_a_named_criterion_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match=r"`criterion` = 'loss_fn', but CriterionModule has no "
                       r"attribute `loss_fn`"):  # fmt: skip
        tiny_trainer(callbacks=[MixupCallback(criterion="loss_fn")]).fit(
            CriterionModule(), loader(8, 4)
        )


def test_a_criterion_with_soft_targets_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"`criterion` = 'crit' names the loss .* but `targets` "
                       r"is 'soft'"):  # fmt: skip
        MixupCallback(targets="soft", criterion="crit")


def test_label_smoothing_belongs_on_the_criterion_in_loss_mode():
    with pytest.raises(ValueError, match=r"`label_smoothing` = 0.1 smooths soft targets, but "
                       r"targets='loss' \(CriterionModule has `criterion`\).*label_smoothing=0.1"):  # fmt: skip
        tiny_trainer(callbacks=[MixupCallback(label_smoothing=0.1)]).fit(
            CriterionModule(), loader(8, 4)
        )


class Unreduced(nn.Module):
    """A loss without a ``reduction`` attribute (as smp's Dice/Jaccard losses)."""

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, y)


def test_elem_mode_needs_a_criterion_with_a_reduction():
    with pytest.raises(ValueError, match=r"mode='elem'\) scores each sample with its own λ.*"
                       r"`CriterionModule.criterion` \(Unreduced\) has no `reduction`"):  # fmt: skip
        tiny_trainer(callbacks=[MixupCallback(mode="elem")]).fit(
            CriterionModule(criterion=Unreduced()), loader(8, 4)
        )


@pytest.mark.parametrize("targets", ["auto", "loss"])
@pytest.mark.parametrize(
    "criterion",
    [
        nn.MarginRankingLoss(),
        nn.TripletMarginLoss(),
        nn.CTCLoss(),
        nn.functional.triplet_margin_loss,
    ],
    ids=["margin_ranking", "triplet", "ctc", "functional_triplet"],
)
def test_a_loss_whose_second_argument_is_no_target_row_is_refused_at_setup(criterion, targets):
    name = getattr(criterion, "__name__", type(criterion).__name__)
    with pytest.raises(ValueError, match=rf"cannot mix `CriterionModule.criterion` \({name}\): "
                       r"its second argument is not one target row per sample"):  # fmt: skip
        tiny_trainer(callbacks=[MixupCallback(targets=targets)]).fit(
            CriterionModule(criterion=criterion), loader(8, 4)
        )


def test_batch_mode_takes_any_loss_and_blends_the_two_losses():
    module = fit_records("loss", {"alpha": 1.0}, epochs=1, n=10, criterion=Unreduced())
    soft = fit_records("soft", {"alpha": 1.0}, epochs=1, n=10, criterion=Unreduced())
    for a, b in zip(module.records, soft.records):
        torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)


class Raising(nn.CrossEntropyLoss):
    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the criterion failed")


def test_a_criterion_that_raises_leaves_the_original_in_place():
    original = Raising()
    module = CriterionModule(criterion=original)
    with pytest.raises(RuntimeError, match="the criterion failed"):
        tiny_trainer(callbacks=[MixupCallback()]).fit(module, loader(8, 4))
    assert module.criterion is original
    assert "criterion" not in vars(module)
    assert set(module.state_dict()) == {"layer.weight", "layer.bias"}


class Skipping(CriterionModule):
    """Computes the loss without ``self.criterion``: the partners' labels would be lost."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)


def test_a_step_that_never_calls_the_criterion_is_refused():
    module = Skipping()
    with pytest.raises(RuntimeError, match=r"the training step did not call `criterion` on the "
                       r"batch's targets"):  # fmt: skip
        tiny_trainer(callbacks=[MixupCallback(targets="loss")]).fit(module, loader(8, 4))
    assert type(module.criterion) is nn.CrossEntropyLoss and "criterion" not in vars(module)


def test_find_criterion_skips_methods_and_takes_functions():
    class WithMethod(nn.Module):
        def loss(self, a, b):  # a method of the class: not the module's criterion
            return a

    assert find_criterion(WithMethod(), None) is None
    module = WithMethod()
    module.loss_fn = nn.functional.cross_entropy
    assert find_criterion(module, None) == ("loss_fn", nn.functional.cross_entropy)
    assert find_criterion(module, "loss")[0] == "loss"  # named: any callable attribute


def test_a_function_criterion_is_swapped_and_restored():
    module = CriterionModule()
    del module.criterion
    module.criterion = nn.functional.cross_entropy
    fit = tiny_trainer(callbacks=[MixupCallback()], max_epochs=1)
    fit.fit(module, loader(8, 4))
    assert module.records[0]["criterion"] == "MixedCriterion"
    assert module.criterion is nn.functional.cross_entropy


# ---------------------------------------------------------------------- the per-sample rule
@pytest.mark.parametrize(
    "criterion",
    [
        nn.CrossEntropyLoss(),
        nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5, 3.0]), ignore_index=9),
        nn.CrossEntropyLoss(reduction="sum", label_smoothing=0.2),
        nn.NLLLoss(weight=torch.tensor([1.0, 2.0, 0.5, 3.0])),
    ],
)
def test_per_sample_rule_with_one_lambda_equals_the_blend_of_the_two_losses(criterion):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, 3, 3, generator=g)
    if isinstance(criterion, nn.NLLLoss):
        logits = logits.log_softmax(1)
    mask = torch.randint(0, 4, (6, 3, 3), generator=g)
    mask[0, 0] = 9 if criterion.ignore_index == 9 else 0
    params = make_policy(1.0, 0.0).sample((6, 1, 3, 3), np.random.default_rng(1))
    one = LossMix.build(params, mask, dense=True, keep_clean=False, enabled=None)
    assert one is not None and one.single is not None
    per_sample = LossMix(one.rows, one.partner, one.own, None, mask)
    lam = one.single
    expected = lam * criterion(logits, mask) + (1 - lam) * criterion(logits, mask[params.partner])
    for mix in (one, per_sample):
        got = MixedCriterion(criterion, {None: mix})(logits, mask)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert criterion.reduction in ("mean", "sum")  # put back after the per-sample call


def test_per_sample_weights_follow_each_samples_lambda():
    logits = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 1])
    mix = LossMix(4, torch.tensor([1, 0, 3, 2]), torch.tensor([0.9, 0.9, 0.3, 0.3]), None, y)
    got = MixedCriterion(nn.CrossEntropyLoss(), {None: mix})(logits, target=y)
    soft = torch.nn.functional.one_hot(y, 3).float()
    rows = mix.own[:, None] * soft + (1 - mix.own[:, None]) * soft[mix.partner]
    torch.testing.assert_close(got, nn.functional.cross_entropy(logits, rows))


def test_a_criterion_ignoring_its_reduction_is_refused_in_elem_mode():
    class Stubborn(nn.CrossEntropyLoss):
        def forward(self, a, b):
            return nn.functional.cross_entropy(a, b)  # always the mean

    y = torch.tensor([0, 1, 2, 1])
    mix = LossMix(4, torch.tensor([1, 0, 3, 2]), torch.tensor([0.9, 0.9, 0.3, 0.3]), None, y)
    with pytest.raises(ValueError, match=r"Stubborn with reduction='none' returned shape \(\), "
                       r"not one loss per sample \(4\)"):  # fmt: skip
        MixedCriterion(Stubborn(), {None: mix})(torch.randn(4, 3), y)


def test_targets_of_the_wrong_length_are_refused():
    y = torch.tensor([0, 1, 2, 1])
    mix = LossMix(4, torch.tensor([1, 0, 3, 2]), torch.full((4,), 0.5), 0.5, y)
    with pytest.raises(ValueError, match=r"targets hold 3 rows but the mixed batch 4"):
        MixedCriterion(nn.CrossEntropyLoss(), {None: mix})(torch.randn(3, 3), y[:3])
    with pytest.raises(TypeError, match=r"without targets it can recognise"):
        MixedCriterion(nn.CrossEntropyLoss(), {None: mix})(torch.randn(4, 3))


def test_the_swap_keeps_the_state_dict_and_restores_the_attribute():
    module = CriterionModule(criterion=nn.CrossEntropyLoss(weight=torch.ones(16)))
    keys = set(module.state_dict())
    swap = CriterionSwap("criterion", module.criterion)
    y = torch.arange(4)
    swap.install(
        module, {None: LossMix(4, torch.tensor([1, 0, 3, 2]), torch.full((4,), 0.5), 0.5, y)}
    )
    assert isinstance(module.criterion, MixedCriterion)
    assert module.criterion.weight is module._modules["criterion"].weight  # attributes read through
    module.criterion.label_smoothing = 0.2  # and are set through, on the original
    assert module._modules["criterion"].label_smoothing == 0.2
    assert "label_smoothing" not in vars(module.criterion)
    assert set(module.state_dict()) == keys
    swap.restore()
    assert type(module.criterion) is nn.CrossEntropyLoss and set(module.state_dict()) == keys


class Snapshotting(CriterionModule):
    """Deep-copies itself inside the training step, as an EMA or a snapshot callback would."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.snapshot = copy.deepcopy(self)
        return loss


def test_a_copy_or_pickle_of_the_module_during_the_step_holds_the_original_criterion():
    module = Snapshotting(criterion=nn.CrossEntropyLoss(weight=torch.rand(32)))
    tiny_trainer(callbacks=[MixupCallback(alpha=1.0)]).fit(module, loader(8, 4))
    assert module.records[-1]["criterion"] == "MixedCriterion"  # the copy was taken mid-swap
    copied = module.snapshot.criterion
    assert type(copied) is nn.CrossEntropyLoss and copied is module.snapshot._modules["criterion"]
    assert torch.equal(copied.weight, module.criterion.weight)
    mix = LossMix(4, torch.tensor([1, 0, 3, 2]), torch.full((4,), 0.5), 0.5, torch.arange(4))
    mixed = MixedCriterion(nn.CrossEntropyLoss(label_smoothing=0.1), {None: mix})
    for restored in (copy.copy(mixed), copy.deepcopy(mixed), pickle.loads(pickle.dumps(mixed))):
        assert type(restored) is nn.CrossEntropyLoss and restored.label_smoothing == 0.1


# ---------------------------------------------------------------------- dense targets
class MaskCriterion(pl.LightningModule):
    """A per-pixel 1×1-conv classifier trained with ``self.criterion``; records each step."""

    def __init__(self, criterion: nn.Module, num_classes: int = 5) -> None:
        super().__init__()
        self.num_classes, self.criterion = num_classes, criterion
        self.weight = nn.Parameter(torch.randn(num_classes, 2) * 0.1)
        self.records: list[dict[str, Any]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        from lightning_mixup import MixupCallback as M

        x, y = batch
        logits = torch.einsum("bc...,kc->bk...", x, self.weight)
        loss = self.criterion(logits, y)
        cb = next(c for c in self.trainer.callbacks if isinstance(c, M))
        self.records.append({"x": x.clone(), "y": y.clone(), "logits": logits.detach(),
                             "loss": loss.detach(), "params": cb.last_params})  # fmt: skip
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_index_masks_stay_masks_cut_boxes_are_pasted_and_blends_score_both(mode):
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0])
    criterion = nn.CrossEntropyLoss(weight=weight, ignore_index=255)
    module = MaskCriterion(criterion)
    data = DataLoader(MaskData(12, ignore_index=255), batch_size=4)
    cb = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode=mode, seed=1)
    tiny_trainer(max_epochs=3, callbacks=[cb]).fit(module, data)
    originals = [data.dataset[i][1] for i in range(12)]
    saw_cut = saw_blend = False
    for record in module.records:
        y, params = record["y"], record["params"]
        assert y.dtype == torch.int64 and y.shape == (4, 6, 6)
        first = int(record["x"][:, 0].amin())  # an unmixed sample's value; batches are in order
        own = torch.stack(originals[first - first % 4 : first - first % 4 + 4])
        if params is None:
            assert torch.equal(y, own)
            continue
        for i in range(4):
            j, cut = int(params.partner[i]), bool(params.cut[i])
            if cut and params.lam[i] < 1:
                saw_cut = True
                box = tuple(slice(int(a), int(b)) for a, b in zip(params.lo[i], params.hi[i]))
                expected = own[i].clone()
                expected[box] = own[j][box]
                assert torch.equal(y[i], expected)
            else:
                saw_blend |= bool(params.lam[i] < 1)
                assert torch.equal(y[i], own[i])
        # The loss: each pixel scored against the sample's mask (pasted) and, blended, the partner's.
        cut = params.cut if mode == "elem" else params.cut.expand(4)
        share = torch.where(cut, torch.ones(4), params.lam.float())
        logits = record["logits"]
        losses = [criterion(logits, y), criterion(logits, y[params.partner])]
        if mode == "batch":
            lam = float(share[params.partner != torch.arange(4)][0])
            expected = lam * losses[0] + (1 - lam) * losses[1]
        else:
            per = nn.CrossEntropyLoss(weight=weight, ignore_index=255, reduction="none")
            own_part = (share.view(-1, 1, 1) * per(logits, y)).sum()
            other = ((1 - share.view(-1, 1, 1)) * per(logits, y[params.partner])).sum()

            def count(t):
                return (weight[t.masked_fill(t == 255, 0)] * (t != 255)).sum()

            expected = own_part / count(y) + other / count(y[params.partner])
        torch.testing.assert_close(record["loss"], expected, rtol=1e-5, atol=1e-6)
    assert saw_cut and saw_blend


# ---------------------------------------------------------------------- with the other features
def test_keep_clean_in_loss_mode_equals_soft_targets():
    a = fit_records("loss", {"alpha": 2.0, "keep_clean": True}, epochs=1, n=10)
    b = fit_records("soft", {"alpha": 2.0, "keep_clean": True}, epochs=1, n=10)
    for ra, rb in zip(a.records, b.records):
        assert ra["y"].shape == (2 * 5,) and ra["y"].dtype == torch.int64
        assert torch.equal(ra["y"][:5], ra["y"][5:])
        torch.testing.assert_close(ra["loss"], rb["loss"], rtol=1e-5, atol=1e-6)


class Layered(CriterionModule):
    """The criterion module with a hidden block (``block``) to mix at."""

    def __init__(self) -> None:
        super().__init__(in_features=32)
        self.block = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.block(x))


@pytest.mark.parametrize(
    "settings", [{"alpha": 1.0, "mode": "elem"}, {"alpha": 0.0, "cutmix_alpha": 1.0}]
)
def test_mixing_at_a_hidden_layer_in_loss_mode_equals_soft_targets(settings):
    records = {}
    for targets in ("loss", "soft"):
        pl.seed_everything(0)
        module = Layered()
        cb = MixupCallback(targets=targets, mix_at="block", seed=2, **settings)
        tiny_trainer(max_epochs=2, callbacks=[cb]).fit(module, loader(10, 5, shape=(2, 4, 4)))
        records[targets] = module.records
    for a, b in zip(records["loss"], records["soft"]):
        assert a["y"].dtype == torch.int64
        torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)


class TwoLoaders(CriterionModule):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        losses = [self.criterion(self(sub[0]), sub[1]) for sub in batch.values()]
        self.records.append(
            {"loss": sum(losses).detach(), "y": [s[1].clone() for s in batch.values()]}
        )
        return sum(losses)


def test_several_loaders_in_loss_mode_equal_soft_targets():
    out = {}
    for targets in ("loss", "soft"):
        pl.seed_everything(0)
        module = TwoLoaders()
        loaders = {"a": loader(8, 4), "b": loader(12, 3)}
        cb = MixupCallback(targets=targets, alpha=1.0, mode="elem", seed=4)
        tiny_trainer(max_epochs=1, callbacks=[cb]).fit(module, loaders)
        out[targets] = module.records
    for a, b in zip(out["loss"], out["soft"]):
        assert all(y.dtype == torch.int64 for y in a["y"])
        torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)


def test_dict_batches_find_their_keys_and_keep_their_labels():
    module = CriterionModule(input_key="image", target_key="label")
    tiny_trainer(callbacks=[MixupCallback(alpha=1.0)], max_epochs=1).fit(
        module, loader(8, 4, as_dict=True)
    )
    assert module.records[0]["y"].dtype == torch.int64
    assert module.records[0]["criterion"] == "MixedCriterion"


def test_bf16_in_loss_mode_trains_and_keeps_index_labels():
    module = CriterionModule()
    cb = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem")
    tiny_trainer(callbacks=[cb], max_epochs=1, precision="bf16-mixed").fit(module, loader(8, 4))
    assert all(r["y"].dtype == torch.int64 and torch.isfinite(r["loss"]) for r in module.records)


def test_resume_in_loss_mode_repeats_the_uninterrupted_losses(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(epochs, ckpt=None, callbacks=()):
        pl.seed_everything(0)
        module = CriterionModule()
        cb = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem", seed=5)
        trainer = tiny_trainer(max_epochs=epochs, callbacks=[cb, *callbacks],
                               enable_checkpointing=bool(callbacks))  # fmt: skip
        trainer.fit(module, loader(12, 4, shuffle=False), ckpt_path=ckpt)
        return module

    full = run(3)
    run(1, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    resumed = run(3, ckpt=tmp_path / "last.ckpt")
    tail = full.records[3:]
    assert len(resumed.records) == len(tail) == 6
    for a, b in zip(resumed.records, tail):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
        assert torch.equal(a["loss"], b["loss"])


class TokenCriterion(pl.LightningModule):
    """Embedding → masked mean-pool → linear, trained with ``self.loss_fn`` on dict batches."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 3
        self.embed = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 3)
        self.loss_fn = nn.CrossEntropyLoss()
        self.records: list[dict[str, Any]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        h = self.embed(batch["ids"])
        real = batch["mask"].bool()
        pooled = (h * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
        loss = self.loss_fn(self.head(pooled), batch["label"])
        self.records.append({"loss": loss.detach(), "mask": batch["mask"].clone()})
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_token_models_with_a_padding_mask_in_loss_mode_equal_soft_targets():
    from tests.probes import TokenData

    out = {}
    for targets in ("loss", "soft"):
        pl.seed_everything(0)
        module = TokenCriterion()
        cb = MixupCallback(
            targets=targets, alpha=1.0, mode="elem", mix_at="embed", mask_key="mask",
            input_key="ids", target_key="label", ramp_steps=3, seed=6,
        )  # fmt: skip
        tiny_trainer(max_epochs=2, callbacks=[cb]).fit(module, DataLoader(TokenData(16), 4))
        out[targets] = module.records
    for a, b in zip(out["loss"], out["soft"]):
        assert torch.equal(a["mask"], b["mask"])  # the joined masks
        torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)


class SkipsTheEpoch(Layered):
    """Ends each epoch at its second batch: Lightning's `on_train_batch_start` returning -1."""

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        return -1 if batch_idx == 1 else None


def test_an_epoch_ended_by_the_module_leaves_no_stand_in_or_hook_behind():
    module = SkipsTheEpoch()
    cb = MixupCallback(alpha=1.0, mix_at="block")
    tiny_trainer(callbacks=[cb], max_epochs=2).fit(module, loader(16, 4, shape=(2, 4, 4)))
    assert [r["criterion"] for r in module.records] == ["MixedCriterion"] * 2  # one per epoch
    assert type(module.criterion) is nn.CrossEntropyLoss and "criterion" not in vars(module)
    assert not module.block._forward_hooks and not module.block._forward_pre_hooks
