"""Tally: distributed aggregation over partitioned data.

    import tally

    result = tally.run("data/filelist.csv", top=10, workers=2)
    print(result.rows)

Names are imported when first used, so ``import tally`` loads nothing heavy.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing itself costs more to import than the rest of this module
if TYPE_CHECKING:
    from typing import Any

    from tally.api import Interrupted, run, sql
    from tally.errors import ConfigError, TallyError
    from tally.options import JobOptions
    from tally.result import JobFailed, Result
    from tally.service.client import Client

    __version__: str

__all__ = [
    "Client",
    "ConfigError",
    "Interrupted",
    "JobFailed",
    "JobOptions",
    "Result",
    "TallyError",
    "__version__",
    "run",
    "sql",
]

_HOMES = {
    "run": "tally.api",
    "sql": "tally.api",
    "Result": "tally.result",
    "JobOptions": "tally.options",
    "JobFailed": "tally.result",
    "Interrupted": "tally.api",
    "TallyError": "tally.errors",
    "ConfigError": "tally.errors",
    "Client": "tally.service.client",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tally")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
    else:
        raise AttributeError(f"module 'tally' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
