"""Type stub of the fast kernel's C extension (_native.c)."""

ABI: int
SSE2: int
SOURCE: str  # the first hex digits of the SHA-256 of the C sources it was built from

class Counter:
    def __init__(
        self, only: bytes | None = None, seed: int = 0, portable: bool = False, expect: int = 0
    ) -> None: ...
    def add(
        self, buffer: bytearray | bytes | memoryview, begin: int, end: int, record_limit: int
    ) -> tuple[int, int]: ...
    def counts(self) -> dict[bytes, int]: ...
    def take(self) -> tuple[Block, Block, Block]: ...

class Block:  # read through the buffer protocol (bytes, int64 offsets, int64 counts)
    def __buffer__(self, flags: int, /) -> memoryview: ...
