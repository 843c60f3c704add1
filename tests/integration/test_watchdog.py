"""The watchdog means it: a hung model call and a stream that stops yielding turn /healthz unhealthy and stop the
systemd watchdog pings; a restart recovers; an idle folder camera stays healthy.

Real parts: the bottle int8 bundle, a real HTTP MJPEG stream read by OpenCV's FFmpeg backend, the real
``/healthz`` endpoint and sd_notify datagrams on a real AF_UNIX socket. The one stand-in is the hang itself: the
inspector's ``inspect`` is wrapped to block on an event before calling the real one.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent import systemd_notify
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from tests.harness import wait_until

LIMIT = 1.5  # frame_timeout_seconds and stream_silence_seconds in these tests


class Pings:
    """The service manager's end of NOTIFY_SOCKET: counts WATCHDOG=1 datagrams with their arrival time."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="lwwd")
        path = str(Path(self._dir.name) / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.05)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        self.times: list[float] = []

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return
            if b"WATCHDOG=1" in data:
                self.times.append(time.monotonic())

    def since(self, start: float) -> int:
        self.drain()
        return sum(t >= start for t in self.times)

    def close(self) -> None:
        self.sock.close()
        self._dir.cleanup()


class MainLoop:
    """What ``run_forever`` does (without its signal handlers, which need the main thread): ``tick`` every 0.1 s."""

    def __init__(self, agent: Agent) -> None:
        self.agent, self.stop = agent, threading.Event()
        self.pinger = systemd_notify.Watchdog()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            self.agent.tick(self.pinger)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def healthz(agent: Agent) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{agent.metrics_server.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def config(tmp_path: Path, bundle: Path, source: dict) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "agent": {
                "name": "wd",
                "data_dir": str(tmp_path / "data"),
                "frame_timeout_seconds": LIMIT,
                "stream_silence_seconds": LIMIT,
            },
            "database": {"url": f"sqlite:///{tmp_path / 'agent.db'}"},
            "cameras": [{"id": "cam1", "bundle": str(bundle), "source": source}],
            "metrics": {"enabled": True, "port": 0},
        }
    )


@pytest.fixture
def pings(monkeypatch) -> Iterator[Pings]:
    listener = Pings(monkeypatch)
    yield listener
    listener.close()


def run_until_unhealthy(agent: Agent, pings: Pings, started: float) -> float:
    """Wait for /healthz to say 503; check pings came before and stopped after; return when it turned."""
    wait_until(lambda: healthz(agent)[0] == 503, 3 * LIMIT + 5, "/healthz to turn unhealthy")
    turned = time.monotonic()
    assert pings.since(started) > 0, "no watchdog pings while healthy"
    time.sleep(1.0)
    assert pings.since(turned + 0.15) == 0, "watchdog pings went on while unhealthy"
    return turned


def test_hung_model_call_stops_the_pings_and_a_restart_recovers(tmp_path, bottle_bundle, datasets_root, pings):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    cfg = config(tmp_path, bottle_bundle, {"type": "folder", "path": str(incoming), "stable_seconds": 0.1})
    agent = Agent(cfg)
    release = threading.Event()
    pipeline = agent.cameras[0].pipeline
    real_inspect = pipeline.inspector.inspect

    def hung_inspect(*args, **kwargs):
        release.wait(120)  # an interpreter call that does not return
        return real_inspect(*args, **kwargs)

    pipeline.inspector.inspect = hung_inspect
    agent.start()
    loop = MainLoop(agent)
    started = time.monotonic()
    try:
        assert healthz(agent)[0] == 200
        shutil.copyfile(next((datasets_root / "mvtec_ad/bottle/test/good").glob("*.png")), incoming / "a.png")
        wait_until(lambda: agent.cameras[0].busy_since, 10, "the frame to be in hand")
        in_hand = min(agent.cameras[0].busy_since.values())  # when the frame was handed to the scorer
        turned = run_until_unhealthy(agent, pings, started)
        assert LIMIT <= turned - in_hand <= LIMIT + 2.0  # within the limit (+ the 0.05 s poll and a tick)
        print(f"hung call: /healthz 503 after {turned - in_hand:.2f} s in hand (limit {LIMIT} s)")
        body = healthz(agent)[1]
        assert body["cameras"]["cam1"]["healthy"] is False
        assert "frame in hand" in body["cameras"]["cam1"]["problems"][0]
    finally:
        loop.close()
        release.set()  # what systemd's SIGKILL would end; here the call returns so the thread can be joined
        agent.stop()

    restarted = Agent(cfg)
    restarted.start()
    loop = MainLoop(restarted)
    after = time.monotonic()
    try:
        wait_until(lambda: restarted.store.counts(None).get("cam1", {}).get("frames") == 1, 30, "the verdict")
        assert healthz(restarted)[0] == 200
        wait_until(lambda: pings.since(after) >= 3, 5, "pings after the restart")
    finally:
        loop.close()
        restarted.stop()


class SilentCamera:
    """A real HTTP MJPEG camera (multipart/x-mixed-replace) that can stop sending while keeping its socket open."""

    def __init__(self) -> None:
        image = np.zeros((96, 96, 3), np.uint8)
        image[:, :48] = 200
        self.jpeg = cv2.imencode(".jpg", image)[1].tobytes()
        self.sending = threading.Event()
        self.sending.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/stream.mjpg"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
            while not self.closed:
                if self.sending.is_set():
                    head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(self.jpeg)
                    conn.sendall(head + self.jpeg + b"\r\n")
                time.sleep(0.1)  # 10 frames/s, or silence with the connection held open
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.closed = True
        self.server.close()


def test_silent_stream_stops_the_pings_and_an_idle_folder_stays_healthy(tmp_path, bottle_bundle, pings):
    camera = SilentCamera()
    source = {"type": "stream", "url": camera.url, "stall_seconds": 1.0, "reconnect_max_seconds": 1.0}
    cfg = config(tmp_path, bottle_bundle, source)
    agent = Agent(cfg)
    agent.start()
    loop = MainLoop(agent)
    started = time.monotonic()
    try:
        wait_until(lambda: agent.store.counts(None).get("cam1", {}).get("frames", 0) >= 3, 30, "stream frames")
        assert healthz(agent)[0] == 200
        camera.sending.clear()  # the camera hangs: connection open, no frames
        silent_from = time.monotonic()
        turned = run_until_unhealthy(agent, pings, started)
        assert turned - silent_from <= LIMIT + 3.0
        print(f"silent stream: /healthz 503 {turned - silent_from:.2f} s after the last frame (limit {LIMIT} s)")
        assert "no frame for" in healthz(agent)[1]["cameras"]["cam1"]["problems"][0]
    finally:
        loop.close()
        agent.stop()
    camera.sending.set()  # the camera is back; systemd restarted the agent
    restarted = Agent(cfg)
    restarted.start()
    loop = MainLoop(restarted)
    after = time.monotonic()
    try:
        wait_until(lambda: pings.since(after) >= 3, 10, "pings after the restart")
        assert healthz(restarted)[0] == 200
    finally:
        loop.close()
        restarted.stop()
        camera.close()

    idle = tmp_path / "idle"
    idle.mkdir()
    quiet = Agent(config(tmp_path / "q", bottle_bundle, {"type": "folder", "path": str(idle)}))
    quiet.start()
    loop = MainLoop(quiet)
    since = time.monotonic()
    try:
        time.sleep(2 * LIMIT + 0.5)  # longer than both limits without a single file
        assert healthz(quiet)[0] == 200
        assert pings.since(since) >= 10
    finally:
        loop.close()
        quiet.stop()
