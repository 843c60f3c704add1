"""Real services for integration tests: a mosquitto broker and a moto S3 server on free loopback ports.

Import the fixtures into a test module with ``from tests.services import mosquitto, moto_s3  # noqa: F401``
(``mosquitto_auth``: password only; ``mosquitto_tls``: TLS with a throwaway CA, passwords, no anonymous).
Both objects have ``stop()`` / ``start()`` to simulate an outage; they come back on the same port.
Note: moto keeps its state in memory, so a restarted moto server has no buckets.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

MOSQUITTO = os.environ.get("LINEWATCH_MOSQUITTO", "/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class _Service:
    """A subprocess that can be stopped and started again on the same port."""

    host = "127.0.0.1"

    def __init__(self, name: str, port: int, log_path: Path) -> None:
        self.name, self.port, self.log_path = name, port, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        return _port_open(self.host, self.port)

    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            return
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(self.command(), stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.log_path.read_text()[-2000:]}")
            if self.ready():
                return
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"{self.name} did not answer on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        deadline = time.monotonic() + 5
        while _port_open(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class MosquittoService(_Service):
    """Mosquitto broker without persistence; anonymous, or password-only when ``users`` are given."""

    username: str | None = None
    password: str | None = None

    def __init__(self, folder: Path, users: dict[str, str] | None = None) -> None:
        super().__init__("mosquitto", free_port(), folder / "mosquitto.log")
        self.config_path = folder / "mosquitto.conf"
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
            "persistence false\n"
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
        pytest.fail(f"openssl not found at {OPENSSL}")
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


class MosquittoTLSService(_Service):
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


class MotoS3Service(_Service):
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


def _moto_binary() -> str | None:
    beside = Path(sys.executable).with_name("moto_server")
    return str(beside) if beside.exists() else shutil.which("moto_server")


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory):
    """A running mosquitto broker (``host``, ``port``, ``stop()``, ``start()``), killed at session end."""
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.fail(f"mosquitto not found at {MOSQUITTO}: apt-get install -y mosquitto (or set LINEWATCH_MOSQUITTO)")
    service = MosquittoService(tmp_path_factory.mktemp("mosquitto"))
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def mosquitto_auth(tmp_path_factory: pytest.TempPathFactory):
    """A second broker that requires a password: ``username`` / ``password`` attributes give the valid pair."""
    if not (os.access(MOSQUITTO, os.X_OK) and os.access(MOSQUITTO_PASSWD, os.X_OK)):
        pytest.fail(f"mosquitto / mosquitto_passwd not found ({MOSQUITTO}, {MOSQUITTO_PASSWD})")
    username, password = "linewatch", f"pw-{os.urandom(8).hex()}"
    service = MosquittoService(tmp_path_factory.mktemp("mosquitto_auth"), users={username: password})
    service.username, service.password = username, password
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def mosquitto_tls(tmp_path_factory: pytest.TempPathFactory):
    """A TLS-only broker requiring a password: ``users`` ({"linewatch": pw, "reader": pw}), ``ca_file``."""
    if not (os.access(MOSQUITTO, os.X_OK) and os.access(MOSQUITTO_PASSWD, os.X_OK)):
        pytest.fail(f"mosquitto / mosquitto_passwd not found ({MOSQUITTO}, {MOSQUITTO_PASSWD})")
    users = {"linewatch": f"tls-pw-{os.urandom(12).hex()}", "reader": f"reader-pw-{os.urandom(12).hex()}"}
    service = MosquittoTLSService(tmp_path_factory.mktemp("mosquitto_tls"), users)
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory):
    """A running moto S3 server (``endpoint_url``, ``stop()``, ``start()``), killed at session end."""
    binary = _moto_binary()
    if binary is None:
        pytest.fail('moto_server not found: pip install "moto[server]"')
    service = MotoS3Service(tmp_path_factory.mktemp("moto"), binary)
    service.start(timeout=60.0)
    try:
        yield service
    finally:
        service.stop()
