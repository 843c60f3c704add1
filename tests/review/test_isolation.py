"""The review page runs on the edge runtime: it never imports TensorFlow, Keras, training or model_export."""

import subprocess
import sys

from tests.review.factory import REPO

PROBE = """
import importlib, pkgutil, sys
import review
for mod in pkgutil.walk_packages(review.__path__, "review."):
    importlib.import_module(mod.name)
forbidden = {"tensorflow", "keras", "training", "model_export", "tf_keras"}
bad = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
print("IMPORTED:", len([m for m in sys.modules if m.startswith("review")]))
print("FORBIDDEN:", bad)
"""


def test_review_imports_no_tensorflow_or_training():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True)
    assert "FORBIDDEN: []" in out.stdout, out.stdout + out.stderr
    assert int(out.stdout.split("IMPORTED:")[1].split()[0]) >= 12
