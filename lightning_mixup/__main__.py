"""``python -m lightning_mixup`` runs the ``lightning-mixup`` command."""

import sys

from lightning_mixup.cli import console

if __name__ == "__main__":
    sys.exit(console())
