"""Model bundles: the .tflite files, float32 side arrays and a manifest with hashes the agent verifies.

Layout of a bundle folder::

    manifest.json          format version, name, version, per-model entries, SHA-256 of every file
    scorer.tflite          anomaly scorer graph (PatchCore backbone or autoencoder)
    memory_bank.npy        PatchCore only: float32 memory bank (score maths stays outside the graph)
    classifier.tflite      optional defect-type classifier (format 1, or format 2 when it has its own graph)
    type_head.npz          optional type head (``kind: type_head``): float32 regression over features pooled from
                           the scorer graph's deeper tap where the distance map is high (edge_agent.type_head)

Format 2 adds ``shares_graph_of`` to a model entry: the classifier's softmax is then an extra output of the
scorer's graph (one int8 pass gives both the feature maps and the defect type), or the type head reads the
graph's feature maps after the scorer's ``params.patch_taps``. Format 1 bundles still load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.errors import BundleError
from edge_agent.preprocess import PreprocessSpec
from edge_agent.scoring import Calibration

FORMAT_VERSION = 2
SUPPORTED_FORMATS = (1, 2)
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelEntry:
    """One model of a bundle as the manifest describes it."""

    role: str
    kind: str
    file: str
    precision: str
    preprocess: PreprocessSpec
    input: dict[str, Any]
    outputs: list[dict[str, Any]]
    params: dict[str, Any]
    calibration: Calibration | None
    class_names: list[str]
    shares_graph_of: str | None = None


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder, manifest and model entries by role (scorer, classifier)."""

    path: Path
    manifest: dict[str, Any]
    models: dict[str, ModelEntry]

    @property
    def name(self) -> str:
        """Bundle name from the manifest."""
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        """Bundle version from the manifest."""
        return str(self.manifest["version"])

    @property
    def digest(self) -> str:
        """Short hash identifying the bundle (SHA-256 of its manifest, 12 hex digits)."""
        return sha256_file(self.path / MANIFEST)[:12]

    def file(self, name: str) -> Path:
        """Path of a file listed in the manifest."""
        return self.path / name


def parse_entry(role: str, raw: dict[str, Any]) -> ModelEntry:
    """Model entry from its manifest dict."""
    calibration = raw.get("calibration")
    return ModelEntry(
        role=role,
        kind=raw["kind"],
        file=raw["file"],
        precision=raw["precision"],
        preprocess=PreprocessSpec.from_dict(raw["preprocess"]),
        input=raw["input"],
        outputs=raw["outputs"],
        params=raw.get("params", {}),
        calibration=Calibration.from_dict(calibration) if calibration else None,
        class_names=list(raw.get("class_names", [])),
        shares_graph_of=raw.get("shares_graph_of"),
    )


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle; raise BundleError on a missing file, wrong hash or format version."""
    path = Path(path)
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise BundleError(f"bundle {path}: no {MANIFEST}") from err
    except (OSError, json.JSONDecodeError) as err:
        raise BundleError(f"bundle {path}: unreadable {MANIFEST}: {err}") from err
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMATS:
        supported = ", ".join(map(str, SUPPORTED_FORMATS))
        msg = f"bundle {path}: format version {version!r} is not supported (this agent reads {supported})"
        raise BundleError(msg)
    for name, expected in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"bundle {path}: file {name} listed in the manifest is missing")
        actual = sha256_file(file)
        if actual != expected:
            msg = f"bundle {path}: SHA-256 of {name} is {actual[:12]}..., manifest says {expected[:12]}..."
            raise BundleError(msg)
    try:
        models = {role: parse_entry(role, raw) for role, raw in manifest["models"].items()}
    except (KeyError, TypeError) as err:
        raise BundleError(f"bundle {path}: malformed model entry ({err})") from err
    if "scorer" not in models:
        raise BundleError(f"bundle {path}: no scorer model")
    for entry in models.values():
        if entry.file not in manifest.get("files", {}):
            raise BundleError(f"bundle {path}: {entry.file} is not covered by a hash")
        owner = models.get(entry.shares_graph_of or "")
        if entry.shares_graph_of is not None and (owner is None or owner.file != entry.file or version < 2):
            msg = f"bundle {path}: {entry.role} shares the graph of {entry.shares_graph_of!r}, which is not in it"
            raise BundleError(msg)
    return Bundle(path, manifest, models)
