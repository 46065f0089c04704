"""Non-finite screening and epoch statistics (`_guard`)."""

import types

import pytest
import torch

from lightning_mixup._guard import Guard
from lightning_mixup.policies import MixParams


@pytest.mark.parametrize("on_host", [True, False])
def test_non_finite_inputs_or_soft_targets_are_counted_and_class_indices_ignored(on_host):
    guard = Guard(skip_nonfinite=True)
    x, bad = torch.zeros(2, 3), torch.tensor([[0.0, float("nan")]])
    answers = [
        guard.finite(x, torch.tensor([0, 1]), "labels", on_host),
        guard.finite(x, bad, "soft", on_host),
        guard.finite(x.clone().fill_(float("inf")), torch.tensor([0, 1]), "labels", on_host),
        guard.finite(torch.tensor([[1, 2]]), torch.tensor([0]), "labels", on_host),  # token ids
    ]
    if on_host:  # read at once, counted on the host
        assert answers == [True, False, False, True] and guard.nonfinite == 2
    else:  # device flags, counted on the device and never read per batch
        assert all(isinstance(a, torch.Tensor) and a.ndim == 0 for a in answers)
        assert [bool(a) for a in answers] == [True, False, False, True]
        assert isinstance(guard.nonfinite, torch.Tensor) and int(guard.nonfinite) == 2
    guard.new_epoch()
    assert guard.nonfinite == 0 and guard.batches == 0
    assert Guard(skip_nonfinite=False).finite(x, bad, "soft", on_host) is None


def test_the_warning_comes_once_and_the_epoch_logs_the_means():
    guard = Guard(skip_nonfinite=True)
    with pytest.warns(UserWarning, match="in batch 3 contain NaN or Inf") as record:
        guard.warn("batch 3")
        guard.warn("batch 4")
    assert len(record) == 1
    half = MixParams(torch.tensor([1, 0]), torch.tensor([0.5, 0.5]), torch.tensor([False, False]))
    guard.add(1.0, half)
    guard.add(0.5, None)  # not mixed: λ = 1
    guard.finite(torch.tensor([float("nan")]), torch.tensor([0]), "labels", True)
    logged = {}
    module = types.SimpleNamespace(
        device=torch.device("cpu"), log=lambda k, v, **kw: logged.update({k: v})
    )
    trainer = types.SimpleNamespace(
        current_epoch=0, strategy=types.SimpleNamespace(reduce=lambda t, reduce_op: t)
    )
    guard.log(trainer, module, "mixup_1")
    assert logged == {
        "mixup_1/strength": 0.75,
        "mixup_1/lambda_mean": 0.75,
        "mixup_1/nonfinite_batches": 1.0,
    }
