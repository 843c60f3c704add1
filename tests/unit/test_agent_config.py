import pytest

from edge_agent.cli import main
from edge_agent.config import load_agent_config
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
