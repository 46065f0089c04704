"""Build hook for the optional C kernel; all other metadata lives in pyproject.toml.

``lightning_mixup._kernel`` mixes CPU batches in one pass. It is ``optional``: without a C compiler
the install still succeeds and the package falls back to torch ops (see ``functional.HAS_KERNEL``).
"""

import os

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "lightning_mixup._kernel",
            ["lightning_mixup/_kernel.c"],
            extra_compile_args=[] if os.name == "nt" else ["-O3"],
            optional=True,
        )
    ]
)
