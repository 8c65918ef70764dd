"""A framed, validated message channel over a stream socket (the enclave's one narrow interface)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

from caltrain.enclave.wire import MAX_FRAME_BYTES, Message, WireError, decode, encode

_LEN = struct.Struct(">Q")

Tap = Callable[[str, bytes], None]


class ChannelClosed(WireError):
    """The peer closed the channel (for the host: the enclave process died)."""


class Channel:
    """Sends and receives whole messages. `tap(direction, frame)` sees every byte, for boundary tests."""

    def __init__(self, sock: socket.socket, *, tap: Tap | None = None) -> None:
        self._sock = sock
        self._tap = tap

    def send(self, msg: Message) -> None:
        self.send_frame(encode(msg))

    def send_frame(self, frame: bytes) -> None:
        """Send one frame as it is (`send` encodes a message first; tests send malformed frames this way)."""
        if self._tap:
            self._tap("out", frame)
        try:  # one write: a separate length write can wake the peer for 8 bytes, then again for the frame
            self._sock.sendall(_LEN.pack(len(frame)) + frame)
        except OSError as exc:
            raise ChannelClosed(f"channel closed while sending: {exc}") from None

    def recv(self) -> Message:
        return decode(self.recv_frame())

    def recv_frame(self) -> memoryview:
        """The next whole frame, undecoded: a frame that does not decode leaves the stream in step."""
        (length,) = _LEN.unpack(self._read(_LEN.size))
        if length > MAX_FRAME_BYTES:
            raise ChannelClosed(f"frame of {length} bytes exceeds the {MAX_FRAME_BYTES}-byte limit; closing")
        frame = self._read(length)
        if self._tap:
            self._tap("in", bytes(frame))
        return frame

    def _read(self, n: int) -> memoryview:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self._sock.recv_into(view[got:], n - got)
            except OSError as exc:
                raise ChannelClosed(f"channel closed while receiving: {exc}") from None
            if k == 0:
                raise ChannelClosed("peer closed the channel")
            got += k
        return view

    def close(self) -> None:
        self._sock.close()
