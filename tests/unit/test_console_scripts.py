"""The installed console scripts: each answers --help and lists its commands; ``python -m`` still works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

SCRIPTS = {
    "linewatch-agent": ["run", "check-config", "replay", "stats", "demo", "publish-bundle"],
    "linewatch-review": ["serve", "hash-password", "check-config", "export", "sync-s3"],
    "linewatch-export": ["--config", "--run", "--out", "--classifier"],
    "linewatch-train": ["describe", "train", "evaluate"],
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_script_lists_its_commands(script):
    out = subprocess.run([BIN / script, "--help"], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.startswith(f"usage: {script}"), out
    missing = [word for word in SCRIPTS[script] if word not in out]
    assert missing == [], out


def test_module_entry_still_works():
    out = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "--help"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "check-config" in out
