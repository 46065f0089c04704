"""Mixed-image grids (PNG and TensorBoard) and reliability diagrams."""

from __future__ import annotations

import sys

import lightning.pytorch as pl
import matplotlib.image
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torchmetrics.classification import MulticlassCalibrationError

from lightning_mixup import DigitsDataModule
from lightning_mixup.evaluation.visual import (
    _grid_figure,
    calibration_bins,
    format_soft_label,
    log_mixed_grid,
    reliability_diagram,
    save_mixed_grid,
)

PANEL_PX = 160  # 1.6 inches at 100 dpi
TITLE_PX = 20  # 0.2 inches of title room per row


def mixed_batch(n: int, channels: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, channels, 8, 8, generator=g)
    lam = torch.rand(n, generator=g)
    a, b = torch.arange(n) % 10, (torch.arange(n) + 3) % 10
    targets = torch.zeros(n, 10)
    targets[torch.arange(n), a] += lam
    targets[torch.arange(n), b] += 1 - lam
    return images, targets


def trainer(tmp_path, **kw) -> pl.Trainer:
    opts = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False}
    return pl.Trainer(default_root_dir=str(tmp_path), **opts | kw)


# ---------------------------------------------------------------------------- titles
def test_title_lists_the_two_heaviest_classes():
    row = torch.zeros(10)
    row[3], row[7] = 0.62, 0.38
    assert format_soft_label(row) == "3:0.62 7:0.38"
    row[3], row[7] = 0.38, 0.62
    assert format_soft_label(row) == "7:0.62 3:0.38"


def test_title_ties_small_weights_indices_and_names():
    tie = torch.tensor([0.0, 0.5, 0.0, 0.5])
    assert format_soft_label(tie) == "1:0.50 3:0.50"
    smoothed = torch.tensor([0.001, 0.998, 0.001])
    assert format_soft_label(smoothed) == "1:1.00"  # weights under min_weight are left out
    assert format_soft_label(torch.tensor(4)) == "4:1.00"
    names = ["cat", "dog", "emu", "fox"]
    assert format_soft_label(torch.tensor([0.1, 0.2, 0.0, 0.7]), names, top_k=3) == (
        "fox:0.70 dog:0.20 cat:0.10"
    )
    assert format_soft_label(torch.tensor([0.1, 0.2, 0.0, 0.7]), top_k=1) == "3:0.70"


@pytest.mark.parametrize(
    ("target", "kwargs", "match"),
    [
        (torch.zeros(2, 3), {}, r"`target` must be a \(num_classes,\) probability row .*\(2, 3\)"),
        (torch.zeros(3), {"top_k": 0}, r"`top_k` must be a positive integer, got 0"),
    ],
)
def test_title_rejects_bad_input(target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        format_soft_label(target, **kwargs)


# ---------------------------------------------------------------------------- grids
@pytest.mark.parametrize(("n", "max_images", "rows", "cols"), [(5, 16, 2, 3), (20, 16, 4, 4)])
def test_grid_png_has_one_panel_per_image(tmp_path, n, max_images, rows, cols):
    images, targets = mixed_batch(n)
    path = save_mixed_grid(images, targets, tmp_path / "sub" / "grid.png", max_images=max_images)
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (rows * (PANEL_PX + TITLE_PX), cols * PANEL_PX)
    fig = _grid_figure(images, targets, None, None, max_images, None)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == min(n, max_images)
    assert [ax.get_title() for ax in shown] == [format_soft_label(t) for t in targets[: len(shown)]]
    assert all(" " in ax.get_title() for ax in shown)  # two weights per mixed sample


def test_grid_unnormalises_rgb_images_with_per_channel_statistics(tmp_path):
    mean, std = [0.2, 0.4, 0.6], [0.1, 0.2, 0.3]
    pixels = torch.full((2, 3, 8, 8), 0.5)
    images = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    fig = _grid_figure(images, torch.tensor([1, 2]), mean, std, 16, None)
    shown = fig.axes[0].images[0].get_array()
    assert shown.shape == (8, 8, 3)
    np.testing.assert_allclose(np.asarray(shown), 0.5, atol=1e-6)
    path = save_mixed_grid(images, torch.tensor([1, 2]), tmp_path / "rgb.png", mean, std)
    assert matplotlib.image.imread(path).shape[:2] == (PANEL_PX + TITLE_PX, 2 * PANEL_PX)


@pytest.mark.parametrize(
    ("images", "targets", "kwargs", "match"),
    [
        (torch.zeros(2, 8, 8), torch.zeros(2, 10), {}, r"`images` must be a \(B, C, H, W\) tensor"),
        (
            torch.zeros(2, 2, 8, 8),
            torch.zeros(2, 10),
            {},
            r"with 1 or 3 channels, got \(2, 2, 8, 8\)",
        ),
        (torch.zeros(2, 1, 8, 8), torch.zeros(3, 10), {}, r"same, non-zero number of samples"),
        (
            torch.zeros(2, 1, 8, 8),
            torch.zeros(2, 2, 2),
            {},
            r"`targets` must be \(B,\) class indices",
        ),
        (torch.zeros(2, 1, 8, 8), torch.zeros(2, 10), {"max_images": 0}, r"`max_images` must be"),
        (torch.zeros(2, 1, 8, 8), torch.zeros(2, 10), {"mean": 0.5}, r"must be given together"),
        (
            torch.zeros(2, 1, 8, 8),
            torch.zeros(2, 10),
            {"mean": 0.5, "std": 0.0},
            r"`std` must be positive",
        ),
        (
            torch.zeros(2, 3, 8, 8),
            torch.zeros(2, 10),
            {"mean": [0.5, 0.5], "std": [1.0, 1.0]},
            r"must have 1 or C = 3 entries, got 2",
        ),
    ],
)
def test_grid_rejects_bad_input(tmp_path, images, targets, kwargs, match):
    with pytest.raises(ValueError, match=match):
        save_mixed_grid(images, targets, tmp_path / "x.png", **kwargs)
    assert not (tmp_path / "x.png").exists()


def test_missing_matplotlib_is_reported(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r'pip install "lightning-mixup\[plots\]"'):
        save_mixed_grid(*mixed_batch(2), tmp_path / "x.png")


# ---------------------------------------------------------------------------- log_mixed_grid
def test_log_mixed_grid_writes_a_png_per_epoch_in_the_run_folder(tmp_path):
    t = trainer(tmp_path)
    path = log_mixed_grid(t, *mixed_batch(4))
    assert path == tmp_path / "mixed_grid_epoch0.png"
    assert matplotlib.image.imread(path).ndim == 3
    t.fit_loop.epoch_progress.current.completed = 3  # what `current_epoch` reads
    assert log_mixed_grid(t, *mixed_batch(4)) == tmp_path / "mixed_grid_epoch3.png"


def test_log_mixed_grid_uses_the_csv_loggers_folder_and_datamodule_statistics(tmp_path):
    logger = CSVLogger(tmp_path, name="csv", version=0)
    t = trainer(tmp_path / "root", logger=logger)
    dm = DigitsDataModule()
    dm.mean, dm.std = 0.3, 0.2
    t.datamodule = dm  # what `fit(datamodule=...)` sets
    path = log_mixed_grid(t, *mixed_batch(2))
    assert path == tmp_path / "csv" / "version_0" / "mixed_grid_epoch0.png"
    assert path.exists()


def test_log_mixed_grid_does_nothing_off_rank_zero(tmp_path, monkeypatch):
    t = trainer(tmp_path)
    monkeypatch.setattr(pl.Trainer, "is_global_zero", property(lambda self: False))
    assert log_mixed_grid(t, *mixed_batch(4)) is None
    assert not list(tmp_path.rglob("*.png"))


def test_log_mixed_grid_sends_an_image_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    t = trainer(tmp_path, logger=logger)
    assert log_mixed_grid(t, *mixed_batch(5), tag="mixup/grid") is None
    assert not list(tmp_path.rglob("*.png"))
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["mixup/grid"]
    image = events.Images("mixup/grid")[0]
    assert (image.height, image.width) == (2 * (PANEL_PX + TITLE_PX), 3 * PANEL_PX)


# ---------------------------------------------------------------------------- reliability diagrams
def test_calibration_bins_by_hand():
    bins = calibration_bins([0.95, 0.65, 0.81, 0.85], [True, False, True, False], n_bins=10)
    # Bins: 0.95 → [0.9, 1.0], 0.65 → [0.6, 0.7), 0.81 and 0.85 → [0.8, 0.9).
    assert bins.count.tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 2, 1]
    assert bins.accuracy[8] == 0.5 and bins.confidence[8] == pytest.approx(0.83)
    expected = (0.05 + 0.65 + 2 * abs(0.5 - 0.83)) / 4
    assert bins.ece == pytest.approx(expected)
    assert calibration_bins([1.0, 0.0], [True, False], 15).count[[0, 14]].tolist() == [1, 1]


def test_ece_matches_torchmetrics():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 10, generator=g), dim=1)
    labels = torch.randint(0, 10, (500,), generator=g)
    conf, pred = probs.max(dim=1)
    ours = calibration_bins(conf, pred == labels, 15).ece
    theirs = MulticlassCalibrationError(10, n_bins=15, norm="l1")(probs, labels).item()
    assert ours == pytest.approx(theirs, abs=1e-5)


def edge_case_predictions(n_bins: int, num_classes: int = 40, seed: int = 0):
    """Probability rows and labels whose top-1 confidences hit every bin-edge case.

    Random softmax rows, plus rows whose maximum is exactly: each float32 bin edge
    ``torch.linspace(0, 1, n_bins + 1)`` (the edges torchmetrics bins with), the float32 value of
    each ``k / n_bins`` (one ulp away from several of those edges, e.g. 0.2 for 15 bins), 1.0,
    and the float just below 1.0. Few samples in many bins leave some bins empty.
    """
    g = torch.Generator().manual_seed(seed)
    edges = torch.linspace(0, 1, n_bins + 1)
    fractions = torch.arange(n_bins + 1, dtype=torch.float64).div(n_bins).float()
    below_one = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).reshape(1)
    tops = torch.cat([edges, fractions, torch.ones(3), below_one.repeat(2)])
    tops = tops[tops > 1 / num_classes]  # the maximum of a probability row is at least 1/C
    rows = torch.rand(len(tops), num_classes, generator=g) * 0.9 * tops[:, None]
    winner = torch.randint(0, num_classes, (len(tops),), generator=g)
    rows[torch.arange(len(tops)), winner] = tops
    soft = torch.softmax(4 * torch.randn(60, num_classes, generator=g), dim=1)
    probs = torch.cat([rows, soft])
    labels = torch.randint(0, num_classes, (len(probs),), generator=g)
    hit_half = torch.rand(len(probs), generator=g) < 0.5  # half the rows predicted right
    labels = torch.where(hit_half, probs.argmax(dim=1), labels)
    return probs, labels


@pytest.mark.parametrize("n_bins", [1, 3, 7, 10, 13, 15, 20, 50])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ece_equals_torchmetrics_on_bin_edges_empty_bins_and_confidence_one(n_bins, dtype):
    probs, labels = edge_case_predictions(n_bins)
    probs = probs.to(dtype)
    conf, pred = probs.max(dim=1)
    edges = torch.linspace(0, 1, n_bins + 1)
    edges = edges[edges > 1 / probs.shape[1]]
    assert bool((conf.float()[:, None] == edges).any(dim=0).all())  # every edge case is in
    bins = calibration_bins(conf.numpy(), (pred == labels).numpy(), n_bins)
    theirs = MulticlassCalibrationError(probs.shape[1], n_bins=n_bins, norm="l1")(probs, labels)
    assert bins.ece == pytest.approx(theirs.item(), abs=1e-6)
    assert bins.count.sum() == len(probs)
    if n_bins >= 20:
        assert (bins.count == 0).any()  # empty bins, drawn as no bar, count for nothing


def test_bins_are_torchmetrics_bins():
    # Without confidences of exactly 1, the bars add up to the ECE: Σ (count/N)·|acc − conf|.
    probs, labels = edge_case_predictions(15)
    conf, pred = probs.max(dim=1)
    keep = conf < 1
    bins = calibration_bins(conf[keep], pred[keep] == labels[keep], 15)
    gaps = np.abs(bins.accuracy - bins.confidence)
    assert float(np.sum(bins.count / keep.sum().item() * gaps)) == pytest.approx(bins.ece, abs=1e-6)
    # A float32 confidence of 0.2 lies just below torchmetrics' edge 0.20000002: bin 2, not 3.
    assert calibration_bins([0.2], [True], 15).count[[2, 3]].tolist() == [1, 0]
    # torchmetrics counts confidences of exactly 1 in a bin of their own (torchmetrics#3510);
    # the ECE follows it (0.525 here, where one bar [0.9, 1] would give 0.475), the bar holds both.
    probs = torch.tensor([[0.95, 0.05], [1.0, 0.0]])
    labels = torch.tensor([0, 1])
    bins = calibration_bins(probs.max(dim=1).values, [True, False], 10)
    theirs = MulticlassCalibrationError(2, n_bins=10, norm="l1")(probs, labels).item()
    assert bins.ece == pytest.approx(theirs, abs=1e-6)
    assert bins.count[9] == 2 and bins.accuracy[9] == 0.5


def test_reliability_diagram_png(tmp_path):
    path = tmp_path / "a" / "rel.png"
    ece = reliability_diagram([0.9, 0.6, 0.8], [True, False, True], 15, path)
    assert ece == pytest.approx(0.3)
    assert matplotlib.image.imread(path).shape == (400, 400, 4)


@pytest.mark.parametrize(
    ("conf", "correct", "n_bins", "match"),
    [
        ([0.5], [True], 0, r"`n_bins` must be a positive integer, got 0"),
        ([0.5, 0.6], [True], 15, r"same length, got 2 and 1"),
        ([], [], 15, r"must be non-empty"),
        ([1.5], [True], 15, r"`confidences` must lie in \[0, 1\]"),
        ([0.5, 0.7], [1, 2], 15, r"`correct` must hold booleans or 0/1 .*got values \[1.0, 2.0\]"),
    ],
)
def test_calibration_rejects_bad_input(tmp_path, conf, correct, n_bins, match):
    with pytest.raises(ValueError, match=match):
        reliability_diagram(conf, correct, n_bins, tmp_path / "r.png")


def test_log_mixed_grid_writes_into_a_given_folder_even_off_the_log_dir(tmp_path):
    t = trainer(tmp_path / "root", logger=CSVLogger(tmp_path, name="csv", version=0))
    path = log_mixed_grid(t, *mixed_batch(2), folder=tmp_path / "grids")
    assert path == tmp_path / "grids" / "mixed_grid_epoch0.png" and path.exists()


@pytest.mark.parametrize("n_bins", [1, 7, 15, 50])
def test_bars_are_the_predictions_between_torchmetrics_edges(n_bins):
    # Against a direct count over the float32 edges torchmetrics bins with: bin b holds the
    # confidences in [edges[b], edges[b+1]), the last bin also those equal to 1.
    probs, labels = edge_case_predictions(n_bins)
    conf, pred = probs.max(dim=1)
    hit = (pred == labels).double()
    bins = calibration_bins(conf, pred == labels, n_bins)
    edges = torch.linspace(0, 1, n_bins + 1)
    for b in range(n_bins):
        upper = conf <= edges[b + 1] if b == n_bins - 1 else conf < edges[b + 1]
        inside = (conf >= edges[b]) & upper
        assert bins.count[b] == int(inside.sum())
        if inside.any():
            assert bins.accuracy[b] == pytest.approx(hit[inside].mean().item())
            assert bins.confidence[b] == pytest.approx(conf[inside].double().mean().item())
        else:
            assert bins.accuracy[b] == 0 and bins.confidence[b] == 0
    assert bins.edges.tolist() == edges.double().tolist()
