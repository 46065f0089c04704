"""Argument checks shared by the package: one message form for every bad value.

Each check names the argument in backticks, states the rule and shows the value received, e.g.
``ValueError: `alpha` must be a number >= 0, got -1.`` Booleans are rejected where numbers are
meant (``True`` is an ``int`` in Python), and ints are accepted where floats are meant (YAML
writes ``1`` for ``1.0``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def integer(name: str, value: Any, low: int) -> int:
    """Return ``value`` if it is an integer ``>= low``; raise ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")
    return value


def positive_integer(name: str, value: Any) -> int:
    """Return ``value`` if it is an integer ``>= 1``; raise ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return value


def number(
    name: str, value: Any, low: float, high: float = math.inf, *, open_high: bool = False
) -> float:
    """Return ``float(value)`` if it is a finite number in ``[low, high]`` (``[low, high)``)."""
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value
        and (value < high if open_high else value <= high)
    )
    if not ok:
        if high == math.inf:
            where = f">= {low:g}"
        else:
            where = f"in [{low:g}, {high:g}{')' if open_high else ']'}"
        raise ValueError(f"`{name}` must be a number {where}, got {value!r}.")
    return float(value)


def choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``options``; raise ``ValueError`` otherwise."""
    if value not in options:
        raise ValueError(f"`{name}` must be one of {options}, got {value!r}.")
    return value


def boolean(name: str, value: Any) -> bool:
    """Return ``value`` if it is ``True`` or ``False``; raise ``ValueError`` otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")
    return value


def stats(name: str, value: Any) -> Tensor | None:
    """Per-channel statistics (``mean``/``std``): None, or a flat finite float32 CPU tensor."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be a number or a sequence of numbers, got {value!r}.")
    try:
        out = torch.as_tensor(value, dtype=torch.float32).detach().cpu().flatten()
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`{name}` must be a number or a sequence of numbers, got {value!r}."
        ) from err
    if out.numel() == 0 or not bool(torch.isfinite(out).all()):
        raise ValueError(f"`{name}` must hold finite numbers, got {value!r}.")
    return out


def optional_integer(name: str, value: Any) -> int | None:
    """Return ``value`` if it is None or an integer; raise ``ValueError`` otherwise."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"`{name}` must be an integer or None, got {value!r}.")
    return value


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
