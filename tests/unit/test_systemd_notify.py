"""sd_notify over a real AF_UNIX datagram socket (path and abstract), watchdog interval and ping pacing."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent import systemd_notify as sd


class Listener:
    """The service manager's end: a bound datagram socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def recv(self) -> str:
        return self.sock.recv(4096).decode("utf-8")

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.setblocking(True)
        return False


def _bind(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def path_listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    # a short directory: AF_UNIX paths are limited to 107 bytes
    with tempfile.TemporaryDirectory(prefix="lwsd") as tmp:
        path = str(Path(tmp) / "notify")
        sock = _bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield Listener(sock, path)
        sock.close()


@pytest.fixture
def abstract_listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    name = f"linewatch-test-{uuid.uuid4().hex}"
    sock = _bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield Listener(sock, "@" + name)
    sock.close()


def test_no_socket_is_a_noop():
    assert sd.notify("READY=1") is False
    assert sd.ready() is False
    assert sd.stopping() is False
    assert sd.watchdog() is False
    assert sd.status("x") is False


def test_ready_over_path_socket(path_listener: Listener):
    assert sd.ready() is True
    assert path_listener.recv() == "READY=1"


def test_messages_over_abstract_socket(abstract_listener: Listener):
    assert sd.ready("3 cameras") is True
    assert abstract_listener.recv() == "READY=1\nSTATUS=3 cameras"
    assert sd.watchdog() is True
    assert abstract_listener.recv() == "WATCHDOG=1"
    assert sd.stopping() is True
    assert abstract_listener.recv() == "STOPPING=1"
    assert sd.extend_timeout(1.5) is True
    assert abstract_listener.recv() == "EXTEND_TIMEOUT_USEC=1500000"


def test_status_is_kept_on_one_line(path_listener: Listener):
    assert sd.status("camera top: stalled\nreconnecting") is True
    assert path_listener.recv() == "STATUS=camera top: stalled reconnecting"
    assert sd.status("ünïcode ok") is True
    assert path_listener.recv() == "STATUS=ünïcode ok"


def test_unreachable_or_unsupported_socket_returns_false(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing"))
    assert sd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert sd.notify("READY=1") is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "other", None),
        ("30000000", "not-a-pid", None),
        ("1000000", None, 0.5),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec, pid, expected):
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid == "self":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    elif pid == "other":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    elif pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    assert sd.watchdog_interval() == expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_maybe_ping_paces_and_needs_health():
    clock, sent = FakeClock(), []
    dog = sd.Watchdog(period=15.0, clock=clock, send=lambda: sent.append(clock.now) or True)
    assert dog.enabled
    assert dog.maybe_ping(True) is True  # first healthy call pings at once
    for step in (1.0, 5.0, 14.9):
        clock.now = 100.0 + step
        assert dog.maybe_ping(True) is False
    clock.now = 115.0
    assert dog.maybe_ping(True) is True
    clock.now = 131.0
    assert dog.maybe_ping(False) is False  # stuck pipeline: no ping even though the period passed
    clock.now = 140.0
    assert dog.maybe_ping(False) is False
    clock.now = 141.0
    assert dog.maybe_ping(True) is True  # healthy again: pings resume
    assert sent == [100.0, 115.0, 141.0]


def test_maybe_ping_retries_when_send_fails():
    clock, results = FakeClock(), [False, True]
    dog = sd.Watchdog(period=10.0, clock=clock, send=lambda: results.pop(0))
    assert dog.maybe_ping(True) is False
    clock.now += 1.0
    assert dog.maybe_ping(True) is True  # the failed ping did not start a new period


def test_watchdog_disabled_without_systemd():
    calls = []
    dog = sd.Watchdog(send=lambda: calls.append(1) or True)
    assert not dog.enabled
    assert dog.maybe_ping(True) is False
    assert calls == []


def test_watchdog_rejects_non_positive_period():
    with pytest.raises(ValueError, match="positive"):
        sd.Watchdog(period=0.0)


def test_watchdog_from_environment_pings_real_socket(monkeypatch: pytest.MonkeyPatch, path_listener: Listener):
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    dog = sd.Watchdog()
    assert dog.period == 10.0
    assert dog.maybe_ping(True) is True
    assert path_listener.recv() == "WATCHDOG=1"
    assert dog.maybe_ping(True) is False  # within the period: nothing more on the wire
    assert path_listener.nothing_pending()
