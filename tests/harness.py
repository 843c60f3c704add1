"""Harness shared by the tests and the benchmarks: real loopback services, an MQTT subscriber, polling.

No pytest here (the benchmarks import it too): a service that does not come up raises RuntimeError, a wait that
times out raises TimeoutError. ``tests/services.py`` wraps the services as pytest fixtures.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.scoring import Calibration

MOSQUITTO = os.environ.get("LINEWATCH_MOSQUITTO", "/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Service:
    """A subprocess that can be stopped and started again on the same port."""

    host = "127.0.0.1"
    stop_signal = signal.SIGTERM

    def __init__(self, name: str, port: int, log_path: Path) -> None:
        self.name, self.port, self.log_path = name, port, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def popen_kwargs(self) -> dict[str, object]:
        """Extra ``subprocess.Popen`` arguments (e.g. the user to run as)."""
        return {}

    def ready(self) -> bool:
        return port_open(self.host, self.port)

    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            return
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(  # type: ignore[call-overload]
                self.command(), stdout=log_file, stderr=subprocess.STDOUT, **self.popen_kwargs()
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
            if self.ready():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        deadline = time.monotonic() + 5
        while port_open(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class MosquittoService(Service):
    """Mosquitto broker; anonymous, or password-only when ``users`` are given.

    ``persistent`` keeps queued QoS 1 messages on disk in ``folder`` across a restart (the soak's broker).
    """

    username: str | None = None
    password: str | None = None

    def __init__(self, folder: Path, users: dict[str, str] | None = None, persistent: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__("mosquitto", free_port(), folder / "mosquitto.log")
        self.config_path = folder / "mosquitto.conf"
        persistence = f"persistence true\npersistence_location {folder}/\nmax_queued_messages 0\n"
        access = "allow_anonymous true\n"
        if users:
            password_file = folder / "passwords"
            for i, (user, password) in enumerate(users.items()):
                flags = ["-b", "-c"] if i == 0 else ["-b"]
                subprocess.run([MOSQUITTO_PASSWD, *flags, str(password_file), user, password], check=True)
            access = f"allow_anonymous false\npassword_file {password_file}\n"
        self.config_path.write_text(
            f"listener {self.port} {self.host}\n"
            f"{access}"
            f"{persistence if persistent else 'persistence false' + chr(10)}"
            f"user {getpass.getuser()}\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        )

    def command(self) -> list[str]:
        return [MOSQUITTO, "-c", str(self.config_path)]


def make_test_pki(folder: Path, name: str = "ca") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (openssl, EC P-256, valid 2 days).

    Returns (ca.pem, server.pem, server.key); calling it again with another ``name`` gives an unrelated CA.
    """
    if shutil.which(OPENSSL) is None:
        raise RuntimeError(f"openssl not found at {OPENSSL}")
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / f"{name}.pem", folder / f"{name}.key"
    cert, key, csr = folder / f"{name}-server.pem", folder / f"{name}-server.key", folder / f"{name}-server.csr"
    ext = folder / f"{name}-server.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    days, ext_arg = ["-days", "2"], ["-extfile", ext]
    for cmd in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, *days, "-subj", f"/CN=linewatch test {name}"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, *days, *ext_arg],
    ):
        subprocess.run([OPENSSL, *map(str, cmd)], check=True, capture_output=True, timeout=60)
    return ca, cert, key


class MosquittoTLSService(Service):
    """Mosquitto with only a TLS listener, a password file and ``allow_anonymous false``.

    ``ca_file`` verifies its certificate; ``wrong_ca_file`` is an unrelated CA; ``users`` maps names to passwords.
    """

    def __init__(self, folder: Path, users: dict[str, str]) -> None:
        super().__init__("mosquitto-tls", free_port(), folder / "mosquitto.log")
        self.users = users
        self.ca_file, cert, key = make_test_pki(folder / "pki", "ca")
        self.wrong_ca_file = make_test_pki(folder / "pki", "other-ca")[0]
        password_file = folder / "passwords"
        for i, (user, password) in enumerate(users.items()):
            flags = ["-b", "-c"] if i == 0 else ["-b"]
            subprocess.run([MOSQUITTO_PASSWD, *flags, str(password_file), user, password], check=True)
        self.config_path = folder / "mosquitto.conf"
        self.config_path.write_text(
            f"listener {self.port} {self.host}\n"
            f"cafile {self.ca_file}\ncertfile {cert}\nkeyfile {key}\ntls_version tlsv1.2\n"
            f"allow_anonymous false\npassword_file {password_file}\n"
            "persistence false\n"
            f"user {getpass.getuser()}\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        )

    def command(self) -> list[str]:
        return [MOSQUITTO, "-c", str(self.config_path)]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class MotoS3Service(Service):
    """moto's server mode speaking the S3 HTTP API on loopback."""

    def __init__(self, folder: Path, binary: str) -> None:
        super().__init__("moto_server", free_port(), folder / "moto.log")
        self.binary = binary

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [self.binary, "-p", str(self.port), "-H", self.host]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint_url + "/", timeout=0.5):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it is serving
        except OSError:
            return False


def moto_binary() -> str | None:
    beside = Path(sys.executable).with_name("moto_server")
    return str(beside) if beside.exists() else shutil.which("moto_server")


def fixed_calibration(center: float, threshold: float, pixel_threshold: float) -> Calibration:
    """A scorer calibration with these three values (the rest empty), for maps drawn or stored without a bundle."""
    return Calibration(
        threshold=threshold,
        center=center,
        pixel_threshold=pixel_threshold,
        method="test",
        n_validation=20,
        false_alarm_rate=None,
        false_alarm_bound=None,
        n_normal=None,
        note=None,
    )


def variant(source: Path, target: Path, version: str, threshold_factor: float = 1.0) -> Path:
    """A copy of bundle ``source`` with another version (and threshold) in its manifest: valid, another digest."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = version
    manifest["models"]["scorer"]["calibration"]["threshold"] *= threshold_factor
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return target


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Message:
    """One MQTT message as a subscriber received it."""

    topic: str
    payload: bytes
    retain: bool

    @property
    def text(self) -> str:
        """The payload as UTF-8 text."""
        return self.payload.decode("utf-8", "replace")


class Subscriber:
    """A paho subscriber to ``topic`` (QoS 1) collecting every message; TLS and a login when given.

    ``clean_session=False`` with a ``client_id`` keeps a persistent session (messages sent while it was away
    arrive after a reconnect); ``reconnect_delay`` sets paho's (min, max) reconnect back-off.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic: str = "#",
        *,
        ca_file: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        clean_session: bool = True,
        reconnect_delay: tuple[float, float] | None = None,
        wait_subscribed: float | None = 10.0,
    ) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        client_id = client_id or f"subscriber-{time.monotonic_ns()}"
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
        if ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file))
        if username is not None:
            self.client.username_pw_set(username, password)
        if reconnect_delay is not None:
            self.client.reconnect_delay_set(*reconnect_delay)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if wait_subscribed is not None and not self.subscribed.wait(wait_subscribed):
            self.close()
            raise TimeoutError(f"subscriber to {topic} on {host}:{port} got no SUBACK")

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def received(self) -> list[Message]:
        """A copy of the messages so far."""
        with self.lock:
            return list(self.messages)

    def payloads(self, topic: str) -> list[str]:
        """Payloads (text) received on ``topic``, in order."""
        return [m.text for m in self.received() if m.topic == topic]

    def message_ids(self) -> list[str]:
        """``message_id`` of every JSON payload (an alert delivered twice appears twice)."""
        return [json.loads(m.payload)["message_id"] for m in self.received()]

    def close(self) -> None:
        """Disconnect and stop the network loop."""
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def small_fs(path: Path, size_kb: int, read_only: bool = False) -> Iterator[Path | None]:
    """A real tmpfs of ``size_kb`` at ``path`` (root), unmounted afterwards; None when mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size_kb}k" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
