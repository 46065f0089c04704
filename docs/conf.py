"""Sphinx configuration of the lightning-mixup documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (the ``[docs]`` extra).
"""

from __future__ import annotations

import sys
from pathlib import Path

_DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(_DOCS / "_ext"))  # the local extension below
sys.path.insert(0, str(_DOCS.parent))  # the checkout's package, as the pages describe it

import lightning_mixup  # noqa: E402

project = "lightning-mixup"
author = "lightning-mixup developers"
copyright = "the lightning-mixup developers (Apache-2.0)"
release = lightning_mixup.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
    "lightning_mixup_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# rerun_kernel/ is a kept record whose summary names plots that were not kept: linked as a file.
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "evidence/rerun_kernel/*"]

# Markdown: `:::` fences for directives and {attribute} lists; headings get anchors down to ###.
myst_enable_extensions = ["colon_fence", "attrs_inline"]
myst_heading_anchors = 3
# The benchmark scripts print their tables under H5 headings, which sit under H3 ones in
# benchmarks/README.md (included by benchmarks.md): a jump of two levels, harmless.
suppress_warnings = ["myst.header"]

# The docstrings are Google style; napoleon turns their sections into fields.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = f"lightning-mixup {release}"
html_static_path: list[str] = []
