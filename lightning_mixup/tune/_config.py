"""The user's LightningCLI config as ``tune`` and ``compare`` build it, with each trial's callbacks."""

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

__all__ = ["build", "config_with", "dumped", "mixup_class", "mixup_entry", "place", "write_config"]


def build(
    args: Sequence[str],
    seed: int | None = None,
    root: Path | None = None,
    exit_on_error: bool = True,
) -> MixupCLI:
    """The config in ``args`` built, not run; ``seed``: seed_everything, ``root``: default_root_dir.

    With ``exit_on_error=False`` a bad value raises ``argparse.ArgumentError`` instead of exiting.
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


def mixup_class(cli: MixupCLI) -> type[MixupCallback]:
    """The class of the built Trainer's MixupCallback (a config may name a subclass), or the base."""
    callbacks = cli.trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning, undeclared on Trainer
    return next((type(cb) for cb in callbacks if isinstance(cb, MixupCallback)), MixupCallback)


def place(
    trainer: pl.Trainer, mixup: MixupCallback | None, extra: Sequence[pl.Callback] = ()
) -> None:
    """Put ``mixup`` (None: none) and ``extra`` where the trainer's MixupCallback was.

    Without one, they go before the checkpoint callbacks (which Lightning keeps last).
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
    """``config`` with its MixupCallback's ``init_args`` set (None: removed), ``extra`` after it."""
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
