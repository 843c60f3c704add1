"""The next bundle version from reviewed frames, without retraining: ``linewatch-train update``.

Frames a reviewer marked *false alarm* are normal data. Their patch features (from the bundle's own int8 graph)
join the PatchCore memory bank by continuing the greedy k-center selection that built it: the new patch
farthest from the bank is added until every new patch lies within the bank's coverage radius (the largest
distance of a training patch to the bank), so the bank covers the new normal appearance as tightly as it covers
the training images, and no more. The threshold is fitted again the way export fits it (false-alarm rate over
validation scores pooled with leave-one-out scores of the training images). The new bundle is checked on the
original test split against the old one (image AUROC may not drop by more than the gate) and on the feedback
frames themselves; the report says what changed and goes into the manifest (``metrics.update``).

Frames a reviewer confirmed as defects with a type re-fit the bundle's type head when there are enough of them
(:mod:`training.update_types`); a bundle with another kind of defect-type model keeps it and the report counts
the frames.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.bundle import MANIFEST, Bundle, load_bundle, sha256_file
from edge_agent.errors import LinewatchError
from edge_agent.inspector import backbone_patches
from edge_agent.manifest import PatchCoreParams, TypeHeadParams, parse_manifest
from edge_agent.nn_index import make_index
from edge_agent.preprocess import PreprocessSpec, prepare, read_image
from edge_agent.runtime import TFLiteModel
from edge_agent.scoring import NearestNeighbourIndex, distance_map, fit_calibration, image_score
from edge_agent.type_head import TypeHead, type_features
from training import metrics
from training.config import TrainConfig
from training.data import Sample, load_dataset, load_images
from training.models.patchcore import MemoryBank, find_stand_ins, leave_one_out_scores, nearest_of_other_image
from training.update_types import TypeRefit, refit_type_head

log = logging.getLogger(__name__)

NORMAL_DIR = "good"  # review.export's folder of false alarms
#: A bank row this close to a patch is that patch: coreset rows are copies of training patches, up to the float32
#: rounding of the whitening product when the bank is whitened.
EXACT = 1e-4


class UpdateError(LinewatchError):
    """The update cannot be built or fails its gate."""


@dataclass
class Feedback:
    """Reviewed frames from a review export folder: false alarms and confirmed defects (by type)."""

    false_alarms: list[Path]
    defects: dict[str, list[Path]]

    @classmethod
    def read(cls, folder: Path) -> Feedback:
        """``good/`` holds the false alarms, every other folder one confirmed defect type (``labels.csv`` beside)."""
        if not (folder / "labels.csv").is_file():
            raise UpdateError(f"{folder}: not a review export (no labels.csv); export one from the review page")
        with (folder / "labels.csv").open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        alarms = [folder / r["file"] for r in rows if r["label"] == "false_alarm"]
        defects: dict[str, list[Path]] = {}
        for r in rows:
            if r["label"] == "defect":
                defects.setdefault(r["defect_type"] or "defect", []).append(folder / r["file"])
        return cls(alarms, defects)


class BankScorer:
    """Scores prepared images with a bundle's int8 graph against a memory bank, as the agent does."""

    def __init__(self, bundle: Bundle, threads: int = 2) -> None:
        entry = bundle.models["scorer"]
        if entry.kind != "patchcore" or not isinstance(entry.params, PatchCoreParams):
            raise UpdateError(f"bundle {bundle.path}: update from feedback needs a PatchCore scorer, not {entry.kind}")
        self.entry, self.params = entry, entry.params
        self.spec: PreprocessSpec = entry.preprocess
        self.model = TFLiteModel(bundle.path / entry.file, threads)
        tail = self.params.type_tail
        self.tail = TFLiteModel(bundle.path / tail, threads) if tail else None
        self.bank = np.load(bundle.path / self.params.memory_bank).astype(np.float32)
        whitening = self.params.whitening
        self.whitening = np.load(bundle.path / whitening) if whitening else None
        self.threads = threads

    def patches(
        self, images: np.ndarray, with_deep: bool = False
    ) -> tuple[list[np.ndarray], tuple[int, int], list[np.ndarray | None]]:
        """Patch embeddings of each prepared image, their grid, and each image's deeper map (the type head's tap;
        None when the graph has none; a type tail runs only ``with_deep``)."""
        out, deep, grid = [], [], (0, 0)
        tail = self.tail if with_deep else None
        for image in images:
            patches, grid, _, deeper = backbone_patches(
                self.model,
                image,
                self.spec,
                self.params.pool,
                self.params.patch_taps,
                tail,
                with_deep and self.params.type_reads_last_tap,
            )
            out.append(patches.astype(np.float32))
            deep.append(deeper[0] if deeper else None)
        return out, grid, deep

    def type_features(
        self, patches: list[np.ndarray], deep: list[np.ndarray | None], grid: tuple[int, int], bank: np.ndarray
    ) -> np.ndarray:
        """Type-head features (:func:`edge_agent.type_head.type_features`) of images' patches against ``bank``, with
        the agent's search."""
        index = make_index(bank, self.threads, self.whitening, self.params.search_probe)
        out = []
        for p, d in zip(patches, deep, strict=True):
            if d is None:
                raise UpdateError("the scorer graph has no deeper tap: its bundle has no type head")
            out.append(type_features(p, index.distances(p), grid, d))
        return np.stack(out)

    def scores(
        self, patches: list[np.ndarray], grid: tuple[int, int], bank: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Image scores and maps against ``bank`` with the agent's search."""
        index = make_index(bank, self.threads, self.whitening, self.params.search_probe)
        scores, maps = [], []
        for p in patches:
            amap = distance_map(index.distances(p), grid, self.spec.size, self.params.blur_sigma)
            scores.append(image_score(amap, self.params.score_top_fraction))
            maps.append(amap)
        return np.array(scores, np.float32), np.stack(maps)

    def leave_one_out(
        self, images: np.ndarray, patches: list[np.ndarray], grid: tuple[int, int], bank: np.ndarray
    ) -> np.ndarray:
        """Training images' scores as export gives them (:func:`training.models.patchcore.leave_one_out_scores`):
        each image without its own bank rows (rows equal to one of its patches, turned copies included), their
        stand-ins in their place. ``patches``: the images' own (upright) patches, from :meth:`patches`."""
        own = [self.to_bank_space(p) for p in patches]
        for degrees in (self.entry.settings or {}).get("bank_rotations", []):
            turned, _, _ = self.patches(np.ascontiguousarray(np.rot90(images, degrees // 90, axes=(1, 2))))
            own = [np.concatenate([o, self.to_bank_space(t)]) for o, t in zip(own, turned, strict=True)]
        memory = traced_bank(bank, own, self.whitening)
        top = self.params.score_top_fraction
        return leave_one_out_scores(np.stack(patches), memory, grid, self.spec.size, self.params.blur_sigma, top)

    def to_bank_space(self, patches: np.ndarray) -> np.ndarray:
        """Patches in the bank's search space (whitened when the bundle's bank is)."""
        return patches if self.whitening is None else (patches @ self.whitening).astype(np.float32)


def traced_bank(bank: np.ndarray, image_patches: list[np.ndarray], whitening: np.ndarray | None) -> MemoryBank:
    """``bank`` with each row traced to the training image whose patch it copies (-1: a turned copy or a feedback
    patch, never left out) and each traced row's stand-in; ``image_patches`` are in the bank's space."""
    patches = np.concatenate(image_patches)
    image_of = np.repeat(np.arange(len(image_patches)), [len(p) for p in image_patches])
    at, _ = nearest_of_other_image(patches, image_of, bank, np.full(len(bank), -1))
    own = np.linalg.norm(patches[at] - bank, axis=1) < EXACT  # exact difference, no cancellation
    sources = np.where(own, image_of[at], -1)
    return MemoryBank(bank, sources, whitening, find_stand_ins(patches, image_of, bank, sources))


def extend_bank(bank: np.ndarray, new: np.ndarray, radius: float) -> tuple[np.ndarray, int]:
    """Greedy k-center continued from ``bank`` over ``new`` rows until all lie within ``radius``; (bank, added)."""
    nearest = NearestNeighbourIndex(bank, 1).distances(new)
    added: list[int] = []
    while len(new) and nearest.max() > radius:
        pick = int(nearest.argmax())
        added.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(new - new[pick], axis=1))
    return np.concatenate([bank, new[added]]).astype(np.float32), len(added)


def _prepared(paths: list[Path], spec: PreprocessSpec) -> np.ndarray:
    if not paths:
        return np.zeros((0, spec.size, spec.size, spec.channels), np.uint8)
    return np.stack([prepare(read_image(p, spec.size), spec) for p in paths])


def update_bundle(
    bundle_dir: Path, cfg: TrainConfig, feedback_dir: Path, out: Path, max_drop: float, min_defects: int = 3
) -> dict[str, Any]:
    """Build the next version of ``bundle_dir`` in ``out`` from the review export ``feedback_dir``; the report."""
    started = time.perf_counter()
    bundle = load_bundle(bundle_dir)
    scorer = BankScorer(bundle)
    feedback = Feedback.read(feedback_dir)
    if not feedback.false_alarms and not feedback.defects:
        raise UpdateError(f"{feedback_dir}: no frame marked false alarm or confirmed defect; nothing to learn")
    splits = load_dataset(cfg.dataset)
    spec = scorer.spec
    train_images = load_images(splits.train, spec)[0]
    train_patches, grid, _ = scorer.patches(train_images)
    bank = scorer.bank
    index = NearestNeighbourIndex(bank, scorer.threads, whitening=scorer.whitening)
    radius = float(max(index.distances(p).max() for p in train_patches))
    alarm_patches, _, _ = scorer.patches(_prepared(feedback.false_alarms, spec))
    if alarm_patches:
        new_bank, added = extend_bank(bank, scorer.to_bank_space(np.concatenate(alarm_patches)), radius)
    else:
        new_bank, added = bank, 0
    loo = scorer.leave_one_out(train_images, train_patches, grid, new_bank)
    val_patches, _, _ = scorer.patches(load_images(splits.validation, spec)[0])
    val_scores, val_maps = scorer.scores(val_patches, grid, new_bank)
    t = cfg.threshold
    calibration = fit_calibration(
        val_scores, val_maps, t.method, t.k, t.quantile, t.pixel_quantile, t.false_alarm_rate, loo
    )
    old_threshold = bundle.models["scorer"].calibration.threshold  # type: ignore[union-attr]
    defect_paths = [p for paths in feedback.defects.values() for p in paths]
    defect_patches, _, defect_deep = scorer.patches(_prepared(defect_paths, spec), with_deep=True)
    test_images, test_samples = load_images(splits.test, spec)
    test_patches, _, test_deep = scorer.patches(test_images, with_deep=True)
    labels = np.array([s.label for s in test_samples])
    before = {
        "alarms": scorer.scores(alarm_patches, grid, bank)[0] if alarm_patches else np.zeros(0),
        "defects": scorer.scores(defect_patches, grid, bank)[0] if defect_paths else np.zeros(0),
        "test": scorer.scores(test_patches, grid, bank)[0],
    }
    after = {
        "alarms": scorer.scores(alarm_patches, grid, new_bank)[0] if alarm_patches else np.zeros(0),
        "defects": scorer.scores(defect_patches, grid, new_bank)[0] if defect_paths else np.zeros(0),
        "test": scorer.scores(test_patches, grid, new_bank)[0],
    }
    report = _report(bundle, feedback, before, after, labels, old_threshold, calibration.threshold)
    report.update(bank_rows_added=added, bank_rows=len(new_bank), coverage_radius=radius)
    defects, test = (defect_patches, defect_deep), (test_patches, test_deep)
    types = _refit_types(
        bundle, scorer, new_bank, grid, defects, test, test_samples, feedback, cfg.classifier.folds, min_defects
    )
    report.update(types.report)
    check_gate(report, max_drop)  # before anything is written: a refused update leaves no folder
    report["seconds"] = round(time.perf_counter() - started, 1)
    _write_bundle(bundle, out, new_bank, calibration.to_dict(), report, types.head)
    return report


def check_gate(report: dict[str, Any], max_drop: float) -> None:
    """UpdateError when the test split's image AUROC dropped by more than ``max_drop``."""
    drop = report["test_auroc_before"] - report["test_auroc_after"]
    if drop > max_drop:
        msg = (
            f"update refused: test image AUROC {report['test_auroc_after']:.4f}, was {report['test_auroc_before']:.4f}"
        )
        raise UpdateError(f"{msg} (drop {drop:.4f} > gate {max_drop})")


def _refit_types(
    bundle: Bundle,
    scorer: BankScorer,
    bank: np.ndarray,
    grid: tuple[int, int],
    defects: tuple[list[np.ndarray], list[np.ndarray | None]],
    test: tuple[list[np.ndarray], list[np.ndarray | None]],
    test_samples: list[Sample],
    feedback: Feedback,
    folds: int,
    min_defects: int,
) -> TypeRefit:
    """The type head re-fitted with the confirmed defects (:mod:`training.update_types`), when the bundle has one.

    ``defects`` and ``test`` are the patches and deeper maps already computed for the confirmed frames (in
    ``feedback.defects`` order) and the test split.
    """
    entry = bundle.models.get("classifier")
    if entry is None or entry.kind != "type_head" or not isinstance(entry.params, TypeHeadParams):
        kind = "no defect-type model" if entry is None else f"a {entry.kind}"
        return TypeRefit(None, {"type_head": f"not re-fitted: the bundle has {kind}"})
    old = TypeHead.load(bundle.path / entry.params.head)
    known = [i for i, s in enumerate(test_samples) if s.label == 1 and s.defect_type in old.class_names]
    base_x = scorer.type_features([test[0][i] for i in known], [test[1][i] for i in known], grid, bank)
    base_types = [str(test_samples[i].defect_type) for i in known]
    feedback_types = [t for t, paths in feedback.defects.items() for _ in paths]
    feedback_x = scorer.type_features(*defects, grid, bank) if defects[0] else np.zeros((0, old.n_features))
    return refit_type_head(old, base_x, base_types, feedback_x, feedback_types, folds, min_defects)


def _report(
    bundle: Bundle,
    feedback: Feedback,
    before: dict[str, np.ndarray],
    after: dict[str, np.ndarray],
    labels: np.ndarray,
    old_threshold: float,
    new_threshold: float,
) -> dict[str, Any]:
    normal = labels == 0
    return {
        "parent_version": bundle.version,
        "parent_hash": bundle.digest,
        "false_alarms": len(feedback.false_alarms),
        "confirmed_defects": {k: len(v) for k, v in sorted(feedback.defects.items())},
        "threshold_before": old_threshold,
        "threshold_after": new_threshold,
        "false_alarms_still_alarming_before": int((before["alarms"] >= old_threshold).sum()),
        "false_alarms_still_alarming_after": int((after["alarms"] >= new_threshold).sum()),
        "confirmed_defects_caught_before": int((before["defects"] >= old_threshold).sum()),
        "confirmed_defects_caught_after": int((after["defects"] >= new_threshold).sum()),
        "test_auroc_before": metrics.roc_auc(labels, before["test"]),
        "test_auroc_after": metrics.roc_auc(labels, after["test"]),
        "test_false_alarm_rate_before": float((before["test"][normal] >= old_threshold).mean()),
        "test_false_alarm_rate_after": float((after["test"][normal] >= new_threshold).mean()),
        "test_recall_before": float((before["test"][~normal] >= old_threshold).mean()),
        "test_recall_after": float((after["test"][~normal] >= new_threshold).mean()),
    }


def _write_bundle(
    bundle: Bundle,
    out: Path,
    bank: np.ndarray,
    calibration: dict[str, Any],
    report: dict[str, Any],
    head: TypeHead | None = None,
) -> None:
    """Copy the parent bundle, replace its bank, calibration (and type head), write a verified manifest (staged,
    then moved)."""
    if out.exists():
        raise UpdateError(f"{out} exists; choose a new folder for the new version")
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(bundle.path, staging)
    raw = json.loads((bundle.path / MANIFEST).read_text(encoding="utf-8"))
    scorer = raw["models"]["scorer"]
    np.save(staging / scorer["params"]["memory_bank"], bank)
    scorer["params"]["bank_size"] = len(bank)
    scorer["calibration"] = calibration
    if head is not None:
        classifier = raw["models"]["classifier"]
        head.save(staging / classifier["params"]["head"])
        classifier["class_names"] = head.class_names
    raw["version"] = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    raw["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    raw["metrics"]["update"] = report
    raw["files"] = {name: sha256_file(staging / name) for name in raw["files"]}
    parse_manifest(raw, f"bundle {out}")  # the same contract the agent checks
    (staging / MANIFEST).write_text(json.dumps(raw, indent=2, default=float), encoding="utf-8")
    staging.rename(out)
    load_bundle(out)
