"""Batch plumbing (`_batch`): the `mask_key` union and RegMixup's repeated per-sample entries."""

import pytest
import torch

from lightning_mixup._batch import join_masks, repeat_samples
from lightning_mixup.policies import MixParams


def params(partner, lam):
    lam = torch.tensor(lam, dtype=torch.float64)
    return MixParams(torch.tensor(partner), lam, torch.zeros(len(lam), dtype=torch.bool))


MASK = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]])


@pytest.mark.parametrize("marks", ["tokens", "padding"])
def test_a_mixed_sample_keeps_the_real_tokens_of_both_and_an_unmixed_one_its_own(marks):
    mask = MASK if marks == "tokens" else 1 - MASK
    batch = {"mask": mask.clone()}
    join_masks(batch, "mask", marks, params([1, 0, 2], [0.7, 0.7, 1.0]), None, keep_clean=False)
    real = batch["mask"] if marks == "tokens" else 1 - batch["mask"]
    assert torch.equal(real, torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]))


def test_keep_clean_puts_the_clean_masks_first_and_disabled_leaves_them_as_they_were():
    batch = [MASK.clone()]
    join_masks(batch, 0, "tokens", params([1, 0, 2], [0.5, 0.5, 1.0]), None, keep_clean=True)
    assert batch[0].shape == (6, 4) and torch.equal(batch[0][:3], MASK)
    off = [MASK.clone()]
    join_masks(off, 0, "tokens", params([1, 0, 2], [0.5, 0.5, 1.0]), torch.tensor(False), False)
    assert torch.equal(off[0], MASK)


def test_a_mask_of_another_batch_size_is_refused():
    with pytest.raises(ValueError, match=r"`batch\['mask'\]` holds 3 samples but the batch 2\."):
        join_masks({"mask": MASK}, "mask", "tokens", params([1, 0], [0.5, 0.5]), None, False)


def test_repeat_samples_doubles_per_sample_entries_only():
    batch = {
        "x": torch.zeros(3, 2),
        "ids": torch.arange(3),
        "names": ["a", "b", "c"],
        "pair": ("a", "b", "c"),
        "scale": torch.tensor(2.0),
        "classes": ["cat", "dog"],
    }
    repeat_samples(batch, 3, skip=("x",))
    assert batch["x"].shape == (3, 2)  # skipped: the caller writes it
    assert torch.equal(batch["ids"], torch.tensor([0, 1, 2, 0, 1, 2]))
    assert batch["names"] == ["a", "b", "c", "a", "b", "c"]
    assert batch["pair"] == ("a", "b", "c", "a", "b", "c")
    assert batch["scale"].ndim == 0 and batch["classes"] == ["cat", "dog"]
