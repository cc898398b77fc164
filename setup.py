"""Builds the fast kernel's C extension when it can; the package installs without it.

Everything else about the package is in pyproject.toml. ``optional=True``: when the C file
does not compile (no compiler, no Python headers), setuptools warns and goes on, and the
fast kernel uses its NumPy and Arrow path (tally.kernels.columnar) instead.
"""

import hashlib
import os
from pathlib import Path

from setuptools import Extension, setup

KERNELS = "src/tally/kernels"
HEADERS = [f"{KERNELS}/_native_{name}.h" for name in ("common", "table", "spare")]
SOURCE = f"{KERNELS}/_native.c"
HERE = Path(__file__).resolve().parent
DIGEST = hashlib.sha256(b"".join((HERE / name).read_bytes() for name in [SOURCE, *HEADERS]))

setup(
    ext_modules=[
        Extension(
            "tally.kernels._native",
            sources=[SOURCE],
            depends=HEADERS,
            # the module knows which sources it was built from (a test finds a stale build)
            define_macros=[("NATIVE_SOURCE", f'"{DIGEST.hexdigest()[:16]}"')],
            extra_compile_args=[] if os.name == "nt" else ["-O3"],
            optional=True,
        )
    ]
)
