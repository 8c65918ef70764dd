"""The enclave's inference sessions: keys opened once per client, request counters, expiry, a bounded table.

Counters may arrive out of order (a client's concurrent requests race over HTTP and into batches), so each
session keeps a sliding anti-replay window (as IPsec and DTLS do): a counter is accepted once, if it is
above the highest seen or at most `REORDER_WINDOW - 1` below it; anything older is refused as a replay.
Only an authenticated request moves the window, so a forged counter cannot burn a client's counters.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from caltrain.crypto.hpke import HpkeKeyPair
from caltrain.inference.errors import BadRequest, ReplayedRequest, SessionExpired, UnknownSession
from caltrain.inference.requests import open_session, request_cipher

OPEN_WINDOW_S = 300.0
SESSION_TTL_S = 3600.0
MAX_SESSION_REQUESTS = 1 << 24  # random 96-bit nonces: far below the 2^32 per key that GCM allows
MAX_SESSIONS = 10_000
REORDER_WINDOW = 1024
_MASK = (1 << REORDER_WINDOW) - 1


class ReplayGuard:
    """Accepts each id once within a window around the issue time the client sealed in.

    The enclave's clock is the host's, so it only moves forward here: rewinding it cannot revive an id
    that was already forgotten (an id is forgotten only once its issue time fell out of the window).
    """

    def __init__(self, window_s: float = OPEN_WINDOW_S) -> None:
        self.window_ms = int(window_s * 1000)
        self.now_ms = 0
        self.seen: dict[str, int] = {}

    def now(self) -> int:
        self.now_ms = max(self.now_ms, int(time.time() * 1000))
        return self.now_ms

    def check(self, key: str, issued_at_ms: int) -> None:
        now = self.now()
        if abs(now - issued_at_ms) > self.window_ms:
            raise BadRequest(f"session opened {(now - issued_at_ms) / 1000:.0f} s away from now; "
                             f"the window is {self.window_ms // 1000} s (check the client's clock)")
        if key in self.seen:
            raise ReplayedRequest(f"session {key} was already opened")
        if len(self.seen) > 100_000:
            self.seen = {r: t for r, t in self.seen.items() if t >= now - self.window_ms}
        self.seen[key] = issued_at_ms


@dataclass
class Session:
    key: bytes
    requests: AESGCM
    expires_ms: int
    used: int = 0
    highest: int = 0
    window: int = 0  # bit i set: counter `highest - i` was accepted

    def check(self, counter: int) -> None:
        """Before opening: refuse a counter already accepted or fallen behind the window."""
        age = self.highest - counter
        if age >= REORDER_WINDOW or (age >= 0 and self.window >> age & 1):
            raise ReplayedRequest(f"request counter {counter} was already used (or is {REORDER_WINDOW}+ behind)")

    def accept(self, counter: int) -> None:
        """After the request authenticated: mark its counter used."""
        if counter > self.highest:
            shift = counter - self.highest  # bounded below: a jump of 2^62 must not build a 2^62-bit integer
            self.window = ((self.window << shift) | 1) & _MASK if shift < REORDER_WINDOW else 1
            self.highest = counter
        else:
            self.window |= 1 << (self.highest - counter)
        self.used += 1


class SessionTable:
    """Live sessions, least recently used first; the oldest is evicted when `max_sessions` are live."""

    def __init__(
        self,
        ttl_s: float = SESSION_TTL_S,
        max_requests: int = MAX_SESSION_REQUESTS,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.ttl_ms, self.max_requests, self.max_sessions = int(ttl_s * 1000), max_requests, max_sessions
        self.opens = ReplayGuard()
        self.live: OrderedDict[str, Session] = OrderedDict()

    def open(self, hpke: HpkeKeyPair, session_id: str, ciphertext: bytes) -> Session:
        key, issued_at_ms = open_session(hpke, session_id, ciphertext)
        self.opens.check(session_id, issued_at_ms)  # a replayed open would reset the counters
        if session_id in self.live:  # ids are public: nobody may replace a live session with a key of their own
            raise ReplayedRequest(f"session {session_id} is live; open a session under a fresh id")
        session = Session(key, request_cipher(key, session_id), self.opens.now() + self.ttl_ms)
        self.live[session_id] = session
        while len(self.live) > self.max_sessions:
            self.live.popitem(last=False)
        return session

    def get(self, session_id: str, now_ms: int) -> Session:
        session = self.live.get(session_id)
        if session is None:
            raise UnknownSession(f"no live session {session_id}: open a new one")
        if now_ms > session.expires_ms or session.used >= self.max_requests:
            del self.live[session_id]
            raise SessionExpired(f"session {session_id} reached its time or request limit: open a new one")
        self.live.move_to_end(session_id)
        return session
