"""Guide: how to use the page, and examples of each defect type from confirmed reviews or an examples folder."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import streamlit as st

from edge_agent.preprocess import IMAGE_SUFFIXES
from review.export import resolve
from review.media import load_rgb
from review.views.common import Context

PER_TYPE = 4

HOW_TO = """
**Inspect** - upload a photo (or pick one) and a model bundle: the page scores it exactly as the edge agent
does (same pre-processing, same int8 bundle) and shows the verdict, the score against the threshold, the
defect type with the classifier's confidence, and the heatmap. Nothing is stored.

**Review queue** - the agent's latest alarms, newest first. Narrow them with the filters (camera, time range,
defect type, score, review status). Each alarm shows the original image with the region above the pixel
threshold outlined in magenta, the heatmap (blue = like the good parts the model learnt, red = unlike them),
the score against the threshold, and the model that decided. Then record what it really is:

* **confirmed defect** - pick the right type (or type a new name under *other*); the agent's guess is preselected;
* **false alarm** - the part is good; these frames teach the next model what normal looks like;
* **unsure** - leave it for a quality engineer; unsure frames are not exported.

Every submission is kept with your name and the time; the latest one counts. Reviewers can export the
reviewed frames as a training data set (false alarms in `good/`, one folder per defect type).

**Statistics** - frames and alarms per hour or day and camera, defect types, score distributions, the
false-alarm rate from your reviews, and a warning when the scores of normal parts drift (the line, the light
or the camera changed).

**Models** - each model bundle: what it was trained on, how well it did (AUROC, F1, PRO, IoU, confusion
matrices), what int8 quantisation cost against the float model, and how its alarms fared in review.

Viewers can look at everything but cannot record feedback. Times are UTC.
"""


def examples(ctx: Context) -> dict[str, list[Path]]:
    """Up to PER_TYPE example images per defect type: confirmed reviews first, then the examples folder."""
    found: dict[str, list[Path]] = defaultdict(list)
    for row in reversed(ctx.store.reviewed(("defect",))):
        path = resolve(row.image_path, ctx.cfg.paths.media_root)
        if row.confirmed_type and path is not None and path.is_file() and len(found[row.confirmed_type]) < PER_TYPE:
            found[row.confirmed_type].append(path)
    folder = ctx.cfg.paths.examples_dir
    if folder is not None and folder.is_dir():
        for type_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            images = sorted(p for p in type_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            found[type_dir.name].extend(images[: max(0, PER_TYPE - len(found[type_dir.name]))])
    return {k: v for k, v in sorted(found.items()) if v}


def render(ctx: Context) -> None:
    """The guide page."""
    st.title("Guide")
    st.markdown(HOW_TO)
    st.subheader("What each defect type looks like")
    gallery = examples(ctx)
    if not gallery:
        st.info("No examples yet: they appear here once reviewers confirm defects (or set paths.examples_dir).")
        return
    for defect_type, paths in gallery.items():
        st.markdown(f"**{defect_type}**")
        cols = st.columns(PER_TYPE)
        for col, path in zip(cols, paths, strict=False):
            image = load_rgb(path)
            if image is not None:
                col.image(image, caption=path.name, width="stretch")
