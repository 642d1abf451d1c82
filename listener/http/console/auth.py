"""Who may use the console: the password check, signed session cookies, CSRF tokens, and the
sign-in rate limit.

Sessions are stateless (an HMAC-signed `<session id>.<expiry>.<mac>` cookie) so that every worker
dyno behind one router accepts a session any of them issued, with no table to write. The signing
key is derived from the configured password (or its hash): changing the password signs everyone
out. A CSRF token is the session's own HMAC under another label, so it needs no storage either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass

from core.settings import Settings

#: scrypt cost for stored hashes: about 50 ms a check, which also slows guessing.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The value for CONSOLE_PASSWORD_HASH: `scrypt$n$r$p$salt$digest`, so no plain password
    needs to sit in the deployment's config vars."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def _matches_hash(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        given = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p))
    except ValueError:  # a malformed hash never lets anyone in
        return False
    return hmac.compare_digest(given, _unb64(digest))


class ConsoleAuth:
    """Password, sessions and CSRF for one configuration; `closed` when no password is set."""

    def __init__(self, settings: Settings) -> None:
        self._hash = settings.console_password_hash
        self._password = settings.console_password
        credential = self._hash or self._password
        self.closed = not credential
        self._key = hmac.new(b"flavor-worker console", (credential or "").encode(), "sha256").digest()
        self.session_seconds = int(settings.console_session_hours * 3600)

    def password_ok(self, password: str) -> bool:
        """Constant-time comparison with the configured hash (preferred) or password."""
        if self._hash:
            return _matches_hash(password, self._hash)
        if self._password:
            # Digests of equal length, so the comparison time says nothing about the length.
            return hmac.compare_digest(
                hashlib.sha256(password.encode()).digest(), hashlib.sha256(self._password.encode()).digest()
            )
        return False

    def _mac(self, label: str, value: str) -> str:
        return _b64(hmac.new(self._key, f"{label}|{value}".encode(), "sha256").digest())

    def new_session(self, now: float | None = None) -> tuple[str, str]:
        """A fresh session: (its id, for audit rows and logs; the cookie value)."""
        session_id = secrets.token_hex(8)
        expires = int((now or time.time()) + self.session_seconds)
        return session_id, f"{session_id}.{expires}.{self._mac('session', f'{session_id}.{expires}')}"

    def session_of(self, cookie: str | None, now: float | None = None) -> str | None:
        """The session id of a valid, unexpired cookie; None otherwise."""
        if self.closed or not cookie or cookie.count(".") != 2:
            return None
        session_id, expires, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._mac("session", f"{session_id}.{expires}")):
            return None
        if not expires.isdigit() or int(expires) < (now or time.time()):
            return None
        return session_id

    def csrf_token(self, session_id: str) -> str:
        return self._mac("csrf", session_id)

    def csrf_ok(self, session_id: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf_token(session_id))


@dataclass
class LoginLimiter:
    """At most `attempts` failed sign-ins per client within `window` seconds (in this process).

    Past the limit even the right password is refused until the oldest failure leaves the
    window, so guessing costs an attacker `window / attempts` seconds a guess.
    """

    attempts: int = 5
    window: float = 600.0
    #: Clients remembered at most; beyond it the stalest are forgotten (memory stays bounded).
    max_clients: int = 10_000

    def __post_init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str, now: float | None = None) -> float:
        """Seconds until `client` may try again; 0 when it may now."""
        now = now or time.monotonic()
        failures = self._failures.get(client)
        if failures is None:
            return 0.0
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) < self.attempts:
            return 0.0
        return failures[0] + self.window - now

    def failed(self, client: str, now: float | None = None) -> None:
        if client not in self._failures and len(self._failures) >= self.max_clients:
            del self._failures[next(iter(self._failures))]
        self._failures.setdefault(client, deque(maxlen=self.attempts)).append(now or time.monotonic())

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
