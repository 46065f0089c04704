"""The package's layers: a light core import, every public name reachable from the top level."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import lightning_mixup

PACKAGE = Path(lightning_mixup.__file__).parent
CORE = (
    "functional", "policies", "schedule", "callback",
    "_batch", "_boxes", "_checks", "_criterion", "_guard", "_hidden", "_seed", "_targets",
)  # fmt: skip
HEAVY = (
    "sklearn",
    "lightning_mixup.classification",
    "lightning_mixup.segmentation",
    "lightning_mixup.detection",
    "lightning_mixup.evaluation",
    "lightning_mixup.tune",
    "optuna",
)


def imported_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return set(json.loads(out.splitlines()[-1]))


def test_importing_the_package_adds_nothing_heavy_to_what_lightning_imports():
    lightning_alone = imported_after("import lightning.pytorch")
    ours = imported_after("import lightning_mixup")
    added = ours - lightning_alone
    for name in HEAVY:
        assert not any(m == name or m.startswith(name + ".") for m in ours), name
    # matplotlib, PIL and torchvision come with Lightning's own import (through torchmetrics)
    # where they are installed; the package itself must not add them.
    assert not {m.split(".")[0] for m in added} & {"matplotlib", "PIL", "torchvision", "sklearn"}
    assert {m for m in added if m.startswith("lightning_mixup")} == {
        "lightning_mixup",
        *(f"lightning_mixup.{name}" for name in CORE),
    }


def test_every_public_name_resolves_from_the_top_level_and_loads_its_layer_lazily():
    code = (
        "import sys, lightning_mixup as L\n"
        "assert 'lightning_mixup.classification' not in sys.modules\n"
        "assert L.SoftLabelClassifier.__module__ == 'lightning_mixup.classification.module'\n"
        "assert 'lightning_mixup.classification' in sys.modules\n"
        "assert 'lightning_mixup.evaluation' not in sys.modules\n"
        "missing = [n for n in L.__all__ if getattr(L, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert 'lightning_mixup.evaluation' in sys.modules\n"
    )
    imported_after(code)  # raises CalledProcessError with the failed assertion


def test_public_names_match_the_lazy_table():
    assert set(lightning_mixup.__all__) == {
        *lightning_mixup._LAZY,
        "CutMix",
        "MixParams",
        "MixUp",
        "MixUpOrCutMix",
        "MixupCallback",
    }
    assert set(dir(lightning_mixup)) >= set(lightning_mixup.__all__)


def test_nothing_imports_upward():
    """The core imports no upper layer; the toolkits import no evaluation code, nor each other
    except segmentation and detection, which build on classification's (and detection on
    segmentation's) optimizer and data helpers."""
    upper = {
        "core": ("classification", "segmentation", "detection", "evaluation", "tune", "cli"),
        "classification": ("evaluation", "segmentation", "detection", "tune"),
        "segmentation": ("evaluation", "detection", "tune"),
        "detection": ("evaluation", "tune"),
        "evaluation": ("tune",),
    }
    core = CORE
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        layer = "core" if rel.stem in core and len(rel.parts) == 1 else rel.parts[0]
        if layer not in upper:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                for above in upper[layer]:
                    assert not name.startswith(f"lightning_mixup.{above}"), (rel, name)
