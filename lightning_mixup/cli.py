"""The ``lightning-mixup`` command: a LightningCLI that trains, then tests the trained model."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

__all__ = ["MixupCLI", "console", "main"]


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

    def after_fit(self) -> None:
        """Test the trained model when asked to and when the datamodule has a test split."""
        if not self.config[self.subcommand].get("test_after_fit", True):
            return
        datamodule = self.datamodule
        has_test = (
            datamodule is not None
            and pl.LightningDataModule.test_dataloader is not type(datamodule).test_dataloader
        )
        if not has_test:
            return
        ckpt = self.trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        if self.trainer.fast_dev_run or not best:
            self.trainer.test(self.model, datamodule=datamodule)
        else:
            self.trainer.test(self.model, datamodule=datamodule, ckpt_path="best")


def main(args: ArgsType = None, run: bool = True, **kwargs: Any) -> MixupCLI:
    """Run the ``lightning-mixup`` command line (also ``python -m lightning_mixup``).

    Args:
        args: Command-line arguments as a list (or dict); None reads ``sys.argv``.
        run: Whether to run a subcommand (``fit``, ``validate``, ``test``, ``predict``).
        **kwargs: More keyword arguments for :class:`lightning.pytorch.cli.LightningCLI`.

    Returns:
        The CLI object, whose ``trainer``, ``model`` and ``datamodule`` hold the run's objects.

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
    return MixupCLI(pl.LightningModule, pl.LightningDataModule, args=args, run=run, **options)


def console() -> int:
    """Entry point of the ``lightning-mixup`` console script: run :func:`main`, exit status 0.

    (A console script passes its function's return value to ``sys.exit``, so it must not be the
    CLI object that :func:`main` returns.)
    """
    main()
    return 0
