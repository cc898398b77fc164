"""A worker keeps the memory its tasks free (glibc's mallopt), and nothing breaks elsewhere."""

from __future__ import annotations

import platform
import subprocess
import sys
from unittest import mock

import pytest

from tally.kernels import memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_agrees_to_keep_freed_memory() -> None:
    program = (
        "from tally.kernels.memory import retain_freed_memory\n"
        "print(retain_freed_memory())\n"
        "blocks = [bytearray(8 << 20) for _ in range(8)]\n"  # served from the heap now
        "del blocks\n"
        "print(len(bytearray(32 << 20)))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    assert done.stdout.split() == ["True", str(32 << 20)]


def test_without_glibc_nothing_is_changed() -> None:
    class NotGlibc:
        mallopt = None

    with mock.patch("ctypes.CDLL", return_value=NotGlibc()):
        assert memory.retain_freed_memory() is False
    with mock.patch("ctypes.CDLL", side_effect=OSError("no libc")):
        assert memory.retain_freed_memory() is False
