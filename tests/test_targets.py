"""Target conversion (`_targets`): soft rows, index masks kept, range checks, warn-once smoothing."""

import types

import pytest
import torch

from lightning_mixup._targets import Targets
from lightning_mixup.policies import MixParams


def test_num_classes_and_ignore_index_are_found_at_fit_only():
    module = types.SimpleNamespace(num_classes=4, hparams={"ignore_index": 255})
    trainer = types.SimpleNamespace(datamodule=None)
    targets = Targets(None, 0.0, None)
    targets.setup(trainer, module, "validate")
    assert (targets.num_classes, targets.ignore_index) == (None, None)
    targets.setup(trainer, module, "fit")
    assert (targets.num_classes, targets.ignore_index) == (4, 255)
    unknown = Targets(None, 0.0, None)
    unknown.setup(trainer, types.SimpleNamespace(), "fit")  # detection batches need none
    with pytest.raises(ValueError, match="could not find `num_classes`"):
        unknown.prepare("labels", torch.tensor([0, 1]), on_host=True)


def test_off_the_host_indices_are_range_checked_on_the_first_batch_only():
    targets = Targets(3, 0.0, None)
    with pytest.raises(ValueError, match=r"Class indices must lie in \[0, num_classes\)"):
        targets.prepare("labels", torch.tensor([0, 3]), on_host=False)
    targets.prepare("labels", torch.tensor([0, 1]), on_host=False)
    mask = torch.tensor([[[0, 5]]])  # an index mask is not scattered: nothing else would see 5
    assert targets.prepare("index_mask", mask, on_host=False) is mask
    with pytest.raises(ValueError, match="got values \\[5\\]"):
        targets.prepare("index_mask", mask, on_host=True)


def test_an_index_mask_becomes_rows_only_for_a_blend_and_its_ignored_pixels_are_unlabelled():
    targets = Targets(3, 0.0, 255)
    mask = torch.tensor([[0, 255], [2, 1]])
    y = targets.prepare("index_mask", mask, on_host=True)
    cut = MixParams(torch.tensor([1, 0]), torch.tensor([0.5, 0.5]), torch.tensor([True, True]))
    assert targets.rows("index_mask", mask, y, cut) == (y, None)
    blend = MixParams(torch.tensor([1, 0]), torch.tensor([0.5, 0.5]), torch.tensor([False, False]))
    rows, unlabelled = targets.rows("index_mask", mask, y, blend)
    assert rows.shape == (2, 3, 2) and rows[0, :, 1].sum() == 0
    assert torch.equal(unlabelled, mask == 255)


def test_smoothing_float_targets_warns_once_and_leaves_them_as_given():
    targets = Targets(2, 0.2, None)
    soft = torch.tensor([[0.25, 0.75]])
    with pytest.warns(UserWarning, match="applies to class-index targets only") as record:
        assert torch.equal(targets.prepare("soft", soft, on_host=True), soft)
        targets.prepare("soft", soft, on_host=True)
    assert len(record) == 1
    assert torch.allclose(
        targets.prepare("labels", torch.tensor([0]), True), torch.tensor([[0.9, 0.1]])
    )
