"""Argument checks (`_checks`): one message form, booleans refused where numbers or keys are meant."""

import math

import pytest

from lightning_mixup import MixupCallback
from lightning_mixup import _checks as C


def test_optional_integer_identifier_and_key_pass_good_values_through():
    assert C.optional_integer("seed", None) is None and C.optional_integer("seed", -3) == -3
    assert C.identifier("name", None) is None and C.identifier("name", "teacher") == "teacher"
    assert C.key("input_key", 0) == 0 and C.key("input_key", "image") == "image"
    assert C.key("mask_key", None, optional=True) is None


def test_choice_returns_the_option_it_matched():
    class Name(str):
        pass

    assert C.choice("mode", "elem", ("batch", "elem")) == "elem"
    # The option itself comes back (a plain str of the Literal's values), not an equal value.
    got = C.choice("mode", Name("batch"), ("batch", "elem"))
    assert got == "batch" and type(got) is str
    with pytest.raises(
        ValueError, match=r"^`mode` must be one of \('batch', 'elem'\), got 'pair'\.$"
    ):
        C.choice("mode", "pair", ("batch", "elem"))


@pytest.mark.parametrize(
    ("check", "match"),
    [
        (lambda: C.optional_integer("seed", True), "`seed` must be an integer or None, got True."),
        (
            lambda: C.identifier("name", "2nd"),
            "`name` must be None or a Python identifier, got '2nd'.",
        ),
        (
            lambda: C.key("target_key", None),
            "`target_key` must be a list index or a dict key, got None.",
        ),
        (
            lambda: C.key("mask_key", False, optional=True),
            "`mask_key` must be None, a list index or a dict key, got False.",
        ),
    ],
)
def test_bad_values_are_named_with_the_value_received(check, match):
    with pytest.raises(ValueError) as error:
        check()
    assert str(error.value) == match


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"target_key": [1]},
            r"`target_key` must be None, a list index or a dict key, got \[1\]\.",
        ),
        ({"targets": "hard"}, r"`targets` must be one of \(.auto., .soft., .loss.\), got .hard.\."),
        ({"criterion": "2nd"}, r"`criterion` must be None or a Python identifier, got .2nd.\."),
        ({"mask_key": 1.0}, r"`mask_key` must be None, a list index or a dict key, got 1\.0\."),
        ({"name": 3}, r"`name` must be None or a Python identifier, got 3\."),
        ({"ignore_index": True}, r"`ignore_index` must be an integer or None, got True\."),
    ],
)
def test_the_callback_uses_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixupCallback(**kwargs)


def test_number_rules_read_as_written():
    assert C.number("eps", 0, 0.0) == 0.0 and isinstance(C.number("eps", 0, 0.0), float)
    assert C.number("lower", -3.5, -math.inf) == -3.5
    assert C.number("step_size", 0.1, 0.0, open_low=True) == 0.1
    assert C.optional_number("lower", None) is None
    assert C.optional_number("step_size", 2, 0.0, open_low=True) == 2.0
    assert C.integer("seed", -7) == -7


@pytest.mark.parametrize(
    ("check", "match"),
    [
        (lambda: C.number("eps", -1, 0.0), "`eps` must be a number >= 0, got -1."),
        (
            lambda: C.number("eps", math.inf, 0.0, hint=" (in [0, 1] pixel units)"),
            "`eps` must be a number >= 0 (in [0, 1] pixel units), got inf.",
        ),
        (
            lambda: C.number("temperature", 0.0, 0.0, open_low=True),
            "`temperature` must be a positive number, got 0.0.",
        ),
        (lambda: C.number("x", 1.0, 1.0, open_low=True), "`x` must be a number > 1, got 1.0."),
        (lambda: C.number("p", 1.5, 0.0, 1.0), "`p` must be a number in [0, 1], got 1.5."),
        (
            lambda: C.number("p", 0.0, 0.0, 1.0, open_low=True, open_high=True),
            "`p` must be a number in (0, 1), got 0.0.",
        ),
        (
            lambda: C.optional_number("lower", "a"),
            "`lower` must be a finite number or None, got 'a'.",
        ),
        (
            lambda: C.optional_number("step_size", True, 0.0, open_low=True),
            "`step_size` must be a positive number or None, got True.",
        ),
        (lambda: C.integer("seed", 1.0), "`seed` must be an integer, got 1.0."),
        (lambda: C.integer("steps", 0, 1), "`steps` must be an integer >= 1, got 0."),
        (
            lambda: C.mean_std(0.5, None),
            "`mean` and `std` must be given together (or both left as None), got mean=0.5, "
            "std=None.",
        ),
        (lambda: C.mean_std(0.5, [1.0, 0.0]), "`std` must be positive, got [1.0, 0.0]."),
        (
            lambda: C.mean_std([0, 0], [1, 1, 1]),
            "`mean` and `std` must have as many entries (or one), got 2 and 3.",
        ),
        (
            lambda: C.ignore_index(3, 11),
            "`ignore_index` must be None or an integer outside [0, 11) (the class indices), "
            "such as 255 or -100, got 3.",
        ),
        (
            lambda: C.ignore_index(255.0, 11),
            "`ignore_index` must be None or an integer outside [0, 11) (the class indices), "
            "such as 255 or -100, got 255.0.",
        ),
    ],
)
def test_shared_rules_name_the_argument_the_rule_and_the_value(check, match):
    with pytest.raises(ValueError) as error:
        check()
    assert str(error.value) == match


def test_mean_std_and_ignore_index_pass_good_values_through():
    assert C.mean_std(None, None) == (None, None)
    m, s = C.mean_std(0.5, (0.2, 0.3, 0.4))
    assert m.tolist() == [0.5] and s.tolist() == pytest.approx([0.2, 0.3, 0.4])
    assert C.ignore_index(None, 11) is None and C.ignore_index(255, 11) == 255
    assert C.ignore_index(C.TORCH_IGNORE_INDEX, 11) == -100
