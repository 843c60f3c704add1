"""Moving parts of the fault suite: the agent as a child process, a restartable broker, a switchable S3 link,
an MQTT receiver that de-duplicates by message id, and helpers that build the frames fed to the cameras."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2

from bench.services import free_port
from tests.harness import MosquittoService, Subscriber


class AgentProcess:
    """``edge-agent run`` in a child process; SIGKILL and SIGTERM it; samples its resident memory."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config, self.log_path = config, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.peak_rss_mb = 0.0
        self._sampler: threading.Thread | None = None

    def start(self) -> None:
        """Start a new agent process (the previous one must be gone)."""
        with self.log_path.open("ab") as log_file:
            cmd = [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(self.config)]
            self.proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        self.starts += 1
        self._sampler = threading.Thread(target=self._sample, args=(self.proc,), daemon=True)
        self._sampler.start()

    def _sample(self, proc: subprocess.Popen[bytes]) -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_rss_mb = max(self.peak_rss_mb, int(line.split()[1]) / 1024)
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a power cut or the OOM killer would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 120.0) -> int:
        """SIGTERM and wait for the clean exit; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    @property
    def alive(self) -> bool:
        """True while the current process runs."""
        return self.proc is not None and self.proc.poll() is None


class Broker(MosquittoService):
    """The harness's mosquitto with on-disk persistence (queued QoS 1 messages survive a restart)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, persistent=True)
        self.restarts = 0

    def restart(self, down_seconds: float) -> None:
        """Stop, stay down for ``down_seconds``, start again on the same port."""
        self.stop()
        time.sleep(down_seconds)
        self.start()
        self.restarts += 1


class SwitchableLink:
    """A TCP relay to ``upstream_port``; ``down()`` closes it and refuses connections (an S3 outage)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.outages = 0

    def up(self) -> None:
        """Accept connections again on the same port."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Close the listener and every relayed connection."""
        self.outages += 1
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._conns.discard(src)


def alert_receiver(port: int, topic: str) -> Subscriber:
    """A persistent-session QoS 1 subscriber: every delivery counts (``Counter(receiver.message_ids())``)."""
    return Subscriber(
        "127.0.0.1", port, topic, client_id="soak-receiver", clean_session=False, reconnect_delay=(0.1, 0.5)
    )


def verdict_count(db: Path) -> int:
    """Verdicts stored so far (a read-only connection beside the agent's)."""
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM verdicts").fetchone()[0])
        except sqlite3.OperationalError:  # schema not created yet
            return 0


def image_pool(datasets: Path, seed: int = 0) -> list[tuple[str, Path]]:
    """(tag, path) of the real images the folder camera gets, shuffled: bottle, tire and casting, normal and
    defective (the bottle bundle flags tire and casting as anomalous: they stand for a wrong part on the line)."""
    bottle, tire, casting = datasets / "mvtec_ad/bottle", datasets / "mvtec_3d_rgb/tire", datasets / "casting"
    pool = [("bottle_good", p) for p in sorted((bottle / "train/good").glob("*.png"))]
    pool += [(f"bottle_{p.parent.name}", p) for p in sorted((bottle / "test").glob("*/*.png"))]
    pool += [(f"tire_{p.parent.name}", p) for p in sorted((tire / "test").glob("*/*.png"))[::3]]
    for folder in ("ok_front", "def_front"):
        pool += [(f"casting_{folder}", p) for p in sorted((casting / folder).glob("*"))[:40]]
    if not pool:
        raise SystemExit(f"no images under {datasets}")
    random.Random(seed).shuffle(pool)
    return pool


def write_video(path: Path, datasets: Path, n_frames: int, size: int = 512) -> Path:
    """An MJPG AVI of ``n_frames`` real bottle frames (normal and defective) for the stream camera."""
    bottle = datasets / "mvtec_ad/bottle"
    paths = sorted((bottle / "train/good").glob("*.png"))[:60] + sorted((bottle / "test").glob("*/*.png"))[::4]
    frames = [cv2.resize(cv2.imread(str(p)), (size, size)) for p in paths]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (size, size))
    for frame in itertools.islice(itertools.cycle(frames), n_frames):
        writer.write(frame)
    writer.release()
    return path


def drop_file(src: Path, incoming: Path, name: str) -> None:
    """Write a file the way cameras do: a ``.part`` temporary, then an atomic rename."""
    part = incoming / f"{name}.part"
    shutil.copyfile(src, part)
    os.replace(part, incoming / name)


def corrupt_copy(src: Path, incoming: Path, name: str, rng: random.Random) -> None:
    """A broken image: truncated, zero bytes, or random bytes under an image name."""
    data = src.read_bytes()
    kind = rng.choice(["truncated", "empty", "random"])
    body = {"truncated": data[: len(data) // 3], "empty": b"", "random": rng.randbytes(4096)}[kind]
    part = incoming / f"{name}.part"
    part.write_bytes(body)
    os.replace(part, incoming / name)
