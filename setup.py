"""Builds the kernels' C extensions when it can; the package installs without them.

Everything else about the package is in pyproject.toml. ``optional=True``: when the C file
does not compile (no compiler, no Python headers), setuptools warns and goes on: the
domain kernel uses its NumPy and Arrow path (tally.kernels.columnar) instead, and the
group-by kernel reads every chunk with PyArrow (tally.kernels.fields).
"""

import hashlib
import os
from pathlib import Path

from setuptools import Extension, setup

KERNELS = "src/tally/kernels"
HEADERS = [f"{KERNELS}/_native_{name}.h" for name in ("common", "table", "spare")]
SOURCE = f"{KERNELS}/_native.c"
FIELDS = f"{KERNELS}/_fields.c"
FIELDS_HEADERS = [f"{KERNELS}/_fields_values.h"]
HERE = Path(__file__).resolve().parent


def digest(*names: str) -> str:
    """The start of the SHA-256 of the sources: the module knows what it was built from (a
    test finds a stale build)."""
    return hashlib.sha256(b"".join((HERE / name).read_bytes() for name in names)).hexdigest()[:16]


FLAGS = [] if os.name == "nt" else ["-O3"]

setup(
    ext_modules=[
        Extension(
            "tally.kernels._native",
            sources=[SOURCE],
            depends=HEADERS,
            define_macros=[("NATIVE_SOURCE", f'"{digest(SOURCE, *HEADERS)}"')],
            extra_compile_args=FLAGS,
            optional=True,
        ),
        Extension(
            "tally.kernels._fields",
            sources=[FIELDS],
            depends=FIELDS_HEADERS,
            define_macros=[("FIELDS_SOURCE", f'"{digest(FIELDS, *FIELDS_HEADERS)}"')],
            extra_compile_args=FLAGS,
            optional=True,
        ),
    ]
)
