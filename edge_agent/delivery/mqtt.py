"""MQTT publisher (paho-mqtt v2): alerts, retained availability and camera status, stats.

Topics under ``<prefix>/<agent>``: ``availability`` (retained ``online``/``stopped``, last will ``offline``),
``cameras/<camera>/status`` (retained), ``cameras/<camera>/model`` (retained JSON: the bundle the camera runs),
``cameras/<camera>/alerts`` (events, never retained), ``stats``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import MQTTConfig, TLSConfig
from edge_agent.delivery import DELIVERED, Delivery, dead, retry
from edge_agent.errors import ConfigError
from edge_agent.secrets import read_secret, redact
from edge_agent.store import OutboxItem

log = logging.getLogger(__name__)


class MQTTPublisher:
    """One paho client on its own network thread; reconnects by itself, never blocks the caller for long.

    Connecting starts in the constructor (``autostart``) and works in the background while the broker is down.
    """

    name = "mqtt"

    def __init__(
        self,
        cfg: MQTTConfig,
        agent_name: str,
        publish_timeout: float = 5.0,
        reconnect_min_delay: float = 1.0,
        reconnect_max_delay: float = 30.0,
        autostart: bool = True,
    ) -> None:
        self.cfg = cfg
        self.base = f"{cfg.prefix}/{agent_name}"
        self.availability_topic = f"{self.base}/availability"
        self.publish_timeout = publish_timeout
        self._connected = threading.Event()
        self._failed_attempts = 0
        self._fail_logged_at = float("-inf")
        self._lock = threading.Lock()
        self._retained: dict[str, str] = {}  # topic -> payload, re-published after every reconnect
        self._started = False
        self._username = read_secret(cfg.username_env, None)
        self._password = read_secret(cfg.password_env, cfg.password_credential)
        self.client_id = cfg.client_id or f"linewatch-{agent_name}"
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        self._client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        if self._username or self._password:
            self._client.username_pw_set(self._username, self._password)
        if cfg.tls.enabled:
            self._set_tls(cfg.tls)
        self._client.will_set(self.availability_topic, "offline", qos=1, retain=True)
        self._client.reconnect_delay_set(reconnect_min_delay, reconnect_max_delay)  # type: ignore[arg-type]
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        if autostart:
            self.start()

    def _set_tls(self, tls: TLSConfig) -> None:
        """Load the CA, certificate and key; a missing or invalid file is a ConfigError naming its key."""
        files = {"ca_file": tls.ca_file, "cert_file": tls.cert_file, "key_file": tls.key_file}
        for key, path in files.items():
            if path is not None and not os.access(path, os.R_OK):
                raise ConfigError(f"mqtt.tls.{key}: cannot read {path}")
        try:
            ca, cert, keyfile = (str(p) if p else None for p in files.values())
            self._client.tls_set(ca_certs=ca, certfile=cert, keyfile=keyfile)
        except (OSError, ValueError) as err:  # ssl.SSLError is an OSError: a file that is no PEM, a key mismatch
            raise ConfigError(f"mqtt.tls: cannot load the CA, certificate or key: {err}") from err
        self._client.tls_insecure_set(tls.insecure)

    @property
    def connected(self) -> bool:
        """True only between a successful CONNACK and the next disconnect."""
        return self._connected.is_set()

    def alert_topic(self, camera: str) -> str:
        """Topic of a camera's alert events."""
        return f"{self.base}/cameras/{camera}/alerts"

    def status_topic(self, camera: str) -> str:
        """Retained topic of a camera's state."""
        return f"{self.base}/cameras/{camera}/status"

    @property
    def stats_topic(self) -> str:
        """Topic of periodic stats (not retained)."""
        return f"{self.base}/stats"

    def start(self) -> None:
        """Connect in the background (``connect_async`` + ``loop_start``); the broker may be down."""
        if self._started:
            return
        log.info("MQTT connecting to %s:%s as %s", self.cfg.host, self.cfg.port, self.client_id)
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self._client.loop_start()
        self._started = True

    def wait_connected(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a successful connection."""
        return self._connected.wait(timeout)

    def model_topic(self, camera: str) -> str:
        """Retained topic of the model bundle a camera runs."""
        return f"{self.base}/cameras/{camera}/model"

    def set_camera_status(self, camera: str, state: str) -> None:
        """Retained camera state; remembered and re-published after every reconnect."""
        self.set_retained(self.status_topic(camera), state)

    def set_camera_model(self, camera: str, model: dict[str, Any]) -> None:
        """Retained JSON of the bundle a camera runs (name, version, hash, since); re-published on reconnect."""
        self.set_retained(self.model_topic(camera), json.dumps(model, default=str))

    def set_retained(self, topic: str, payload: str) -> None:
        """Publish a retained state now when connected, and again after every reconnect."""
        with self._lock:
            self._retained[topic] = payload
        if self.connected:
            self._client.publish(topic, payload, qos=1, retain=True)

    def deliver(self, item: OutboxItem) -> Delivery:
        """Publish one outbox row (an alert); see :meth:`publish_alert`."""
        if item.topic is None or item.payload is None:
            log.error("mqtt row %d has no topic or payload", item.id)
            return dead("no topic or payload")
        return self.publish_alert(item.topic, item.payload)

    def publish_alert(self, topic: str, payload: str, qos: int | None = None) -> Delivery:
        """Publish one alert; delivered only when the broker acknowledged it (PUBACK/PUBCOMP) within the timeout.

        Returns at once when disconnected: nothing is queued inside paho, the outbox retries.
        """
        qos = self.cfg.qos if qos is None else qos
        if not self.connected:
            return retry("not connected")
        info = self._client.publish(topic, payload, qos=qos, retain=False)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return self._fail(topic, f"publish refused: {mqtt.error_string(info.rc)}")
        deadline = time.monotonic() + self.publish_timeout
        try:
            while qos > 0 and not info.is_published():
                if not self.connected:
                    return retry("connection lost before the broker acknowledged")
                if time.monotonic() >= deadline:
                    return self._fail(topic, f"no acknowledgement within {self.publish_timeout:.1f} s")
                info.wait_for_publish(0.05)
        except (RuntimeError, ValueError) as err:
            return self._fail(topic, self._redact(str(err)))
        return DELIVERED

    def _fail(self, topic: str, reason: str) -> Delivery:
        log.warning("MQTT publish to %s failed: %s", topic, reason)
        return retry(reason)

    def publish_stats(self, payload: dict[str, Any]) -> bool:
        """Publish a stats snapshot (QoS 0, not retained); False when disconnected."""
        if not self.connected:
            return False
        info = self._client.publish(self.stats_topic, json.dumps(payload, default=str), qos=0, retain=False)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def close(self, timeout: float = 2.0) -> None:
        """Publish retained ``stopped``, disconnect cleanly (no last will) and stop the network thread."""
        if not self._started:
            return
        if self.connected:
            info = self._client.publish(self.availability_topic, "stopped", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as err:
                log.warning("MQTT 'stopped' not published: %s", err)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._started = False

    def _redact(self, text: str) -> str:
        return redact(text, [self._username, self._password])

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any) -> None:
        if reason_code.is_failure:
            self._connected.clear()
            log.error("MQTT connection refused by %s:%s: %s", self.cfg.host, self.cfg.port, reason_code)
            return
        log.info("MQTT connected to %s:%s", self.cfg.host, self.cfg.port)
        client.publish(self.availability_topic, "online", qos=1, retain=True)
        with self._lock:
            retained = dict(self._retained)
        for topic, payload in retained.items():
            client.publish(topic, payload, qos=1, retain=True)
        self._connected.set()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected:
            level = logging.WARNING if reason_code.is_failure else logging.INFO
            log.log(level, "MQTT disconnected from %s:%s: %s", self.cfg.host, self.cfg.port, reason_code)

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._connected.clear()
        self._failed_attempts += 1
        now = time.monotonic()
        if now - self._fail_logged_at >= 60.0:  # the first failure, then once a minute while it lasts
            log.warning(
                "MQTT cannot connect to %s:%s (broker down or unreachable, or TLS refused); %d attempt(s) so far, "
                "retrying with back-off; alerts wait in the outbox",
                self.cfg.host,
                self.cfg.port,
                self._failed_attempts,
            )
            self._fail_logged_at = now
