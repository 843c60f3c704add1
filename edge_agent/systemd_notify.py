"""sd_notify without libsystemd: readiness, status, stopping and watchdog pings for ``Type=notify`` units.

The protocol is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``
(a file system path, or an abstract socket written with a leading ``@``). Outside systemd the variable is unset
and every call is a cheap no-op returning ``False``, so the agent runs unchanged in a shell or a test.

Example (outside systemd):
    >>> ready()
    False
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def _address(raw: str) -> str | None:
    """Socket address of ``$NOTIFY_SOCKET``: an absolute path, or ``@name`` for the abstract namespace."""
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None  # vsock:... and other transports are not used by a service manager on the same host


def notify(state: str) -> bool:
    """Send ``state`` (one or more ``KEY=VALUE`` lines) to the service manager; ``False`` when not under systemd."""
    raw = os.environ.get(NOTIFY_SOCKET, "")
    if not raw:
        return False
    address = _address(raw)
    if address is None:
        log.warning("unsupported NOTIFY_SOCKET address %r; notification %r not sent", raw, state)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError as err:
        log.warning("sd_notify %r to %s failed: %s", state.split("\n", 1)[0], raw, err)
        return False
    return True


def ready(text: str | None = None) -> bool:
    """Tell systemd start-up is complete (``READY=1``), optionally with a status line."""
    return notify("READY=1" if text is None else f"READY=1\nSTATUS={_one_line(text)}")


def stopping(text: str | None = None) -> bool:
    """Tell systemd a clean shutdown has begun (``STOPPING=1``)."""
    return notify("STOPPING=1" if text is None else f"STOPPING=1\nSTATUS={_one_line(text)}")


def watchdog() -> bool:
    """Keep-alive ping for ``WatchdogSec=`` (``WATCHDOG=1``)."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """Free-form status shown by ``systemctl status`` (``STATUS=...``)."""
    return notify(f"STATUS={_one_line(text)}")


def extend_timeout(seconds: float) -> bool:
    """Ask for ``seconds`` more before the start/stop timeout fires (``EXTEND_TIMEOUT_USEC=``)."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``); ``None`` when the watchdog is off for us.

    ``$WATCHDOG_PID``, when set, must be this process: a child that inherited the environment must not ping.
    """
    usec = os.environ.get(WATCHDOG_USEC, "")
    if not usec:
        return None
    pid = os.environ.get(WATCHDOG_PID, "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            log.warning("ignoring malformed %s=%r", WATCHDOG_PID, pid)
            return None
    try:
        micros = int(usec)
    except ValueError:
        log.warning("ignoring malformed %s=%r", WATCHDOG_USEC, usec)
        return None
    if micros <= 0:
        return None
    return micros / 2_000_000


class Watchdog:
    """Paced watchdog pings from the agent's main loop, without a thread of its own.

    The loop calls :meth:`maybe_ping` often (every second or so); a ping goes out at most once per ``period``
    and only while the agent reports itself healthy. A stuck pipeline therefore stops the pings and systemd
    restarts the service after ``WatchdogSec=``.

    Example:
        >>> now = [0.0]
        >>> sent = []
        >>> dog = Watchdog(period=15.0, clock=lambda: now[0], send=lambda: sent.append(now[0]) or True)
        >>> dog.maybe_ping(True), dog.maybe_ping(True)
        (True, False)
        >>> now[0] = 15.0
        >>> dog.maybe_ping(False), dog.maybe_ping(True), sent
        (False, True, [0.0, 15.0])
    """

    def __init__(
        self,
        period: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        send: Callable[[], bool] = watchdog,
    ) -> None:
        """``period`` in seconds; ``None`` reads it from ``$WATCHDOG_USEC`` (disabled when that is unset)."""
        self.period = watchdog_interval() if period is None else period
        if self.period is not None and self.period <= 0:
            msg = f"watchdog period must be positive, got {self.period}"
            raise ValueError(msg)
        self._clock = clock
        self._send = send
        self._last: float | None = None
        self._unhealthy_since: float | None = None

    @property
    def enabled(self) -> bool:
        """Whether systemd expects pings from this process."""
        return self.period is not None

    def maybe_ping(self, healthy: bool) -> bool:
        """Ping if healthy and a period has passed since the last ping; return whether a ping was sent."""
        if self.period is None:
            return False
        now = self._clock()
        if not healthy:
            if self._unhealthy_since is None:
                self._unhealthy_since = now
                log.warning("agent unhealthy: withholding watchdog pings (systemd restarts it if this lasts)")
            return False
        if self._unhealthy_since is not None:
            log.info("agent healthy again after %.1f s: watchdog pings resume", now - self._unhealthy_since)
            self._unhealthy_since = None
        if self._last is not None and now - self._last < self.period:
            return False
        if not self._send():
            return False
        self._last = now
        return True
