"""MQTTPublisher against a real TLS-only mosquitto with a password file and no anonymous access.

Credentials come the way production gets them: the user name from an environment variable, the password from
an environment variable or a systemd credential file (``$CREDENTIALS_DIRECTORY/<name>``).
"""

from __future__ import annotations

import logging
import socket
import ssl

import pytest

from edge_agent.config import MQTTConfig, TLSConfig
from edge_agent.delivery.mqtt import MQTTPublisher
from tests.harness import Subscriber, wait_until
from tests.services import mosquitto_tls  # noqa: F401

PREFIX = "lwsec"


def tls_cfg(broker, ca_file=None, **kw) -> MQTTConfig:
    tls = TLSConfig(enabled=True, ca_file=ca_file or broker.ca_file)
    return MQTTConfig(enabled=True, host=broker.host, port=broker.port, prefix=PREFIX, tls=tls, **kw)


@pytest.fixture
def agent_env(monkeypatch, tmp_path):
    """User name in LW_SEC_USER; the password both in LW_SEC_PASSWORD and as credential file ``mqtt-password``."""

    def set_password(broker, password: str) -> None:
        monkeypatch.setenv("LW_SEC_USER", "linewatch")
        monkeypatch.setenv("LW_SEC_PASSWORD", password)
        creds = tmp_path / "credentials"
        creds.mkdir(exist_ok=True)
        (creds / "mqtt-password").write_text(password + "\n")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))

    return set_password


@pytest.mark.parametrize("password_from", ["env", "credential"])
def test_tls_and_password_deliver_an_alert(mosquitto_tls, agent_env, monkeypatch, password_from, caplog):
    caplog.set_level(logging.DEBUG, logger="edge_agent")
    password = mosquitto_tls.users["linewatch"]
    agent_env(mosquitto_tls, password)
    if password_from == "env":
        monkeypatch.delenv("CREDENTIALS_DIRECTORY")
        cfg = tls_cfg(mosquitto_tls, username_env="LW_SEC_USER", password_env="LW_SEC_PASSWORD")
    else:
        monkeypatch.setenv("LW_SEC_PASSWORD", "")  # only the credential file holds it
        cfg = tls_cfg(mosquitto_tls, username_env="LW_SEC_USER", password_credential="mqtt-password")
    reader = Subscriber(
        mosquitto_tls.host,
        mosquitto_tls.port,
        f"{PREFIX}/+/cameras/+/alerts",
        ca_file=mosquitto_tls.ca_file,
        username="reader",
        password=mosquitto_tls.users["reader"],
    )
    pub = MQTTPublisher(cfg, f"tls-{password_from}")
    try:
        assert pub.wait_connected(10), f"no TLS connection: {mosquitto_tls.log_text()[-1500:]}"
        payload = f'{{"message_id": "tls-{password_from}", "anomalous": true}}'
        assert pub.publish_alert(pub.alert_topic("cam1"), payload)
        wait_until(lambda: payload in reader.payloads(pub.alert_topic("cam1")), 10, "the alert over TLS")
    finally:
        pub.close()
        reader.close()
    assert password not in caplog.text
    source = "environment variable LW_SEC_PASSWORD" if password_from == "env" else "credential mqtt-password"
    assert f"secret read from {source}" in caplog.text  # only the name is logged


def test_anonymous_client_is_refused(mosquitto_tls, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="edge_agent")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    pub = MQTTPublisher(tls_cfg(mosquitto_tls), "anonymous")
    try:
        wait_until(lambda: "refused" in caplog.text, 10, "the broker to refuse an anonymous client")
        assert not pub.connected
        assert not pub.publish_alert(pub.alert_topic("cam1"), "{}")
    finally:
        pub.close()
    assert "Not authorized" in caplog.text


def test_wrong_password_is_refused_and_never_logged(mosquitto_tls, agent_env, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, paho's included
    wrong = f"wrong-{mosquitto_tls.users['linewatch'][::-1]}"
    agent_env(mosquitto_tls, wrong)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    pub = MQTTPublisher(tls_cfg(mosquitto_tls, username_env="LW_SEC_USER", password_env="LW_SEC_PASSWORD"), "bad-pw")
    try:
        wait_until(lambda: "refused" in caplog.text, 10, "the broker to refuse the wrong password")
        assert not pub.connected
        outcome = pub.publish_alert(pub.alert_topic("cam1"), "{}")
        assert not outcome
        reason = outcome.reason
    finally:
        pub.close()
    broker_log = mosquitto_tls.log_text()
    assert "not authorised" in broker_log.lower() or "bad user name or password" in caplog.text.lower()
    for secret in (wrong, mosquitto_tls.users["linewatch"]):
        assert secret not in caplog.text
        assert secret not in (reason or "")
        assert secret not in broker_log


def test_wrong_ca_fails_certificate_verification(mosquitto_tls, agent_env, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="edge_agent")
    agent_env(mosquitto_tls, mosquitto_tls.users["linewatch"])
    cfg = tls_cfg(mosquitto_tls, ca_file=mosquitto_tls.wrong_ca_file, username_env="LW_SEC_USER")
    cfg = cfg.model_copy(update={"password_credential": "mqtt-password"})
    pub = MQTTPublisher(cfg, "wrong-ca")
    try:
        assert not pub.wait_connected(3.0), "connected although the CA does not match"
        assert not pub.publish_alert(pub.alert_topic("cam1"), "{}")
    finally:
        pub.close()
    # the same CA file, in a plain TLS handshake: it is the certificate check that fails
    context = ssl.create_default_context(cafile=str(mosquitto_tls.wrong_ca_file))
    with (
        pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"),
        socket.create_connection((mosquitto_tls.host, mosquitto_tls.port), timeout=5) as sock,
    ):
        context.wrap_socket(sock, server_hostname=mosquitto_tls.host)
    context = ssl.create_default_context(cafile=str(mosquitto_tls.ca_file))
    with (
        socket.create_connection((mosquitto_tls.host, mosquitto_tls.port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname=mosquitto_tls.host) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")  # the right CA verifies the same listener
    assert mosquitto_tls.users["linewatch"] not in caplog.text


def test_plain_mqtt_to_the_tls_listener_never_connects(mosquitto_tls, agent_env, monkeypatch):
    agent_env(mosquitto_tls, mosquitto_tls.users["linewatch"])
    cfg = MQTTConfig(
        enabled=True,
        host=mosquitto_tls.host,
        port=mosquitto_tls.port,
        prefix=PREFIX,
        username_env="LW_SEC_USER",
        password_credential="mqtt-password",
    )
    pub = MQTTPublisher(cfg, "plain")
    try:
        assert not pub.wait_connected(2.0), "a cleartext client got through to the TLS listener"
    finally:
        pub.close()
