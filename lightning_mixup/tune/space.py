"""The search space of ``lightning-mixup tune``: the default one, or one read from a YAML file.

A space maps MixupCallback argument names to distributions, such as
``alpha: {type: float, low: 0.05, high: 4.0, log: true}`` (``docs/tuning.md``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["default_space", "load_space", "read_yaml", "suggest"]

_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


def default_space(max_epochs: int | None) -> dict[str, dict[str, Any]]:
    """The default space for a run of ``max_epochs`` epochs (``switch_prob`` only with CutMix)."""
    space: dict[str, dict[str, Any]] = {
        "alpha": {"type": "float", "low": 0.05, "high": 4.0, "log": True},
        "cutmix_alpha": {"type": "categorical", "choices": [0.0, 1.0]},
        "switch_prob": {"type": "float", "low": 0.0, "high": 1.0, "when": "cutmix_alpha"},
    }
    if max_epochs is not None and max_epochs // 4 > 0:
        space["ramp_epochs"] = {"type": "int", "low": 0, "high": max_epochs // 4}
    return space


def load_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and check a space file.

    Raises:
        ValueError: For any mistake in the file (unreadable, not a mapping of MixupCallback
            arguments to valid distributions), naming the key, the value and the rule.
    """
    raw = read_yaml("--space", Path(path))
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(
            f"`--space` {str(path)!r} must be a non-empty YAML mapping of MixupCallback argument "
            f"names to distributions, got {raw!r}."
        )
    from lightning_mixup.callback import MixupCallback

    known = list(inspect.signature(MixupCallback.__init__).parameters)[1:]  # no self
    space: dict[str, dict[str, Any]] = {}
    for name, spec in raw.items():
        where = f"`--space` {str(path)!r}, key {name!r}"
        if name not in known:
            raise ValueError(
                f"{where}: not an argument of MixupCallback; use one of {', '.join(known)}."
            )
        space[name] = _check_spec(where, spec)
    return space


def read_yaml(flag: str, path: Path) -> Any:
    """The YAML data in ``path``, given to ``flag``.

    Raises:
        ValueError: In one line naming the flag and the file, when it is missing, unreadable or
            not valid YAML.
    """
    import yaml

    where = f"`{flag}` {str(path)!r}"
    if path.is_dir():
        raise ValueError(f"{where} is a folder, not a file.")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file.") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else str(err)
        raise ValueError(f"{where} cannot be read: {reason}.") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{where} is not valid YAML: {problem}{at}.") from None


def _check_spec(where: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"{where}: must be a mapping such as {{type: float, low: 0.1, high: 2}}, got {spec!r}."
        )
    kind = spec.get("type")
    if kind not in _KEYS:
        raise ValueError(f"{where}: `type` must be float, int or categorical, got {kind!r}.")
    extra = set(spec) - _KEYS[kind]
    if extra:
        raise ValueError(
            f"{where}: unknown field(s) {sorted(extra)} for type {kind}; "
            f"allowed: {sorted(_KEYS[kind])}."
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: `choices` must be a non-empty list, got {choices!r}.")
        return {"type": kind, "choices": list(choices)}
    number = (int,) if kind == "int" else (int, float)
    for bound in ("low", "high"):
        value = spec.get(bound)
        if isinstance(value, bool) or not isinstance(value, number):
            raise ValueError(
                f"{where}: `{bound}` must be a{'n int' if kind == 'int' else ' number'}, got {value!r}."
            )
    low, high = spec["low"], spec["high"]
    if low >= high:
        raise ValueError(
            f"{where}: empty range, `low` must be below `high`, got low={low!r}, high={high!r}."
        )
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{where}: `log` must be true or false, got {log!r}.")
    if log and low <= 0:
        raise ValueError(f"{where}: a log range needs `low` > 0, got low={low!r}.")
    out = {"type": kind, "low": low, "high": high, "log": log}
    if spec.get("step") is not None:
        out["step"] = spec["step"]
    return out


def suggest(trial: Any, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Sample one value per entry of ``space`` from an Optuna trial.

    An entry with ``when: NAME`` is sampled only when the value sampled for ``NAME`` is truthy
    (the default space's ``switch_prob`` matters only when CutMix is on).
    """
    values: dict[str, Any] = {}
    for name, spec in space.items():
        if "when" in spec and not values.get(spec["when"]):
            continue
        if spec["type"] == "categorical":
            values[name] = trial.suggest_categorical(name, spec["choices"])
            continue
        number = trial.suggest_int if spec["type"] == "int" else trial.suggest_float
        step = spec.get("step", 1 if spec["type"] == "int" else None)
        log = spec.get("log", False)
        values[name] = number(name, spec["low"], spec["high"], step=step, log=log)
    return values
