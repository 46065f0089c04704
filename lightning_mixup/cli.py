"""The ``lightning-mixup`` console script (also ``python -m lightning_mixup``).

``lightning-mixup tune ...`` and ``lightning-mixup compare ...`` (the word first) run
:func:`lightning_mixup.tune.main` and :func:`lightning_mixup.tune.main_compare`; anything else is
:class:`~lightning_mixup.mixup_cli.MixupCLI`'s (``fit``, ``validate``, ``test``, ``predict``,
``--help``). This module is the top of the package: no module of it imports this one back; the
commands build on :mod:`lightning_mixup.mixup_cli`, which knows nothing of them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightning_mixup.mixup_cli import ConfigError, MixupCLI, main

__all__ = ["ConfigError", "MixupCLI", "console", "main"]


def console(argv: Sequence[str] | None = None) -> int:
    """Run the ``lightning-mixup`` command with ``argv`` (None: ``sys.argv[1:]``); the exit status.

    A configuration value that our classes refuse ends the run with one line on standard error,
    ``lightning-mixup: error: <config key> (<class>): <message>``, and exit status 2. (A console
    script passes its function's return value to ``sys.exit``, so it must not be the CLI object
    that :func:`main` returns.) Optuna is imported only for ``tune`` and ``compare``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["tune"], ["compare"]):
        from lightning_mixup import tune

        return (tune.main if args[0] == "tune" else tune.main_compare)(args[1:])
    try:
        main(None if argv is None else args)  # LightningCLI warns when given sys.argv's own list
    except ConfigError as err:
        print(f"lightning-mixup: error: {err}", file=sys.stderr)
        return 2
    return 0
