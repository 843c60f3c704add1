import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_agent.cli import main
from edge_agent.config import AgentConfig, load_agent_config
from edge_agent.config_base import parse_config
from edge_agent.errors import ConfigError


def test_shipped_agent_configs_validate():
    example = load_agent_config("configs/agent.example.yaml")
    assert [c.source.type for c in example.cameras] == ["folder", "stream"]
    assert example.mqtt.password_credential == "mqtt-password"
    default = load_agent_config("configs/agent.default.yaml")
    assert default.database.url.startswith("sqlite:///") and not default.mqtt.enabled and not default.s3.enabled


@pytest.mark.parametrize(
    ("yaml_text", "path"),
    [
        ("cameras: [{id: a, bundle: b, source: {type: folder, path: x, aftr: move}}]", "cameras.0.source.folder.aftr"),
        (
            "cameras: [{id: a, bundle: b, source: {type: stream, url: u, every_nth: 0}}]",
            "cameras.0.source.stream.every_nth",
        ),
        ("cameras: [{id: 'bad id', bundle: b, source: {type: folder, path: x}}]", "cameras.0.id"),
        ("cameras: []", "cameras"),
        ("cameras: [{id: a, bundle: b, source: {type: folder, path: x}}]\nmqtt: {port: 99999}", "mqtt.port"),
        (
            "cameras: [{id: a, bundle: b, source: {type: folder, path: x}}]\ns3: {endpoint_url: 'ftp://x'}",
            "s3.endpoint_url",
        ),
        ("cameras: [{id: a, bundle: b, source: {type: folder, path: x}}]\nmqtt: {password: hunter2}", "mqtt.password"),
    ],
)
def test_check_config_names_the_key_path_and_exits_nonzero(tmp_path, capsys, yaml_text, path):
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml_text)
    assert main(["check-config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"  {path}:" in err
    assert "hunter2" not in err


def test_duplicate_camera_ids_are_refused(tmp_path):
    cfg = tmp_path / "agent.yaml"
    cam = "{id: a, bundle: b, source: {type: folder, path: x}}"
    cfg.write_text(f"cameras: [{cam}, {cam}]")
    with pytest.raises(ConfigError, match="camera ids must be unique"):
        load_agent_config(cfg)


def test_check_config_refuses_a_missing_bundle(tmp_path, capsys):
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"cameras: [{{id: a, bundle: {tmp_path / 'nope'}, source: {{type: folder, path: x}}}}]")
    assert main(["check-config", "--config", str(cfg)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


# --- generated mutations of the documented example ------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "configs" / "agent.example.yaml"
SECRET = "S3CR3T-do-not-echo"


def _leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, (*path, i))
    else:
        yield path


def _get(data, path):
    for part in path:
        data = data[part]
    return data


def _loc(data, path) -> str:
    """The key path pydantic reports: a camera source's fields sit under its ``type`` tag."""
    parts: list[str] = []
    for i, part in enumerate(path):
        parts.append(str(part))
        if part == "source" and i + 1 < len(path) and path[i + 1] != "type":
            parts.append(_get(data, path[: i + 1])["type"])
    return ".".join(parts)


def _mutations():
    """(name, mutated data, key path the error must name, whether it may still be valid) for every leaf."""
    base = yaml.safe_load(EXAMPLE.read_text())
    for path in _leaves(base):
        parent, key = path[:-1], path[-1]
        where = _loc(base, path) if key != "type" else _loc(base, parent)
        dotted = ".".join(map(str, path))
        for kind, value in (("dict", {"nested": SECRET}), ("list", [SECRET])):
            data = copy.deepcopy(base)
            _get(data, parent)[key] = value
            yield f"{dotted}={kind}", data, where, False
        data = copy.deepcopy(base)
        _get(data, parent)[f"{key}_typo"] = SECRET
        yield f"{dotted}_typo", data, _loc(base, (*parent, f"{key}_typo")), False
        data = copy.deepcopy(base)
        del _get(data, parent)[key]
        yield f"-{dotted}", data, where, True  # valid when the key has a default


def test_every_mutation_of_the_example_names_its_key_path():
    tried = refused = 0
    for name, data, where, may_pass in _mutations():
        tried += 1
        try:
            parse_config(AgentConfig, data, "example.yaml")
        except ConfigError as err:
            refused += 1
            text = str(err)
            problems = [line.strip() for line in text.splitlines()[1:]]
            assert text.startswith("invalid config example.yaml:"), name
            assert SECRET not in text or ".type=" in name, f"{name}: the value is echoed"  # a bad tag is shown
            assert len(problems) == 1 and re.match(rf"{re.escape(where)}[.:]", problems[0]), f"{name}: {problems}"
            if may_pass:  # a deleted key without a default
                assert "Field required" in problems[0] or "discriminator" in problems[0], f"{name}: {problems}"
        else:
            assert may_pass, f"{name} was accepted"
    print(f"config mutations: {tried} tried, {refused} refused")
    assert tried > 150 and refused > 120


# --- URLs and host names ------------------------------------------------------------------------------------------

CAMERA = {"id": "a", "bundle": "b", "source": {"type": "folder", "path": "x"}}


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("database", "url", "not a url"),
        ("database", "url", ""),
        ("database", "url", "sqlite:/relative.db"),
        ("database", "url", "sqllite:///typo.db"),
        ("database", "url", "postgresql+psycopg://lw@db:99999/lw"),
        ("database", "url", f"postgresql+psycopg://lw:{SECRET}@db/lw"),
        ("mqtt", "host", "mqtt://broker.plant.local"),
        ("mqtt", "host", "broker.plant.local:8883"),
        ("mqtt", "host", ""),
        ("mqtt", "host", "bro ker"),
        ("mqtt", "host", "-broker"),
        ("mqtt", "host", "a" * 64 + ".local"),
        ("mqtt", "port", 0),
        ("mqtt", "port", "mqtt"),
        ("mqtt", "port", 65536),
        ("metrics", "host", "http://0.0.0.0"),
        ("s3", "endpoint_url", "http://"),
        ("s3", "endpoint_url", "https://minio plant:9000"),
        ("s3", "endpoint_url", "http://minio:99999"),
        ("s3", "endpoint_url", "http://minio:port"),
        ("s3", "endpoint_url", "minio.plant.local:9000"),
        ("s3", "endpoint_url", f"https://key:{SECRET}@minio:9000"),
        ("s3", "endpoint_url", "https://minio:9000/?x=1"),
    ],
)
def test_invalid_urls_and_hosts_are_refused_with_their_key_path(section, key, value):
    with pytest.raises(ConfigError) as err:
        parse_config(AgentConfig, {"cameras": [CAMERA], section: {key: value}}, "agent.yaml")
    problems = str(err.value).splitlines()[1:]
    assert len(problems) == 1 and problems[0].startswith(f"  {section}.{key}: "), problems
    assert SECRET not in str(err.value)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("database", "url", "sqlite://"),
        ("database", "url", "sqlite:////var/lib/linewatch/linewatch.db"),
        ("database", "url", "postgresql+psycopg://linewatch@db.plant.local:5432/linewatch"),
        ("mqtt", "host", "broker.plant.local"),
        ("mqtt", "host", "mqtt_broker"),
        ("mqtt", "host", "10.0.0.7"),
        ("mqtt", "host", "::1"),
        ("metrics", "host", "0.0.0.0"),
        ("s3", "endpoint_url", "https://minio.plant.local:9000"),
        ("s3", "endpoint_url", "http://127.0.0.1:9000"),
        ("s3", "endpoint_url", "http://[::1]:9000"),
    ],
)
def test_valid_urls_and_hosts_still_load(section, key, value):
    cfg = parse_config(AgentConfig, {"cameras": [CAMERA], section: {key: value}})
    assert getattr(getattr(cfg, section), key) == value


# --- the CLI as systemd runs it: one message naming the key path, exit 2, nothing started -----------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m edge_agent.cli ...`` run from ``cwd`` (relative paths in the config land there)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "edge_agent.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"mqtt": {"enabled": True, "hostname": "broker"}}, "mqtt.hostname: Extra inputs are not permitted"),
        ({"agent": {"threads": "two"}}, "agent.threads: Input should be a valid integer"),
        ({"database": {"url": "sqlite:/data/agent.db"}}, "database.url: "),
        ({"mqtt": {"enabled": True, "host": "mqtt://broker:1883"}}, "mqtt.host: "),
        ({"s3": {"enabled": True, "endpoint_url": "http://minio:99999"}}, "s3.endpoint_url: "),
    ],
    ids=["unknown-key", "wrong-type", "database-url", "mqtt-host", "s3-endpoint"],
)
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_cli_refuses_bad_configs_before_starting_anything(tmp_path, command, change, expected):
    data = {
        "agent": {"name": "t", "data_dir": str(tmp_path / "data")},
        "database": {"url": f"sqlite:///{tmp_path / 'agent.db'}"},
        "cameras": [{"id": "a", "bundle": str(tmp_path / "bundle"), "source": {"type": "folder", "path": "incoming"}}],
        "metrics": {"enabled": False},
    }
    for section, values in change.items():
        data[section] = {**data.get(section, {}), **values}
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump(data))
    result = _cli(command, "--config", str(cfg), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"  {expected}" in result.stderr and result.stderr.startswith("error: invalid config")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.yaml"]  # no database, data or incoming folder


def test_cli_missing_config_file(tmp_path):
    result = _cli("run", "--config", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: cannot read config {tmp_path / 'nope.yaml'}: No such file or directory"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["ca_file", "cert_file"])
def test_run_with_a_missing_tls_file_names_its_key(tmp_path, key):
    tls = {"enabled": True, key: str(tmp_path / "missing.pem")}
    if key == "cert_file":
        tls["key_file"] = str(tmp_path / "missing.key")
    data = {
        "agent": {"name": "t", "data_dir": str(tmp_path / "data")},
        "database": {"url": f"sqlite:///{tmp_path / 'agent.db'}"},
        "cameras": [{"id": "a", "bundle": str(tmp_path / "bundle"), "source": {"type": "folder", "path": "in"}}],
        "mqtt": {"enabled": True, "port": 8883, "tls": tls},
        "metrics": {"enabled": False},
    }
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump(data))
    result = _cli("run", "--config", str(cfg), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"error: mqtt.tls.{key}: cannot read {tmp_path / 'missing.pem'}" in result.stderr
    assert not (tmp_path / "agent.db").exists(), "nothing may be created before the config is accepted"


def test_run_with_a_missing_bundle_creates_nothing(tmp_path):
    data = {
        "agent": {"name": "t", "data_dir": str(tmp_path / "data")},
        "database": {"url": f"sqlite:///{tmp_path / 'agent.db'}"},
        "cameras": [{"id": "a", "bundle": str(tmp_path / "bundle"), "source": {"type": "folder", "path": "in"}}],
        "metrics": {"enabled": False},
    }
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump(data))
    result = _cli("run", "--config", str(cfg), cwd=tmp_path)
    assert result.returncode == 2 and "no manifest.json" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "agent.db").exists() and not (tmp_path / "data").exists()
