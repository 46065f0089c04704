"""``lightning-mixup tune`` and ``lightning-mixup compare``, on Optuna, for any LightningCLI config.

``tune`` searches MixupCallback arguments for your config; ``compare`` trains a grid of mixing
arms × config values × seeds on it and reports what the model logs at test time. Both keep their
runs in an Optuna study, so they resume and take several workers. Optional extra:
``pip install "lightning-mixup[tune]"`` (Optuna, pandas, matplotlib). Importing this package
imports none of them; :func:`main` and :func:`main_compare` do.

Example:
    >>> main(["--config", "examples/digits.yaml", "--n-trials", "30"])  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main", "main_compare"]


def _missing_extra(command: str, modules: Sequence[str]) -> bool:
    """Print the one-line error when a module of the ``[tune]`` extra is missing."""
    import importlib

    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        print(
            f"lightning-mixup {command}: error: {' and '.join(missing)} {verb} not installed; "
            'pip install "lightning-mixup[tune]"',
            file=sys.stderr,
        )
    return bool(missing)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-mixup tune`` with ``argv`` (the arguments after ``tune``); the exit status."""
    if _missing_extra("tune", ["optuna"]):
        return 2
    from lightning_mixup.tune.runner import run

    return run(sys.argv[2:] if argv is None else argv)


def main_compare(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-mixup compare`` with ``argv`` (the arguments after ``compare``)."""
    if _missing_extra("compare", ["optuna", "pandas", "matplotlib"]):
        return 2
    from lightning_mixup.tune.compare import main as run

    return run(sys.argv[2:] if argv is None else argv)
