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


#: The layers, lowest first: a module imports only from its own layer and the ones below.
LAYERS = (
    ("core", ("lightning_mixup", *(f"lightning_mixup.{name}" for name in CORE))),
    ("toolkits", ("lightning_mixup.classification", "lightning_mixup.segmentation",
                  "lightning_mixup.detection", "lightning_mixup.evaluation")),
    ("mixup_cli", ("lightning_mixup.mixup_cli",)),  # the LightningCLI every command builds on
    ("tune", ("lightning_mixup.tune",)),
    ("commands", ("lightning_mixup.cli", "lightning_mixup.__main__")),  # the console script
)  # fmt: skip
#: Within the toolkits: which may not import which (segmentation builds on classification's
#: optimizer and data helpers, detection on both; evaluation measures any of them).
SIDEWAYS = {
    "classification": ("evaluation", "segmentation", "detection"),
    "segmentation": ("evaluation", "detection"),
    "detection": ("evaluation",),
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _type_checking_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes under ``if TYPE_CHECKING:`` (imports for type checkers only)."""
    skipped = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None) if isinstance(node, ast.If) else None
        name = getattr(test, "id", None) or getattr(test, "attr", None)
        if name == "TYPE_CHECKING":
            for child in node.body:
                skipped |= {id(n) for n in ast.walk(child)}
    return skipped


def import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the package modules it imports, at any depth of its code."""
    modules = _modules()

    def module_of(name: str) -> str | None:  # the longest prefix of ``name`` that is a module
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = _type_checking_only(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            found |= {m for m in map(module_of, targets) if m is not None}
        graph[name] = found - {name}
    return graph


def _layer(module: str) -> int:
    name = module.removeprefix("lightning_mixup.")
    if name.startswith("_") and not name.startswith("__") and "." not in name:
        return 0  # every private top-level module is core (_checks, _seed, ...)
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(
            module == p or (p != "lightning_mixup" and module.startswith(p + ".")) for p in prefixes
        ):
            return rank
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py's LAYERS")


def test_the_import_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    # cli.console imports the tune package inside the function, only for `tune`/`compare`.
    assert "lightning_mixup.tune" in graph["lightning_mixup.cli"]
    assert "lightning_mixup.tune.runner" in graph["lightning_mixup.tune"]
    # The root's type-checking imports of the toolkits are not imports at run time.
    assert graph["lightning_mixup"] == {"lightning_mixup.callback", "lightning_mixup.policies"}


def test_nothing_imports_upward_or_sideways():
    for module, imported in import_graph().items():
        for target in imported:
            assert _layer(target) <= _layer(module), f"{module} imports {target}, a layer above"
        kind = module.split(".")[1] if "." in module else ""
        for other in SIDEWAYS.get(kind, ()):
            assert not any(t.startswith(f"lightning_mixup.{other}") for t in imported), module


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            assert state.get(target) != "open", f"import cycle: {' -> '.join([*path, target])}"
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
