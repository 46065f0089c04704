"""Argument checks (`_checks`): one message form, booleans refused where numbers or keys are meant."""

import pytest

from lightning_mixup import MixupCallback
from lightning_mixup import _checks as C


def test_optional_integer_identifier_and_key_pass_good_values_through():
    assert C.optional_integer("seed", None) is None and C.optional_integer("seed", -3) == -3
    assert C.identifier("name", None) is None and C.identifier("name", "teacher") == "teacher"
    assert C.key("input_key", 0) == 0 and C.key("input_key", "image") == "image"
    assert C.key("mask_key", None, optional=True) is None


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
