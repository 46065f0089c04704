"""``lightning-mixup tune``: find MixupCallback arguments for your own config with Optuna.

Optional extra: ``pip install "lightning-mixup[tune]"`` (Optuna, matplotlib). Importing this
package does not import Optuna; :func:`main` does.

Example:
    >>> main(["--config", "examples/digits.yaml", "--n-trials", "30"])  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-mixup tune`` with ``argv`` (the arguments after ``tune``); the exit status."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        print(
            'lightning-mixup tune: error: Optuna is not installed; pip install "lightning-mixup[tune]"',
            file=sys.stderr,
        )
        return 2
    from lightning_mixup.tune.runner import run

    return run(sys.argv[2:] if argv is None else argv)
