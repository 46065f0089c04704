"""``python -m lightning_mixup`` runs the ``lightning-mixup`` command."""

from lightning_mixup.cli import main

if __name__ == "__main__":
    main()
