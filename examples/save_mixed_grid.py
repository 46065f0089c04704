"""Save one grid of mixed training digits (MixUp and CutMix, per sample) as a PNG.

python examples/save_mixed_grid.py docs/evidence/mixed_grid.png
"""

import shutil
import sys
import tempfile
from pathlib import Path

import lightning.pytorch as pl

from lightning_mixup import (
    DigitsDataModule,
    MixedGridLogger,
    MixupCallback,
    SmallCNN,
    SoftLabelClassifier,
)


def main(out: str) -> None:
    """Train one short epoch with a grid logger and copy the grid it wrote to ``out``."""
    pl.seed_everything(0)
    mix = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem")
    model = SoftLabelClassifier(SmallCNN(num_classes=10, in_channels=1), num_classes=10)
    with tempfile.TemporaryDirectory() as run:
        trainer = pl.Trainer(
            max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[mix, MixedGridLogger()], logger=False,
            enable_checkpointing=False, enable_progress_bar=False, default_root_dir=run,
        )  # fmt: skip
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
        grid = next(Path(run).rglob("mixed_grid_epoch0.png"))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(grid, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "mixed_grid.png")
