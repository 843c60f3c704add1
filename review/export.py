"""Reviewed verdicts as a labelled data set in the plain folder layout that ``training/data.py`` reads.

Layout of an export::

    good/<verdict id>_<frame>.<ext>           false alarms: normal images (``normal_dirs: [good]``)
    <defect type>/<verdict id>_<frame>.<ext>  confirmed defects, one folder per confirmed type (``defect_dirs``)
    labels.csv                                one line per exported image: verdict, label, type, who, when, model
    dataset.yaml                              a ``dataset:`` section for ``training.cli`` (layout: folder)

"Unsure" reviews and verdicts whose original image is gone are left out (and counted).
"""

from __future__ import annotations

import csv
import io
import logging
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from review.db import DEFECT_TYPE_RE, ReviewRow, ReviewStore

log = logging.getLogger(__name__)

NORMAL_DIR = "good"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
CSV_FIELDS = [
    "file",
    "verdict_id",
    "label",
    "defect_type",
    "reviewer",
    "reviewed_at",
    "agent",
    "camera",
    "frame_id",
    "score",
    "threshold",
    "predicted_type",
    "model_name",
    "model_version",
    "model_hash",
]


@dataclass
class ExportReport:
    """What an export wrote and what it skipped."""

    folder: Path
    counts: dict[str, int] = field(default_factory=dict)
    skipped_unsure: int = 0
    missing_images: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Images written."""
        return sum(self.counts.values())


def _target_dir(row: ReviewRow) -> str | None:
    if row.label == "false_alarm":
        return NORMAL_DIR
    if row.label == "defect" and row.confirmed_type and DEFECT_TYPE_RE.match(row.confirmed_type):
        return NORMAL_DIR + "_defect" if row.confirmed_type == NORMAL_DIR else row.confirmed_type
    return None


def export_dataset(store: ReviewStore, out: Path, media_root: Path = Path("."), name: str = "review") -> ExportReport:
    """Copy the original image of every decided review into ``out`` (which must not exist or be empty)."""
    if out.exists() and any(out.iterdir()):
        msg = f"export folder {out} is not empty"
        raise FileExistsError(msg)
    out.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out)
    lines = []
    for row in store.reviewed():
        folder = _target_dir(row)
        if folder is None:
            report.skipped_unsure += 1
            continue
        source = resolve(row.image_path, media_root)
        if source is None or not source.is_file():
            report.missing_images.append(f"verdict {row.id}: {row.image_path}")
            continue
        stem = _UNSAFE.sub("_", Path(row.frame_id).stem).strip("._")[:120] or "frame"
        target = out / folder / f"{row.id}_{stem}{source.suffix.lower()}"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(source, target)
        report.counts[folder] = report.counts.get(folder, 0) + 1
        lines.append(_csv_line(row, target.relative_to(out).as_posix()))
    _write_csv(out / "labels.csv", lines)
    defect_dirs = sorted(k for k in report.counts if k != NORMAL_DIR)
    dataset = {
        "dataset": {
            "name": name,
            "layout": "folder",
            "root": str(out.resolve()),
            "normal_dirs": [NORMAL_DIR],
            "defect_dirs": defect_dirs,
        }
    }
    header = f"# exported by the review page on {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}: {report.total} images\n"
    (out / "dataset.yaml").write_text(header + yaml.safe_dump(dataset, sort_keys=False), encoding="utf-8")
    log.info("exported %d reviewed images to %s (%s)", report.total, out, report.counts)
    return report


def resolve(path: str | None, media_root: Path) -> Path | None:
    """A verdict's file path; relative paths are taken under ``media_root``."""
    if not path:
        return None
    p = Path(path)
    return p if p.is_absolute() else media_root / p


def _csv_line(row: ReviewRow, file: str) -> dict[str, object]:
    return {
        "file": file,
        "verdict_id": row.id,
        "label": row.label,
        "defect_type": row.confirmed_type or "",
        "reviewer": row.reviewer,
        "reviewed_at": row.reviewed_at.isoformat() if row.reviewed_at else "",
        "agent": row.agent,
        "camera": row.camera,
        "frame_id": row.frame_id,
        "score": row.score,
        "threshold": row.threshold,
        "predicted_type": row.defect_type or "",
        "model_name": row.model_name,
        "model_version": row.model_version,
        "model_hash": row.model_hash,
    }


def _write_csv(path: Path, lines: list[dict[str, object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(lines)


def zip_folder(folder: Path) -> bytes:
    """The folder as a ZIP archive in memory (for the download button)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    return buf.getvalue()
