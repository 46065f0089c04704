"""Argument checks shared by the package: one message form for every bad value.

Each check names the argument in backticks, states the rule and shows the value received, e.g.
``ValueError: `alpha` must be a number >= 0, got -1.`` Booleans are rejected where numbers are
meant (``True`` is an ``int`` in Python), and ints are accepted where floats are meant (YAML
writes ``1`` for ``1.0``).
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeGuard, TypeVar, overload

import torch
from torch import Tensor

#: A string option; a ``Literal`` type's values come back from :func:`choice` as that type.
_Option = TypeVar("_Option", bound=str)


def is_integer(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an ``int`` and not a ``bool`` (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def integer(name: str, value: Any, low: int | None = None, *, hint: str = "") -> int:
    """Return ``value`` if it is an integer (``>= low`` if given); raise ``ValueError`` if not."""
    if not is_integer(value) or (low is not None and value < low):
        rule = "an integer" if low is None else f"an integer >= {low}"
        raise ValueError(f"`{name}` must be {rule}{hint}, got {value!r}.")
    return value


def positive_integer(name: str, value: Any) -> int:
    """Return ``value`` if it is an integer ``>= 1``; raise ``ValueError`` otherwise."""
    if not is_integer(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return value


def _number_rule(low: float, high: float, open_low: bool, open_high: bool) -> str:
    if low == -math.inf and high == math.inf:
        return "a finite number"
    if high == math.inf:
        if open_low and low == 0:
            return "a positive number"
        return f"a number {'>' if open_low else '>='} {low:g}"
    left, right = "(" if open_low else "[", ")" if open_high else "]"
    return f"a number in {left}{low:g}, {high:g}{right}"


def number(
    name: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
    hint: str = "",
) -> float:
    """Return ``float(value)`` if it is a finite number in ``[low, high]`` (ends open on request).

    ``hint`` follows the rule in the message, e.g. the unit: ``" (in [0, 1] pixel units)"``.
    """
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (low < value if open_low else low <= value)
        and (value < high if open_high else value <= high)
    )
    if not ok:
        rule = _number_rule(low, high, open_low, open_high)
        raise ValueError(f"`{name}` must be {rule}{hint}, got {value!r}.")
    return float(value)


def optional_number(
    name: str, value: Any, low: float = -math.inf, *, open_low: bool = False
) -> float | None:
    """Return None, or ``float(value)`` if it is a finite number ``>= low`` (``> low``)."""
    return None if value is None else number(name, value, low, open_low=open_low, hint=" or None")


def choice(name: str, value: Any, options: tuple[_Option, ...]) -> _Option:
    """Return ``value`` if it is one of ``options``; raise ``ValueError`` otherwise.

    With ``options`` typed as a tuple of a ``Literal`` (``tuple[Mode, ...]``), the value comes
    back as that ``Literal`` type.
    """
    for option in options:
        if value == option:
            return option
    raise ValueError(f"`{name}` must be one of {options}, got {value!r}.")


def boolean(name: str, value: Any) -> bool:
    """Return ``value`` if it is ``True`` or ``False``; raise ``ValueError`` otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")
    return value


def stats(name: str, value: Any) -> Tensor | None:
    """Per-channel statistics (``mean``/``std``): None, or a flat finite float32 CPU tensor."""
    if value is None:
        return None
    wrong = f"`{name}` must be a number or a sequence of numbers, got {value!r}."
    if isinstance(value, bool):
        raise ValueError(wrong)
    try:
        out = torch.as_tensor(value, dtype=torch.float32).detach().cpu().flatten()
    except (TypeError, ValueError) as err:
        raise ValueError(wrong) from err
    if out.numel() == 0 or not bool(torch.isfinite(out).all()):
        raise ValueError(f"`{name}` must hold finite numbers, got {value!r}.")
    return out


def mean_std(mean: Any, std: Any) -> tuple[Tensor | None, Tensor | None]:
    """A normalisation's ``mean``/``std`` (:func:`stats`): both None, or both given and fitting.

    Fitting: every ``std`` positive, as many entries in each (or one of them a single number).
    """
    m, s = stats("mean", mean), stats("std", std)
    if (m is None) != (s is None):
        raise ValueError(
            "`mean` and `std` must be given together (or both left as None), got "
            f"mean={mean!r}, std={std!r}."
        )
    if m is None or s is None:
        return None, None
    if bool((s <= 0).any()):
        raise ValueError(f"`std` must be positive, got {std!r}.")
    if m.numel() != s.numel() and 1 not in (m.numel(), s.numel()):
        raise ValueError(
            f"`mean` and `std` must have as many entries (or one), got {m.numel()} and {s.numel()}."
        )
    return m, s


def optional_integer(name: str, value: Any) -> int | None:
    """Return ``value`` if it is None or an integer; raise ``ValueError`` otherwise."""
    return None if value is None else integer(name, value, hint=" or None")


@overload
def key(name: str, value: Any, *, optional: Literal[False] = False) -> int | str: ...


@overload
def key(name: str, value: Any, *, optional: bool) -> int | str | None: ...


def key(name: str, value: Any, *, optional: bool = False) -> int | str | None:
    """Return ``value`` if it is a list index or a dict key (None too when ``optional``)."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        also = "None, " if optional else ""
        raise ValueError(f"`{name}` must be {also}a list index or a dict key, got {value!r}.")
    return value


def identifier(name: str, value: Any) -> str | None:
    """Return ``value`` if it is None or a Python identifier; raise ``ValueError`` otherwise."""
    if value is not None and (not isinstance(value, str) or not value.isidentifier()):
        raise ValueError(f"`{name}` must be None or a Python identifier, got {value!r}.")
    return value


#: ``F.cross_entropy``'s default ``ignore_index``: index targets of this value are unlabelled.
TORCH_IGNORE_INDEX = -100


def ignore_index(value: Any, num_classes: int) -> int | None:
    """Return ``value`` if it is None or an integer outside the class indices, ``[0, K)``."""
    if value is not None and (not is_integer(value) or 0 <= value < num_classes):
        raise ValueError(
            f"`ignore_index` must be None or an integer outside [0, {num_classes}) (the class "
            f"indices), such as 255 or {TORCH_IGNORE_INDEX}, got {value!r}."
        )
    return value
