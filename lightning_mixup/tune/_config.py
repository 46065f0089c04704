"""The user's LightningCLI config as ``tune`` and ``compare`` build it for each trial.

:func:`build` makes the config's Trainer, model and datamodule through
:class:`~lightning_mixup.mixup_cli.MixupCLI` (``run=False``); :func:`place` puts the trial's
``MixupCallback`` (and the callbacks that go with it) where the config's own one was in the built
Trainer; :func:`config_with` does the same to the config's data, for each trial's ``config.yaml``.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint

from lightning_mixup.callback import MixupCallback
from lightning_mixup.mixup_cli import MixupCLI
from lightning_mixup.tune._study import TuneError

__all__ = ["build", "config_with", "dumped", "mixup_entry", "place", "write_config"]


def build(
    args: Sequence[str],
    seed: int | None = None,
    root: Path | None = None,
    exit_on_error: bool = True,
) -> MixupCLI:
    """The user's config (``--config``, ``--trainer.*``, ... in ``args``) built, not run.

    ``seed`` sets ``seed_everything`` and ``root`` the Trainer's ``default_root_dir``. With
    ``exit_on_error=False`` a value LightningCLI cannot parse raises ``argparse.ArgumentError``
    instead of printing its usage and exiting.
    """
    from lightning_mixup.mixup_cli import main

    extra = [] if seed is None else [f"--seed_everything={seed}"]
    if root is not None:
        extra.append(f"--trainer.default_root_dir={root}")
    with warnings.catch_warnings():
        # ``lightning-mixup tune ...`` is in sys.argv while we pass our own list on purpose.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run")
        return main(
            [*args, *extra],
            run=False,
            save_config_callback=None,
            parser_kwargs={"exit_on_error": exit_on_error},
        )


def _entries(config: dict) -> tuple[list[Any], list[int]]:
    """The config's ``trainer.callbacks`` as a list, and the indices of its MixupCallback entries."""
    callbacks = config.get("trainer", {}).get("callbacks") or []
    if isinstance(callbacks, dict):
        callbacks = [callbacks]
    found = []
    for i, entry in enumerate(callbacks):
        path = entry.get("class_path") if isinstance(entry, dict) else None
        if not isinstance(path, str) or "." not in path:
            continue
        module, name = path.rsplit(".", 1)
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, MixupCallback):
            found.append(i)
    if len(found) > 1:
        raise TuneError(
            f"the config has {len(found)} MixupCallbacks in trainer.callbacks; at most one is allowed."
        )
    return list(callbacks), found


def mixup_entry(config: dict) -> dict[str, Any] | None:
    """The config's MixupCallback entry (``class_path`` and ``init_args``), or None."""
    callbacks, found = _entries(config)
    return dict(callbacks[found[0]]) if found else None


def place(
    trainer: pl.Trainer, mixup: MixupCallback | None, extra: Sequence[pl.Callback] = ()
) -> None:
    """Replace the trainer's MixupCallback by ``mixup`` (None: none), ``extra`` right after it.

    They take the place of the config's own MixupCallback, or go before the checkpoint callbacks
    (where Lightning keeps them, last) when the config has none.
    """
    callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning, undeclared on Trainer
    at = next((i for i, cb in enumerate(callbacks) if isinstance(cb, MixupCallback)), None)
    callbacks[:] = [cb for cb in callbacks if not isinstance(cb, MixupCallback)]
    if at is None:
        at = next(
            (i for i, cb in enumerate(callbacks) if isinstance(cb, Checkpoint)), len(callbacks)
        )
    callbacks[at:at] = [*([mixup] if mixup is not None else []), *extra]


def config_with(
    config: dict, init_args: dict[str, Any] | None, extra: Sequence[dict[str, Any]] = ()
) -> dict:
    """``config`` (``as_dict``) with its MixupCallback's ``init_args`` set (None: removed).

    ``extra`` (``class_path`` entries) go right after it, as :func:`place` puts them.
    """
    config = {k: v for k, v in config.items() if k != "config"}
    callbacks, found = _entries(config)
    at = found[0] if found else len(callbacks)
    entry = callbacks.pop(at) if found else {"class_path": "lightning_mixup.MixupCallback"}
    new = [{**entry, "init_args": dict(init_args)}] if init_args is not None else []
    callbacks[at:at] = [*new, *extra]
    config["trainer"] = {**config.get("trainer", {}), "callbacks": callbacks}
    return config


def dumped(cli: MixupCLI) -> dict:
    """The CLI's config as plain YAML data, as jsonargparse writes it (callables as import paths)."""
    import yaml

    return yaml.safe_load(cli.parser.dump(cli.config, skip_check=True))


def write_config(
    cli: MixupCLI,
    path: Path,
    init_args: dict[str, Any] | None,
    extra: Sequence[dict[str, Any]] = (),
) -> None:
    """Write the trial's full config (:func:`config_with`) to ``path``, a YAML file."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    data = config_with(dumped(cli), init_args, extra)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
