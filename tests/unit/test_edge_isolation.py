"""The edge agent must run with the interpreter, numpy and OpenCV only: never TensorFlow or training."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, pkgutil, sys
import edge_agent
for mod in pkgutil.walk_packages(edge_agent.__path__, "edge_agent."):
    importlib.import_module(mod.name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in {"tensorflow", "keras", "training", "tf_keras"})
print("IMPORTED:", len([m for m in sys.modules if m.startswith("edge_agent")]))
print("FORBIDDEN:", bad)
"""


def test_edge_agent_imports_no_tensorflow_or_training():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True)
    assert "FORBIDDEN: []" in out.stdout, out.stdout
    assert int(out.stdout.split("IMPORTED:")[1].split()[0]) >= 5


def test_edge_sources_have_no_forbidden_import_lines():
    for path in (REPO / "edge_agent").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                root = stripped.split()[1].split(".")[0]
                assert root not in {"tensorflow", "keras", "training"}, f"{path}: {stripped}"
