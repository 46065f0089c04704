"""Local Sphinx extension of the lightning-mixup docs: CLI help from the real parsers, and checks.

- ``cli-help`` runs ``lightning-mixup ARGS`` at build time and shows what it printed, so the
  flags on the pages come from the parsers themselves and never from a pasted copy.
- Every name in the ``__all__`` of each public module must be documented somewhere in the site.
- Every argument an ``Args:`` section names must be a parameter of the documented callable, and
  a documented callable with an ``Args:`` section must name every parameter: a renamed or added
  argument fails the build (``-W``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parents[2]
_PACKAGE = _ROOT / "lightning_mixup"

#: The modules whose ``__all__`` is the public API; each name must be documented.
PUBLIC_MODULES = (
    "lightning_mixup",
    "lightning_mixup.functional",
    "lightning_mixup.policies",
    "lightning_mixup.schedule",
    "lightning_mixup.classification",
    "lightning_mixup.segmentation",
    "lightning_mixup.evaluation",
    "lightning_mixup.tune",
    "lightning_mixup.cli",
)

# Run the console entry point with the program name users type, whatever the interpreter path.
_CONSOLE = (
    "import sys; sys.argv[0] = 'lightning-mixup'; "
    "from lightning_mixup.cli import console; sys.exit(console())"
)


class CliHelp(SphinxDirective):
    """``cli-help ARGS``: the output of ``lightning-mixup ARGS``, run while the docs are built.

    Option ``until``: cut the output before the first line that starts with this text (which
    must occur), for a summary of a long help.
    """

    required_arguments = 1
    final_argument_whitespace = True
    option_spec = {"until": directives.unchanged_required}

    def run(self) -> list[nodes.Node]:
        """Run the command and return its output as a literal block."""
        args = shlex.split(self.arguments[0])
        for source in _PACKAGE.rglob("*.py"):  # rebuild the page when the parsers change
            self.env.note_dependency(str(source))
        path = os.environ.get("PYTHONPATH", "")
        env = {
            **os.environ,
            "COLUMNS": "100",
            "PYTHONPATH": os.pathsep.join(p for p in (str(_ROOT), path) if p),
        }
        done = subprocess.run(
            [sys.executable, "-c", _CONSOLE, *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=_ROOT,
            timeout=600,
        )
        if done.returncode != 0:
            raise self.error(
                f"`lightning-mixup {self.arguments[0]}` exited with status {done.returncode}:\n"
                f"{done.stderr[-2000:]}"
            )
        lines = done.stdout.rstrip().splitlines()
        until = self.options.get("until")
        if until is not None:
            cut = next((i for i, line in enumerate(lines) if line.startswith(until)), None)
            if cut is None:
                raise self.error(
                    f"`lightning-mixup {self.arguments[0]}` printed no line starting with "
                    f"{until!r} (the `until` option)"
                )
            lines = [*lines[:cut], "[...]"]
        text = "\n".join([f"$ lightning-mixup {self.arguments[0]}", *lines])
        return [nodes.literal_block(text, text, language="none")]


def _summary(obj: Any) -> str:
    """The first line of an object's docstring."""
    doc = inspect.getdoc(obj) or ""
    return doc.splitlines()[0] if doc else ""


def _documented_path(module_name: str, name: str) -> str:
    """Where the API reference documents ``module_name.name``: its public subpackage if any."""
    obj = getattr(importlib.import_module(module_name), name)
    for other in PUBLIC_MODULES[1:]:
        module = importlib.import_module(other)
        if name in module.__all__ and getattr(module, name) is obj:
            return f"{other}.{name}"
    return f"{module_name}.{name}"


class PublicNames(SphinxDirective):
    """``public-names MODULE``: a table of the module's ``__all__``, each linked to its page."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        """One row per public name: the linked name and the first line of its docstring."""
        module_name = self.arguments[0]
        module = importlib.import_module(module_name)
        table = nodes.table()
        group = nodes.tgroup(cols=2)
        table += group
        group += nodes.colspec(colwidth=1)
        group += nodes.colspec(colwidth=3)
        body = nodes.tbody()
        group += body
        for name in sorted(module.__all__, key=str.lower):
            target = _documented_path(module_name, name)
            ref = addnodes.pending_xref(
                "", refdomain="py", reftype="obj", reftarget=target, refexplicit=True
            )
            ref += nodes.literal(name, name)
            row = nodes.row()
            row += nodes.entry("", nodes.paragraph("", "", ref))
            summary = _summary(getattr(module, name))
            row += nodes.entry("", nodes.paragraph(summary, summary))
            body += row
        return [table]


def _resolve(fullname: str) -> Any:
    """The object a dotted name documents, or None when it cannot be imported."""
    parts = fullname.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def check_public_names(app: Sphinx, env: BuildEnvironment) -> None:
    """Warn for every name of a public ``__all__`` that no page documents."""
    documented = env.get_domain("py").objects  # type: ignore[attr-defined]
    by_id: dict[int, str] = {}
    for fullname, entry in documented.items():
        if entry.objtype in ("class", "function", "data", "exception", "module"):
            obj = _resolve(fullname)
            if obj is not None:
                by_id.setdefault(id(obj), fullname)
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        if f"{module_name}" not in documented:
            logger.warning("the public module %s has no page in the API reference", module_name)
        for name in module.__all__:
            if f"{module_name}.{name}" in documented:
                continue
            if id(getattr(module, name)) not in by_id:
                logger.warning(
                    "%s.%s is in `__all__` but documented nowhere in the API reference",
                    module_name,
                    name,
                )


_PARAM = re.compile(r"^:param (?:[^:]*\s)?\\?\*{0,2}\\?\*?(\w+):")


def check_arguments(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Warn when an ``Args:`` section and the signature of a callable of ours disagree."""
    if what not in ("class", "function", "method") or not name.startswith("lightning_mixup."):
        return
    documented = [m.group(1) for line in lines if (m := _PARAM.match(line))]
    if not documented:
        return
    try:
        signature = inspect.signature(obj.__init__ if what == "class" else obj)
    except (TypeError, ValueError):
        return
    parameters = [p for p in signature.parameters if p not in ("self", "cls")]
    unknown = [p for p in documented if p not in parameters]
    missing = [p for p in parameters if p not in documented]
    if unknown:
        logger.warning("%s: `Args:` names %s, which the signature does not have", name, unknown)
    if missing:
        logger.warning("%s: `Args:` does not describe %s", name, missing)


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directive and the checks."""
    app.add_directive("cli-help", CliHelp)
    app.add_directive("public-names", PublicNames)
    app.connect("env-check-consistency", check_public_names)
    # After napoleon (priority 500) has turned the Google sections into fields.
    app.connect("autodoc-process-docstring", check_arguments, priority=600)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
