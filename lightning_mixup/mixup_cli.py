"""MixupCLI: the LightningCLI that trains, then tests the trained model.

Every command builds on it: ``lightning-mixup fit|validate|test|predict`` (through
:mod:`lightning_mixup.cli`, the console script), and ``tune``/``compare``, which build the user's
config with it (``run=False``) for each trial. It imports nothing of the commands above it.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

__all__ = ["ConfigError", "MixupCLI", "main"]


#: What ``lightning-mixup --help`` says first: the LightningCLI subcommands, and the two commands
#: of the ``[tune]`` extra that the subcommand list cannot show.
_DESCRIPTION = (
    "Train and test with MixupCallback from a LightningCLI config: `lightning-mixup fit --config "
    "CONFIG` (subcommands below). Two more commands, each with its own --help (extra: pip install "
    "'lightning-mixup[tune]'): `lightning-mixup tune --config CONFIG` searches MixupCallback's "
    "arguments for your config on Optuna; `lightning-mixup compare` trains the grid of mixing arms "
    "x label noise x seeds behind the published evidence."
)


class ConfigError(ValueError):
    """A value in the configuration that one of our classes refused, with the key it came from."""


class MixupCLI(LightningCLI):
    """LightningCLI in subclass mode, with ``--test_after_fit`` (on by default) for ``fit``.

    Any LightningModule, LightningDataModule and callback can be named in YAML by ``class_path``;
    the library's own ones are importable as ``lightning_mixup.<Name>``.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--test_after_fit``."""
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After `fit`, run `test` on the datamodule's test split with the best checkpoint.",
        )

    def instantiate_classes(self) -> None:
        """Instantiate as LightningCLI does; an argument our classes refuse becomes a short error.

        The error names the config key (e.g. ``trainer.callbacks[1]``) and the class, followed by
        our one-line message, instead of jsonargparse's long chain of tracebacks around it.
        """
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            found = _our_refusal(err)
            if found is None:
                raise
            cls, message = found
            config = self.config[self.subcommand] if self.subcommand else self.config
            where = next(_class_paths(config.as_dict(), "", cls), None)
            head = f"{where} ({cls.__name__})" if where else cls.__name__
            raise ConfigError(f"{head}: {message}") from None

    def after_fit(self) -> None:
        """Test the trained model when asked to and when the datamodule has a test split."""
        datamodule = self.datamodule
        if (
            not self.config[self.subcommand].get("test_after_fit", True)
            or datamodule is None
            or type(datamodule).test_dataloader is pl.LightningDataModule.test_dataloader
        ):
            return
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")  # None: no callback
        if self.trainer.fast_dev_run or not best:  # type: ignore[attr-defined]  # set by Lightning, undeclared on Trainer
            self.trainer.test(self.model, datamodule=datamodule)
        else:
            self.trainer.test(self.model, datamodule=datamodule, ckpt_path="best")


def main(args: ArgsType = None, run: bool = True, **kwargs: Any) -> MixupCLI:
    """Build (and with ``run``, run) :class:`MixupCLI` as the ``lightning-mixup`` command does.

    Args:
        args: Command-line arguments as a list (or dict); None reads ``sys.argv``.
        run: Whether to run a subcommand (``fit``, ``validate``, ``test``, ``predict``).
        **kwargs: More keyword arguments for :class:`lightning.pytorch.cli.LightningCLI`.

    Returns:
        The CLI object, whose ``trainer``, ``model`` and ``datamodule`` hold the run's objects.

    Raises:
        ConfigError: A value in the configuration that one of our classes refused.

    Example:
        >>> main(["fit", "--config", "examples/digits.yaml", "--trainer.fast_dev_run=true"])  # doctest: +SKIP
    """
    options: dict[str, Any] = {
        "subclass_mode_model": True,
        "subclass_mode_data": True,
        "save_config_kwargs": {"overwrite": True},
        "auto_configure_optimizers": False,
    }
    options.update(kwargs)
    options["parser_kwargs"] = {"description": _DESCRIPTION, **(kwargs.get("parser_kwargs") or {})}
    return MixupCLI(pl.LightningModule, pl.LightningDataModule, args=args, run=run, **options)


def _our_refusal(err: BaseException | None) -> tuple[type, str] | None:
    """The innermost ValueError/TypeError that a ``lightning_mixup`` constructor raised, if any.

    Follows the chain of causes; returns the outermost ``lightning_mixup`` class whose
    ``__init__`` is on that error's traceback, and the error's message.
    """
    seen: set[int] = set()
    found = None
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (ValueError, TypeError)):
            cls = _constructing(err.__traceback__)
            if cls is not None:
                found = (cls, str(err))
        err = err.__cause__ or err.__context__
    return found


def _constructing(tb: TracebackType | None) -> type | None:
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
        if owner is not None and type(owner).__module__.startswith("lightning_mixup."):
            return type(owner)
        tb = tb.tb_next
    return None


def _class_paths(node: Any, key: str, cls: type) -> Iterator[str]:
    """Config keys (``trainer.callbacks[1]``) whose ``class_path`` names ``cls``."""
    if isinstance(node, dict):
        path = node.get("class_path")
        if isinstance(path, str) and path.rsplit(".", 1)[-1] == cls.__name__:
            yield key
        for name, value in node.items():
            yield from _class_paths(value, f"{key}.{name}" if key else name, cls)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _class_paths(value, f"{key}[{i}]", cls)
