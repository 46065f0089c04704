"""The ``lightning-mixup`` LightningCLI: every example config, in process and as a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from lightning_mixup import MixupCallback, SoftLabelClassifier, TemperatureScaling
from lightning_mixup.cli import ConfigError, main
from tests.cifar_files import checksum_lists, write_cifar10, write_cifar100

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture
def cifar_dirs(tmp_path, monkeypatch):
    """Tiny CIFAR-10/100 folders in the real layout, with torchvision told their checksums."""
    written = {10: write_cifar10(tmp_path / "c10"), 100: write_cifar100(tmp_path / "c100")}
    for cls, files in (
        (torchvision.datasets.CIFAR10, written[10]),
        (torchvision.datasets.CIFAR100, written[100]),
    ):
        for name, value in checksum_lists(cls, files).items():
            monkeypatch.setattr(cls, name, value)
    return {k: str(v.root) for k, v in written.items()}


def test_digits_example_fits_and_tests(tmp_path):
    cli = main(
        [
            "fit",
            f"--config={EXAMPLES / 'digits.yaml'}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=2",
            "--trainer.limit_test_batches=2",
            *QUIET,
        ]
    )
    assert isinstance(cli.model, SoftLabelClassifier)
    mix = [cb for cb in cli.trainer.callbacks if isinstance(cb, MixupCallback)]
    assert len(mix) == 1 and mix[0].ramp_epochs == 5 and mix[0].stop_epoch == 35
    assert cli.trainer.current_epoch == 2
    assert {"test/acc", "test/nll", "test/ece"} <= set(cli.trainer.callback_metrics)
    assert list(Path(tmp_path).rglob("*.ckpt"))
    assert list(Path(tmp_path).rglob("config.yaml"))


def test_manifold_example_mixes_at_the_two_named_blocks(tmp_path):
    cli = main(
        [
            "fit",
            f"--config={EXAMPLES / 'digits_manifold.yaml'}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.fast_dev_run=3",
            *QUIET,
        ]
    )
    mix = [cb for cb in cli.trainer.callbacks if isinstance(cb, MixupCallback)]
    assert len(mix) == 1 and mix[0].mix_at == ["backbone.features.2", "backbone.features.6"]
    assert mix[0].last_params is not None
    assert mix[0].last_params.at in ("backbone.features.2", "backbone.features.6")
    assert {"test/acc", "test/nll", "test/ece"} <= set(cli.trainer.callback_metrics)


def test_calibration_example_scales_and_measures_ood(tmp_path):
    cli = main(
        [
            "fit",
            f"--config={EXAMPLES / 'digits_calibration.yaml'}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=3",
            *QUIET,
        ]
    )
    metrics = set(cli.trainer.callback_metrics)
    assert {"test/ece", "test/ood_auroc/unseen_classes", "test/ood_auroc/noise"} <= metrics
    (scaling,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, TemperatureScaling)]
    assert scaling.fitted and scaling.temperature != 1.0
    assert cli.datamodule.num_classes == 5


@pytest.mark.parametrize("n", [10, 100])
def test_cifar_examples_run_on_written_files(n, cifar_dirs, tmp_path):
    cli = main(
        [
            "fit",
            f"--config={EXAMPLES / f'cifar{n}.yaml'}",
            f"--data.data_dir={cifar_dirs[n]}",
            "--data.num_workers=0",
            "--data.batch_size=8",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.fast_dev_run=1",
            f"--trainer.default_root_dir={tmp_path}",
            "--model.backbone.class_path=lightning_mixup.SmallCNN",
            f"--model.backbone.init_args.num_classes={n}",
            "--model.backbone.init_args.in_channels=3",
            *QUIET,
        ]
    )
    assert cli.model.num_classes == n
    assert cli.datamodule.num_classes == n
    assert "test/acc" in cli.trainer.callback_metrics
    assert isinstance(cli.trainer.optimizers[0], torch.optim.SGD)
    assert cli.trainer.optimizers[0].defaults["weight_decay"] == 1e-4
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR)
    assert sorted(scheduler.milestones) == [100, 150]


def test_callback_arguments_changed_on_the_command_line(tmp_path):
    """The README recipe: the example configs list the MixupCallback last, so
    `--trainer.callbacks.<argument>` changes it (no second callback mixes the batch again)."""
    cli = main(
        [
            "fit",
            f"--config={EXAMPLES / 'digits.yaml'}",
            "--trainer.callbacks.cutmix_alpha=1.0",
            "--trainer.fast_dev_run=1",
            f"--trainer.default_root_dir={tmp_path}",
            "--test_after_fit=false",
            *QUIET,
        ]
    )
    mix = [cb for cb in cli.trainer.callbacks if isinstance(cb, MixupCallback)]
    assert [(cb.alpha, cb.cutmix_alpha, cb.stop_epoch) for cb in mix] == [(0.4, 1.0, 35)]
    assert "test/acc" not in cli.trainer.callback_metrics


def test_a_second_callback_on_the_command_line_is_refused(tmp_path):
    common = [
        "fit",
        f"--config={EXAMPLES / 'digits.yaml'}",
        "--trainer.callbacks+=lightning_mixup.MixupCallback",
        "--trainer.fast_dev_run=1",
        f"--trainer.default_root_dir={tmp_path}",
        *QUIET,
    ]
    with pytest.raises(
        RuntimeError, match="more than one stateful callback of type `MixupCallback`"
    ):
        main(common)
    with pytest.raises(ValueError, match=r"Two MixupCallbacks would mix the same batches.*\[cut\]"):
        main([*common, "--trainer.callbacks.name=cut"])


def test_bad_config_value_is_rejected_with_the_argument_named(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"^trainer\.callbacks\[1\] \(MixupCallback\): `alpha` must be a number >= 0, got -1",
    ):
        main(
            [
                "fit",
                f"--config={EXAMPLES / 'digits.yaml'}",
                "--trainer.callbacks.alpha=-1",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )


def test_console_script_reports_a_bad_config_value_in_one_line(tmp_path):
    script = Path(sys.executable).with_name("lightning-mixup")
    proc = run(
        str(script),
        "fit",
        f"--config={EXAMPLES / 'digits.yaml'}",
        "--data.val_size=-3",
        f"--trainer.default_root_dir={tmp_path}",
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "lightning-mixup: error: data (DigitsDataModule): `val_size` must be an integer >= 1, "
        "got -3."
    )


def run(*args, **kw):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        args, capture_output=True, text=True, cwd=kw.get("cwd", ROOT), env=env, timeout=300
    )


def test_console_script_and_module_help(tmp_path):
    script = Path(sys.executable).with_name("lightning-mixup")
    proc = run(str(script), "--help")
    assert proc.returncode == 0, proc.stderr
    assert all(cmd in proc.stdout for cmd in ("fit", "validate", "test", "predict"))
    # The commands of the [tune] extra are named too, since the subcommand list cannot show them.
    text = " ".join(proc.stdout.split())
    assert "`lightning-mixup tune --config CONFIG`" in text and "`lightning-mixup compare`" in text
    # A successful run exits with status 0 (the script must not hand the CLI object to sys.exit).
    proc = run(
        str(script),
        "fit",
        f"--config={EXAMPLES / 'digits.yaml'}",
        "--trainer.fast_dev_run=1",
        f"--trainer.default_root_dir={tmp_path}",
        *QUIET,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test/acc" in proc.stdout
    proc = run(sys.executable, "-m", "lightning_mixup", "fit", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--test_after_fit" in proc.stdout and "--trainer.callbacks" in proc.stdout


@pytest.mark.slow
def test_cli_under_ddp_completes_and_writes_one_checkpoint(tmp_path):
    proc = run(
        sys.executable,
        "-m",
        "lightning_mixup",
        "fit",
        f"--config={EXAMPLES / 'digits.yaml'}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=4",
        "--trainer.limit_val_batches=2",
        f"--trainer.default_root_dir={tmp_path}",
        *QUIET,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpts = list(tmp_path.rglob("*.ckpt"))
    assert len(ckpts) == 1, ckpts
    assert "test/acc" in proc.stdout
