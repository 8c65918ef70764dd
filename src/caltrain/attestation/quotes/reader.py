"""A bounds-checked cursor over evidence bytes: every short read becomes `MalformedQuote`, never IndexError."""

from __future__ import annotations

from caltrain.attestation.errors import MalformedQuote


class Reader:
    """Reads fixed-size fields in order; `what` names the structure in error messages."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise MalformedQuote(
                f"{self.what}: field {field!r} needs {n} bytes at offset {self.pos}, "
                f"only {len(self.data) - self.pos} left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "little")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "little")

    def u64(self, field: str) -> int:
        return int.from_bytes(self.take(8, field), "little")

    def sub(self, n: int, field: str) -> Reader:
        """A reader over the next `n` bytes, for length-prefixed sections."""
        return Reader(self.take(n, field), f"{self.what}.{field}")

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def expect_end(self) -> None:
        if self.remaining:
            raise MalformedQuote(f"{self.what}: {self.remaining} unexpected trailing bytes at offset {self.pos}")
