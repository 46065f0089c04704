"""`Schedule`: the ramp in epochs or optimizer steps, its windows and its argument checks."""

import math

import pytest

from lightning_mixup.schedule import Schedule


def test_epoch_ramp_is_fractional_and_stops():
    ramp = Schedule.from_arguments(ramp_start_epoch=1, ramp_epochs=2, stop_epoch=5)
    assert ramp.unit == "epochs" and ramp.moves and str(ramp) == "epochs [1, 5)"
    assert ramp.strength(0, 9, 10) == 0.0
    assert ramp.strength(2, 0, 10) == pytest.approx(0.5)
    assert ramp.strength(2, 5, 10) == pytest.approx(0.75)
    assert ramp.strength(2, 5, math.inf) == pytest.approx(0.5)  # unknown length: whole epochs
    assert ramp.strength(4, 9, 10) == 1.0 and ramp.strength(5, 0, 10) == 0.0


def test_step_ramp_reads_the_step_only():
    ramp = Schedule.from_arguments(ramp_start_step=10, ramp_steps=20, ramp_shape="cosine")
    assert ramp.unit == "steps" and str(ramp) == "steps [10, inf)"
    assert ramp.strength(epoch=7, step=9) == 0.0
    assert ramp.strength(epoch=0, step=20) == pytest.approx(0.5)
    assert ramp.strength(epoch=0, step=10_000) == 1.0


def test_windows_overlap_only_within_one_unit_when_they_meet():
    first = Schedule.from_arguments(stop_epoch=3)
    assert not first.overlaps(Schedule.from_arguments(ramp_start_epoch=3))
    assert first.overlaps(Schedule.from_arguments(ramp_start_epoch=2))
    assert first.overlaps(Schedule.from_arguments(ramp_start_step=10**9))  # units differ
    assert not Schedule.from_arguments().moves


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ramp_start_epoch": -1}, "`ramp_start_epoch` must be an integer >= 0, got -1"),
        ({"ramp_epochs": 1.5}, "`ramp_epochs` must be an integer >= 0, got 1.5"),
        (
            {"ramp_start_epoch": 3, "stop_epoch": 3},
            "`stop_epoch` must be after `ramp_start_epoch` = 3",
        ),
        ({"stop_step": 0}, "`stop_step` must be after `ramp_start_step` = 0, got 0"),
        ({"stop_epoch": 4, "ramp_steps": 10}, "The schedule is in epochs or in steps, not both"),
        ({"ramp_shape": "step"}, r"`ramp_shape` must be one of \('linear', 'cosine'\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Schedule.from_arguments(**kwargs)
