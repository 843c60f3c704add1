"""Rolling out a new model bundle while the agent runs: verify, load and warm it beside the old one, swap.

A camera's ``bundle`` path is watched. Point it at a ``current`` link and replace the link atomically (``ln -sfn
v2 current.new && mv -T current.new current``) or re-export into the folder: when the resolved folder or its
manifest changes, the new bundle is read and hash-checked, one inspector per scoring thread is built and warmed
with a blank frame, and the camera's pipelines switch to it between two frames (a frame in hand finishes with
the model it started with). A bundle that fails to load or verify is refused with one log line and the old one
keeps scoring; it is tried again when it changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.bundle import MANIFEST, load_bundle, sha256_file
from edge_agent.config import CameraConfig
from edge_agent.errors import BundleError
from edge_agent.inspector import Inspector
from edge_agent.pipeline import ActiveModel, CameraPipeline

log = logging.getLogger(__name__)

#: (resolved folder, SHA-256 of its manifest); None when there is no readable manifest.
BundleKey = tuple[str, str | None]


def bundle_key(path: Path) -> BundleKey:
    """What identifies the bundle behind ``path`` right now (a cheap check: one hash of a small file)."""
    folder = os.path.realpath(path)
    try:
        return folder, sha256_file(Path(folder) / MANIFEST)
    except OSError:
        return folder, None


@dataclass
class Rollout:
    """One camera's watched bundle path and the key of what it runs (or last refused)."""

    camera: CameraConfig
    pipelines: list[CameraPipeline]
    running: BundleKey
    refused: BundleKey | None = None


class BundleWatcher:
    """Checks every camera's bundle path (``check()``, on the housekeeper) and swaps in verified new bundles."""

    def __init__(
        self,
        cameras: list[tuple[CameraConfig, list[CameraPipeline]]],
        threads: int,
        on_swap: Callable[[CameraConfig, ActiveModel, ActiveModel], None],
    ) -> None:
        self.rollouts = [Rollout(cfg, pipelines, bundle_key(cfg.bundle)) for cfg, pipelines in cameras]
        self.threads = threads
        self.on_swap = on_swap

    def check(self) -> int:
        """Look at every camera's bundle path once; return how many cameras switched."""
        return sum(self._check(rollout) for rollout in self.rollouts)

    def _check(self, rollout: Rollout) -> bool:
        key = bundle_key(rollout.camera.bundle)
        if key == rollout.running or key == rollout.refused:
            return False
        camera = rollout.camera.id
        try:
            bundle = load_bundle(key[0])
            inspectors = [Inspector(bundle, threads=self.threads) for _ in rollout.pipelines]
            for inspector in inspectors:
                warm(inspector)
        except (BundleError, OSError, ValueError, RuntimeError) as err:
            rollout.refused = key
            log.error("camera=%s new bundle at %s refused, the running one goes on: %s", camera, key[0], err)
            return False
        old = rollout.pipelines[0].active
        for pipeline, inspector in zip(rollout.pipelines, inspectors, strict=True):
            pipeline.active = ActiveModel.of(inspector, rollout.camera)  # the next frame uses it
        rollout.running, rollout.refused = key, None
        new = rollout.pipelines[0].active
        log.info(
            "camera=%s model %s %s (%s) -> %s %s (%s) from %s",
            camera,
            old.name,
            old.version,
            old.digest,
            new.name,
            new.version,
            new.digest,
            key[0],
        )
        self.on_swap(rollout.camera, old, new)
        return True


def point_link(link: Path, target: str) -> None:
    """Point the symlink ``link`` at ``target`` (a name beside it) atomically: a staged link renamed over it."""
    staged = link.with_name(f".{link.name}.new")
    staged.unlink(missing_ok=True)
    staged.symlink_to(target)
    os.replace(staged, link)


def warm(inspector: Inspector) -> None:
    """One inference on a blank frame: the interpreter allocates and XNNPACK packs its weights before the swap."""
    size = inspector.entry.preprocess.size
    inspector.inspect(np.zeros((size, size, 3), np.uint8), classify_all=True)
