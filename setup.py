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


def extension(name: str, source: str, headers: list[str]) -> Extension:
    """``tally.kernels.<name>``, which knows the digest of the sources it was built from."""
    macro = f"{name.lstrip('_').upper()}_SOURCE"
    return Extension(
        f"tally.kernels.{name}",
        sources=[source],
        depends=headers,
        define_macros=[(macro, f'"{digest(source, *headers)}"')],
        extra_compile_args=FLAGS,
        optional=True,
    )


setup(
    ext_modules=[
        extension("_native", SOURCE, HEADERS),
        extension("_fields", FIELDS, FIELDS_HEADERS),
    ]
)
