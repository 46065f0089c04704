"""CI smoke check of an installed wheel, run from outside the source tree.

Usage: ``python -I .ci/smoke.py REPO`` with the python of a fresh environment holding the wheel
(``-I`` keeps the checkout and ``PYTHONPATH`` off ``sys.path``); REPO is the checkout, used only to
refuse a module loaded from it and to find ``examples/digits.yaml``. Exits non-zero on any failure.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path


def _fail(message: str) -> None:
    sys.exit(f"smoke: FAIL: {message}")


def _say(message: str) -> None:
    print(f"smoke: {message}", flush=True)  # before the output of the subprocesses below


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def main() -> None:
    """Run every check; the first failure exits with a message."""
    if len(sys.argv) != 2:
        _fail("usage: python -I .ci/smoke.py REPO")
    repo = Path(sys.argv[1]).resolve()
    if _inside(Path.cwd().resolve(), repo):
        _fail(f"run from outside the source tree, not from {Path.cwd()}")

    import lightning_mixup

    # The lazy layers stay unloaded until a name of theirs is used.
    loaded = [
        name
        for name in (
            "sklearn",
            "optuna",
            "lightning_mixup.classification",
            "lightning_mixup.segmentation",
            "lightning_mixup.evaluation",
            "lightning_mixup.tune",
        )
        if name in sys.modules
    ]
    if loaded:
        _fail(f"`import lightning_mixup` alone imported {loaded}")

    module_file = Path(lightning_mixup.__file__).resolve()
    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    if _inside(module_file, repo) or not _inside(module_file, site_packages):
        _fail(f"lightning_mixup came from {module_file}, not from {site_packages}")
    _say(f"lightning_mixup {lightning_mixup.__version__} from {module_file}")

    missing = [name for name in lightning_mixup.__all__ if not hasattr(lightning_mixup, name)]
    if missing:
        _fail(f"names in `lightning_mixup.__all__` that do not resolve: {missing}")
    import lightning_mixup.classification
    import lightning_mixup.evaluation
    import lightning_mixup.segmentation
    import lightning_mixup.tune.space  # noqa: F401  (tune's Optuna-free part; Optuna is an extra)

    tune_files = {p.name for p in (module_file.parent / "tune").glob("*.py")}
    if (
        not {
            "__init__.py",
            "runner.py",
            "space.py",
            "report.py",
            "compare.py",
            "compare_report.py",
            "_config.py",
            "_options.py",
            "_study.py",
        }
        <= tune_files
    ):
        _fail(f"lightning_mixup/tune is incomplete in the wheel: {sorted(tune_files)}")

    _say(f"all {len(lightning_mixup.__all__)} public names resolve; subpackages import")

    if not (module_file.parent / "py.typed").is_file():
        _fail("the py.typed marker is not installed")
    dist = metadata.distribution("lightning-mixup")
    if dist.version != lightning_mixup.__version__:  # the one version source reached the wheel
        _fail(
            f"the wheel's version {dist.version} is not __version__ {lightning_mixup.__version__}"
        )
    if dist.metadata["License-Expression"] != "Apache-2.0":
        _fail(f"License-Expression is {dist.metadata['License-Expression']!r}")
    if not any(Path(str(f)).name == "LICENSE" for f in dist.files or ()):
        _fail("the LICENSE file is not in the installed distribution")
    _say(f"py.typed, version {dist.version}, License-Expression and LICENSE installed")

    script = Path(sys.executable).parent / "lightning-mixup"
    if not script.is_file():
        _fail(f"the console script {script} is not installed")
    subprocess.run([script, "--help"], check=True, stdout=subprocess.DEVNULL)
    _say("lightning-mixup --help")

    config = repo / "examples" / "digits.yaml"
    with tempfile.TemporaryDirectory() as run_dir:
        subprocess.run(
            [script, "fit", "--config", config, "--trainer.fast_dev_run=true"],
            check=True,
            cwd=run_dir,
        )
    _say("lightning-mixup fit --config examples/digits.yaml --trainer.fast_dev_run=true")

    with tempfile.TemporaryDirectory() as run_dir:  # the [digits] install has no Optuna
        done = subprocess.run(
            [script, "tune", "--config", config], cwd=run_dir, capture_output=True, text=True
        )
    if done.returncode != 2 or "lightning-mixup[tune]" not in done.stderr:
        _fail(f"`lightning-mixup tune` without Optuna: {done.returncode} {done.stderr[-500:]}")
    _say("lightning-mixup tune without Optuna: one-line error naming the [tune] extra")
    with tempfile.TemporaryDirectory() as run_dir:
        done = subprocess.run([script, "compare"], cwd=run_dir, capture_output=True, text=True)
    if done.returncode != 2 or "lightning-mixup[tune]" not in done.stderr:
        _fail(f"`lightning-mixup compare` without Optuna: {done.returncode} {done.stderr[-500:]}")
    _say("lightning-mixup compare without Optuna: one-line error naming the [tune] extra")
    _say("OK")


if __name__ == "__main__":
    main()
