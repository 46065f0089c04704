"""The mix never writes into memory the batch does not own (views, shared storages)."""

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_mixup import MixupCallback
from lightning_mixup import functional as F
from lightning_mixup.policies import CutMix, MixUp, MixUpOrCutMix
from tests.probes import RecordingModule, tiny_trainer

POLICIES = [
    MixUp(1.0, "batch"),
    MixUp(1.0, "elem"),
    CutMix(1.0, "batch"),
    CutMix(1.0, "elem"),
    MixUpOrCutMix(MixUp(1.0, "elem"), CutMix(1.0, "elem"), 0.5),
]


def larger_storage(base: torch.Tensor, n: int) -> torch.Tensor:
    """A tensor (not a view) over the first ``n`` samples of ``base``'s storage."""
    return torch.empty(0, dtype=base.dtype).set_(base.untyped_storage(), 0, (n, *base.shape[1:]))


def test_owns_memory_tells_fresh_tensors_from_shared_ones():
    stored = torch.rand(16, 3, 8, 8)
    assert F.owns_memory(stored.clone())
    assert F.owns_memory(torch.stack(list(stored[:4])))  # what the default collate makes
    assert not F.owns_memory(stored[4:8])  # a slice: a view
    assert not F.owns_memory(stored[:4])  # a view even at offset 0
    assert not F.owns_memory(stored.permute(0, 2, 3, 1))  # a view of the whole storage
    assert not F.owns_memory(larger_storage(stored, 4))  # no view, but a larger storage


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"{type(p).__name__}-{p.mode}")
@pytest.mark.parametrize("kind", ["slice", "larger_storage"])
def test_apply_copies_inputs_it_does_not_own(policy, kind):
    stored = torch.rand(16, 3, 8, 8)
    pristine = stored.clone()
    x = stored[4:12] if kind == "slice" else larger_storage(stored, 8)
    reference = x.clone()
    target = torch.eye(8)
    params = policy.sample(x.shape, np.random.default_rng(3))
    mixed, soft = policy.apply(x, target, params, buffer=torch.empty_like(reference))
    assert torch.equal(stored, pristine)  # the data behind the batch is untouched
    assert mixed.data_ptr() != x.data_ptr()
    expected, expected_soft = policy.apply(reference.clone(), target, params)
    assert torch.equal(mixed, expected) and torch.equal(soft, expected_soft)
    assert not torch.equal(mixed, reference)  # and it was mixed


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"{type(p).__name__}-{p.mode}")
def test_apply_mixes_a_fresh_batch_in_place(policy):
    x = torch.rand(8, 3, 8, 8)
    target = torch.eye(8)
    params = policy.sample(x.shape, np.random.default_rng(3))
    mixed, soft = policy.apply(x, target, params)
    assert mixed is x
    assert torch.equal(target, torch.eye(8)) and soft is not target  # targets never written


class CollateProbe(MixupCallback.__mro__[1]):  # a plain Callback placed before the mix
    def __init__(self) -> None:
        self.pointers: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.pointers.append(batch[0].data_ptr())


def sliced_batches(stored: torch.Tensor, labels: torch.Tensor, size: int) -> list[list]:
    """A dataset kept as one tensor, served as ready-made batch slices (views)."""
    return [[stored[i : i + size], labels[i : i + size]] for i in range(0, len(stored), size)]


class FreshCopies(torch.utils.data.Dataset):
    """The same batches, as new tensors at every fetch: the batch owns them."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> list:
        return [t.clone() for t in self.batches[i]]


def fit_records(batches, epochs: int = 2) -> list[dict]:
    module = RecordingModule(num_classes=4, in_features=2 * 4 * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_trainer(max_epochs=epochs, callbacks=[MixupCallback(alpha=1.0, seed=0)]).fit(
            module, DataLoader(batches, batch_size=None)
        )
    return module.train_records


def test_dataset_served_as_views_is_never_modified_and_every_epoch_mixes_clean_data():
    stored, labels = torch.rand(16, 2, 4, 4), torch.arange(16) % 4
    pristine = stored.clone()
    served = fit_records(sliced_batches(stored, labels, 8))
    assert torch.equal(stored, pristine)
    fresh = fit_records(sliced_batches(pristine.clone(), labels, 8))
    own = fit_records(FreshCopies(sliced_batches(pristine, labels, 8)))
    assert len(served) == len(own) == 4
    for a, b, c in zip(served, fresh, own):
        assert torch.equal(a["x"], c["x"]) and torch.equal(a["y"], c["y"])
        assert torch.equal(b["x"], c["x"])
    assert any((r["y"].max(1).values < 1).any() for r in served)  # the batches were mixed


def test_collated_batches_are_mixed_in_place():
    probe = CollateProbe()
    seen: list[int] = []

    class Module(RecordingModule):
        def training_step(self, batch, batch_idx):
            seen.append(batch[0].data_ptr())
            return super().training_step(batch, batch_idx)

    data = [(torch.rand(2, 4, 4), i % 4) for i in range(16)]
    tiny_trainer(callbacks=[probe, MixupCallback(alpha=1.0, seed=0)]).fit(
        Module(num_classes=4), DataLoader(data, batch_size=8)
    )
    assert len(seen) == 2 and seen == probe.pointers  # no copy of a batch the collate made


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dataset_kept_on_the_gpu_is_never_modified():
    stored = torch.rand(16, 2, 4, 4, device="cuda")
    labels = (torch.arange(16) % 4).cuda()
    pristine = stored.clone()
    module = RecordingModule(num_classes=4, in_features=2 * 4 * 4)
    trainer = tiny_trainer(
        accelerator="gpu", max_epochs=2, callbacks=[MixupCallback(alpha=1.0, seed=0)]
    )
    trainer.fit(module, DataLoader(sliced_batches(stored, labels, 8), batch_size=None))
    assert torch.equal(stored, pristine)
    assert any((r["y"].max(1).values < 1).any() for r in module.train_records)
