"""Model bundles: the .tflite files, float32 side arrays and a manifest with hashes the agent verifies.

Layout of a bundle folder::

    manifest.json          format version, name, version, per-model entries, SHA-256 of every file
    scorer.tflite          anomaly scorer graph (PatchCore backbone or autoencoder)
    memory_bank.npy        PatchCore only: float32 memory bank (score maths stays outside the graph)
    classifier.tflite      optional defect-type classifier (format 1, or format 2 when it has its own graph)
    type_head.npz          optional type head (``kind: type_head``): float32 regression over features pooled from
                           the scorer graph's deeper tap where the distance map is high (edge_agent.type_head)
    type_tail.tflite       optional (``params.type_tail`` of the scorer): the backbone from the scorer graph's last
                           patch tap to the type head's deeper tap, run only for frames whose type is asked for

A model entry with ``shares_graph_of`` uses another entry's graph: a classifier's softmax is then an extra
output of the scorer's graph (one int8 pass gives both the feature maps and the defect type), or the type head
reads the graph's feature maps after the scorer's ``params.patch_taps`` (or, with ``type_tail``, the tail graph's
output for the last patch tap). The manifest is typed
(:mod:`edge_agent.manifest`, format 3); bundles of the untyped formats 1 and 2 are refused with a request to
re-export them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_agent.config_base import format_validation_error
from edge_agent.errors import BundleError
from edge_agent.manifest import FORMAT_VERSION, Manifest, ModelEntry, parse_manifest

__all__ = ["FORMAT_VERSION", "MANIFEST", "Bundle", "ModelEntry", "load_bundle", "parse_entry", "sha256_file"]

SUPPORTED_FORMATS = (FORMAT_VERSION,)
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder, typed manifest and model entries by role (scorer, classifier)."""

    path: Path
    manifest: Manifest

    @property
    def models(self) -> dict[str, ModelEntry]:
        """Model entries by role."""
        return self.manifest.models

    @property
    def name(self) -> str:
        """Bundle name from the manifest."""
        return self.manifest.name

    @property
    def version(self) -> str:
        """Bundle version from the manifest."""
        return self.manifest.version

    @property
    def digest(self) -> str:
        """Short hash identifying the bundle (SHA-256 of its manifest, 12 hex digits)."""
        return sha256_file(self.path / MANIFEST)[:12]

    def file(self, name: str) -> Path:
        """Path of a file listed in the manifest."""
        if name not in self.manifest.files:
            raise BundleError(f"bundle {self.path}: {name} is not listed in the manifest")
        return self.path / name


def parse_entry(role: str, raw: dict[str, Any]) -> ModelEntry:
    """A model entry from its manifest mapping (export uses it on entries it is still writing)."""
    try:
        return ModelEntry.model_validate({**raw, "role": role})
    except ValidationError as err:
        raise BundleError(format_validation_error(err, f"model entry {role}")) from err


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle; raise BundleError on a missing file, wrong hash, format or manifest field."""
    path = Path(path)
    manifest_path = path / MANIFEST
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise BundleError(f"bundle {path}: no {MANIFEST}") from err
    except (OSError, json.JSONDecodeError) as err:
        raise BundleError(f"bundle {path}: unreadable {MANIFEST}: {err}") from err
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version not in SUPPORTED_FORMATS:
        supported = ", ".join(map(str, SUPPORTED_FORMATS))
        msg = f"bundle {path}: format version {version!r} is not supported (this agent reads {supported}; re-export it)"
        raise BundleError(msg)
    for name, expected in raw.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"bundle {path}: file {name} listed in the manifest is missing")
        actual = sha256_file(file)
        if actual != expected:
            msg = f"bundle {path}: SHA-256 of {name} is {actual[:12]}..., manifest says {expected[:12]}..."
            raise BundleError(msg)
    return Bundle(path, parse_manifest(raw, f"bundle {path}"))
