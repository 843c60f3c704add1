"""Every docstring example in the packages runs and holds."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("edge_agent", "model_export", "training", "review")
WITH_EXAMPLES = sorted(
    ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for package in PACKAGES
    for path in (REPO / package).rglob("*.py")
    if ">>> " in path.read_text(encoding="utf-8")
)


def test_examples_were_found():
    assert "edge_agent.preprocess" in WITH_EXAMPLES


@pytest.mark.parametrize("module_name", WITH_EXAMPLES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module_name}"
