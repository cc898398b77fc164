"""Builds the fast kernel's C extension when it can; the package installs without it.

Everything else about the package is in pyproject.toml. ``optional=True``: when the C file
does not compile (no compiler, no Python headers), setuptools warns and goes on, and the
fast kernel uses its NumPy and Arrow path (tally.kernels.columnar) instead.
"""

import os

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tally.kernels._native",
            sources=["src/tally/kernels/_native.c"],
            extra_compile_args=[] if os.name == "nt" else ["-O3"],
            optional=True,
        )
    ]
)
