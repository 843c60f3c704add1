"""Log-in for the review page: PBKDF2-HMAC-SHA256 password hashes, roles, a throttle on failed attempts.

Hash format: ``pbkdf2_sha256$<iterations>$<salt, base64>$<hash, base64>``. Passwords and hashes are never
logged; only user names are.

Examples:
    >>> stored = hash_password("correct horse", iterations=10_000)
    >>> verify_password("correct horse", stored), verify_password("wrong", stored)
    (True, False)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field

from edge_agent.secrets import read_secret
from review.config import Role, UserConfig

log = logging.getLogger(__name__)

ALGORITHM = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256
MIN_ITERATIONS = 10_000
SALT_BYTES = 16


class HashFormatError(ValueError):
    """A stored password hash is not ``pbkdf2_sha256$iterations$salt_b64$hash_b64``."""


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    """A new hash of ``password`` with a random 16-byte salt."""
    if iterations < MIN_ITERATIONS:
        msg = f"iterations must be at least {MIN_ITERATIONS}"
        raise ValueError(msg)
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{ALGORITHM}${iterations}${_b64(salt)}${_b64(digest)}"


def parse_hash(stored: str) -> tuple[int, bytes, bytes]:
    """(iterations, salt, digest) of a stored hash; HashFormatError (without the hash) when malformed."""
    parts = stored.strip().split("$")
    if len(parts) != 4 or parts[0] != ALGORITHM:
        raise HashFormatError(f"not a {ALGORITHM} hash")
    try:
        iterations = int(parts[1])
        salt = base64.b64decode(parts[2], validate=True)
        digest = base64.b64decode(parts[3], validate=True)
    except (ValueError, binascii.Error) as err:
        raise HashFormatError(f"malformed {ALGORITHM} hash") from err
    if iterations < MIN_ITERATIONS or not salt or len(digest) != hashlib.sha256().digest_size:
        raise HashFormatError(f"{ALGORITHM} hash with too few iterations, no salt or a wrong length")
    return iterations, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored`` (constant-time compare); False for a malformed hash."""
    try:
        iterations, salt, expected = parse_hash(stored)
    except HashFormatError:
        return False
    actual = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(actual, expected)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class User:
    """A logged-in person. Only ``reviewer`` may write feedback."""

    name: str
    role: Role

    @property
    def can_write(self) -> bool:
        """True for reviewers."""
        return self.role == "reviewer"


@dataclass
class LoginThrottle:
    """After ``max_failures`` failed attempts for one name, refuse that name for ``lockout_seconds``."""

    max_failures: int = 5
    lockout_seconds: float = 60.0
    _failures: dict[str, list[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def locked(self, name: str, now: float | None = None) -> bool:
        """True while ``name`` is locked out."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [t for t in self._failures.get(name, []) if now - t < self.lockout_seconds]
            self._failures[name] = recent
            return len(recent) >= self.max_failures

    def failed(self, name: str, now: float | None = None) -> None:
        """Count one failed attempt."""
        with self._lock:
            self._failures.setdefault(name, []).append(time.monotonic() if now is None else now)

    def succeeded(self, name: str) -> None:
        """Forget the failures of ``name``."""
        with self._lock:
            self._failures.pop(name, None)


class Authenticator:
    """Checks names and passwords against the configured users; hashes are read once, at construction."""

    def __init__(self, users: list[UserConfig], throttle: LoginThrottle | None = None) -> None:
        self.throttle = throttle or LoginThrottle()
        self._users: dict[str, tuple[Role, str | None]] = {}
        for user in users:
            stored = user.password_hash or read_secret(user.password_hash_env, user.password_hash_credential)
            if stored is None:
                where = user.password_hash_env or user.password_hash_credential
                log.warning("user %s cannot log in: no password hash in %s", user.name, where)
            elif not _well_formed(stored):
                log.warning("user %s cannot log in: the configured password hash is malformed", user.name)
                stored = None
            self._users[user.name] = (user.role, stored)
        costs = [parse_hash(stored)[0] for _, stored in self._users.values() if stored]
        # unknown names and names without a hash pay for one hash at the highest cost, like a real check
        self._dummy = hash_password(secrets.token_hex(8), iterations=max(costs, default=MIN_ITERATIONS))

    def login(self, name: str, password: str) -> User | None:
        """The user when name and password match; None otherwise (unknown names cost the same time)."""
        if self.throttle.locked(name):
            log.warning("login refused for %s: too many failed attempts", name)
            return None
        role, stored = self._users.get(name, ("viewer", None))
        ok = verify_password(password, stored) if stored else (verify_password(password, self._dummy) and False)
        if not ok:
            self.throttle.failed(name)
            log.info("login failed for %r", name[:64])
            return None
        self.throttle.succeeded(name)
        log.info("login ok: %s (%s)", name, role)
        return User(name, role)


def _well_formed(stored: str) -> bool:
    try:
        parse_hash(stored)
    except HashFormatError:
        return False
    return True
