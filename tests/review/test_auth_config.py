"""Password hashes, log-in, the throttle, the config tree and the review CLI."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys

import pytest

from edge_agent.config_base import parse_config
from edge_agent.errors import ConfigError
from review.auth import (
    MIN_ITERATIONS,
    Authenticator,
    HashFormatError,
    LoginThrottle,
    User,
    hash_password,
    parse_hash,
    verify_password,
)
from review.cli import main as cli_main
from review.config import ReviewConfig, UserConfig, load_review_config
from tests.review.factory import REPO


def test_hash_format_and_verification():
    stored = hash_password("s3cret-pass", iterations=MIN_ITERATIONS, salt=b"0123456789abcdef")
    algorithm, iterations, salt, digest = stored.split("$")
    assert (algorithm, int(iterations), base64.b64decode(salt)) == (
        "pbkdf2_sha256",
        MIN_ITERATIONS,
        b"0123456789abcdef",
    )
    assert len(base64.b64decode(digest)) == 32
    assert verify_password("s3cret-pass", stored) and not verify_password("s3cret-pas", stored)
    assert hash_password("s3cret-pass", MIN_ITERATIONS) != hash_password("s3cret-pass", MIN_ITERATIONS)  # salted
    for bad in ("", "md5$1$x$y", "pbkdf2_sha256$10$c2FsdA==$" + digest, stored.replace(digest, "!!"), stored + "$x"):
        assert not verify_password("s3cret-pass", bad)
        with pytest.raises(HashFormatError):
            parse_hash(bad)
    with pytest.raises(ValueError, match="iterations"):
        hash_password("x", iterations=1000)


def test_authenticator_roles_env_hashes_and_no_secret_in_logs(monkeypatch, caplog):
    monkeypatch.setenv("LW_TEST_HASH", hash_password("viewer-pass", MIN_ITERATIONS))
    users = [
        UserConfig(name="ann", role="reviewer", password_hash=hash_password("ann-pass", MIN_ITERATIONS)),
        UserConfig(name="vic", role="viewer", password_hash_env="LW_TEST_HASH"),
        UserConfig(name="nobody", role="reviewer", password_hash_env="LW_TEST_UNSET"),
    ]
    with caplog.at_level(logging.DEBUG):
        auth = Authenticator(users)
        assert auth.login("ann", "ann-pass") == User("ann", "reviewer")
        assert auth.login("vic", "viewer-pass") == User("vic", "viewer")
        assert not User("vic", "viewer").can_write
        assert auth.login("ann", "viewer-pass") is None
        assert auth.login("nobody", "") is None and auth.login("ghost", "ann-pass") is None
    logged = caplog.text
    assert "LW_TEST_UNSET" in logged  # the variable's name is logged, never a password or a hash
    for secret in ("ann-pass", "viewer-pass", "pbkdf2_sha256$"):
        assert secret not in logged


def test_throttle_locks_a_name_after_repeated_failures():
    throttle = LoginThrottle(max_failures=3, lockout_seconds=60)
    auth = Authenticator(
        [UserConfig(name="ann", role="reviewer", password_hash=hash_password("ann-pass", MIN_ITERATIONS))], throttle
    )
    for _ in range(3):
        assert auth.login("ann", "wrong") is None
    assert auth.login("ann", "ann-pass") is None  # locked, even with the right password
    assert not throttle.locked("ann", now=10**9)  # ... for lockout_seconds only
    throttle.succeeded("ann")
    assert auth.login("ann", "ann-pass") == User("ann", "reviewer")


def test_config_errors_name_key_paths(tmp_path):
    path = tmp_path / "review.yaml"
    path.write_text(
        "users:\n"
        "  - {name: a, role: reviewer}\n"
        "  - {name: b, role: viewer, password_hash_env: X, password_hash: 'pbkdf2_sha256$1$a$b'}\n"
        "  - {name: c, role: boss, password_hash_env: Y}\n"
        "drift: {ks_threshold: 2}\n"
        "source: {type: s3, bucket: b, endpoint_url: minio:9000}\n"
        "colour: red\n"
    )
    with pytest.raises(ConfigError) as err:
        load_review_config(path)
    text = str(err.value)
    for key in ("users.0", "users.1", "users.2.role", "drift.ks_threshold", "source.s3.endpoint_url", "colour"):
        assert f"  {key}" in text, key
    assert "pbkdf2_sha256$1$a$b" not in text
    with pytest.raises(ConfigError, match="unique"):
        parse_config(ReviewConfig, {"users": [{"name": "a", "role": "viewer", "password_hash_env": "X"}] * 2})


def test_database_and_s3_sections_keep_the_agent_safeguards(tmp_path):
    """The page shares the agent's sections: no password in a URL or endpoint, a real host:port."""
    user = "users: [{name: a, role: viewer, password_hash_env: X}]\n"
    cases = {
        "database: {url: 'postgresql://lw:hunter2@db.local/linewatch'}\n": ("database.url", "must not hold a password"),
        "source: {type: s3, bucket: lwb, endpoint_url: 'http://key:secret@minio:9000'}\n": (
            "source.s3.endpoint_url",
            "no credentials",
        ),
        "source: {type: s3, bucket: lwb, endpoint_url: 'http://minio:99999'}\n": ("source.s3.endpoint_url", "port"),
    }
    for i, (section, (key, reason)) in enumerate(cases.items()):
        path = tmp_path / f"review{i}.yaml"
        path.write_text(user + section)
        with pytest.raises(ConfigError) as err:
            load_review_config(path)
        assert f"  {key}" in str(err.value) and reason in str(err.value), str(err.value)
        assert "hunter2" not in str(err.value) and "secret@" not in str(err.value)


def test_s3_client_keeps_boto_wire_logs_quiet(monkeypatch):
    """boto logs request headers (the access key id) at DEBUG: the page's client must not, even under DEBUG."""
    from review.config import S3Source
    from review.s3_source import s3_client

    for name in ("botocore", "boto3", "urllib3"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    monkeypatch.setattr(logging.getLogger(), "level", logging.DEBUG)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")
    assert logging.getLogger("botocore").getEffectiveLevel() == logging.DEBUG
    client = s3_client(S3Source(bucket="lwb", endpoint_url="http://127.0.0.1:9"))
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    for name in ("botocore", "boto3", "urllib3"):
        assert logging.getLogger(name).getEffectiveLevel() >= logging.INFO, name


def test_shipped_configs_validate():
    for name in ("review.default.yaml", "review.example.yaml"):
        cfg = load_review_config(REPO / "configs" / name)
        assert cfg.users
    demo = load_review_config(REPO / "configs" / "review.default.yaml")
    auth = Authenticator(list(demo.users))
    assert auth.login("demo", "linewatch-demo") == User("demo", "reviewer")  # the README's demo log-in
    assert auth.login("guest", "linewatch-view") == User("guest", "viewer")


def test_cli_hash_password_from_stdin_and_check_config(tmp_path, capsys, monkeypatch):
    out = subprocess.run(
        [sys.executable, "-m", "review.cli", "hash-password", "--iterations", str(MIN_ITERATIONS)],
        input="correct horse battery\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    stored = out.stdout.strip()
    assert verify_password("correct horse battery", stored)
    assert "correct horse" not in out.stdout + out.stderr
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("short\n"))
    assert cli_main(["hash-password"]) == 2
    monkeypatch.setenv("LW_CLI_HASH", stored)
    path = tmp_path / "r.yaml"
    path.write_text(
        "users:\n"
        "  - {name: a, role: viewer, password_hash_env: LW_CLI_HASH}\n"
        "  - {name: b, role: viewer, password_hash_env: LW_NOPE}\n"
    )
    capsys.readouterr()
    assert cli_main(["check-config", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "user a (viewer): hash from env LW_CLI_HASH: ok" in printed and "LW_NOPE: MISSING" in printed
    assert stored not in printed
    path.write_text("users: []\n")
    assert cli_main(["check-config", "--config", str(path)]) == 2
