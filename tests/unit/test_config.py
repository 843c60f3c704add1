import pytest

from edge_agent.errors import ConfigError
from training.config import TrainConfig, load_train_config

BASE = "dataset: {name: bottle, layout: mvtec, root: mvtec_ad/bottle}\n"


def test_shipped_configs_validate(datasets_root):
    for name in ("bottle", "tire", "casting"):
        cfg = load_train_config(f"configs/datasets/{name}.yaml")
        assert cfg.dataset.name == name
        assert cfg.dataset.resolved_root().is_dir()


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (BASE + "autoencoder: {size: 128, colour: rgb}\n", "autoencoder.colour"),
        (BASE + "patchcore: {coreset_ratio: 2.0}\n", "patchcore.coreset_ratio"),
        (BASE + "patchcore: {bank_rotations: [90, 45]}\n", "patchcore.bank_rotations.1"),
        (BASE + "patchcore: {score_top_fraction: 0.9}\n", "patchcore.score_top_fraction"),
        (BASE + "autoencoder: {augment: {hflip: maybe}}\n", "autoencoder.augment.hflip"),
        ("dataset: {name: x, layout: zip, root: y}\n", "dataset.layout"),
        ("threshold: {k: 3}\n", "dataset"),
        (BASE + "typo_section: 1\n", "typo_section"),
    ],
)
def test_bad_config_names_the_key_path(tmp_path, text, path):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_train_config(cfg_file)
    assert f"  {path}:" in str(err.value)
    assert str(cfg_file) in str(err.value)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_train_config(tmp_path / "missing.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_train_config(bad)


def test_config_is_frozen():
    cfg = TrainConfig.model_validate({"dataset": {"name": "b", "layout": "mvtec", "root": "r"}})
    with pytest.raises(Exception, match="frozen"):
        cfg.output_dir = "elsewhere"


def test_cli_reports_bad_config_and_exits_nonzero(tmp_path, capsys):
    from training.cli import main

    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text(BASE + "patchcore: {size: -5}\n")
    assert main(["describe", "--config", str(cfg_file)]) == 2
    assert "patchcore.size" in capsys.readouterr().err
