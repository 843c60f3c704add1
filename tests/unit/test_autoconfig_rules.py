"""The search's rules without images: what is searched, what the YAML fixes, which candidate wins."""

import dataclasses
from types import SimpleNamespace

from training.autoconfig import Candidate, _options, choose, choose_final
from training.config import PatchCoreConfig


def _candidate(
    size=224,
    turns=(),
    ratio=0.01,
    image=0.99,
    pixel=0.98,
    bank=1000,
    backbone="efficientnet_lite0",
    whiten=False,
    top=None,
):
    return Candidate(backbone, size, turns, ratio, 4.0, top, whiten, image, pixel, bank, 152)


def test_yaml_values_are_kept_and_the_rest_searched():
    pc = PatchCoreConfig.model_validate({"size": 320, "bank_rotations": [90, 180, 270]})
    assert _options(pc, "size", (224, 320)) == [320]
    assert _options(pc, "bank_rotations", ((), (90, 180, 270))) == [(90, 180, 270)]
    assert _options(pc, "blur_sigma", (2.0, 4.0)) == [2.0, 4.0]  # not in the YAML: searched


def test_the_cheapest_within_the_tie_wins():
    cheap = _candidate(image=0.990)
    dear = _candidate(size=320, turns=(90, 180, 270), image=0.991)  # better by less than TIE
    assert choose([dear, cheap]) is cheap
    clearly_better = _candidate(size=320, image=0.999)
    assert choose([cheap, dear, clearly_better]) is clearly_better


def test_a_heavier_backbone_costs_more_than_lite0_at_the_same_size():
    lite0 = _candidate()
    lite2 = _candidate(backbone="efficientnet_lite2")
    assert lite2.cost > lite0.cost
    assert choose([lite2, lite0]) is lite0
    assert lite0.objective == 0.99 + 0.5 * 0.98


def test_backbones_tried_default_to_the_yamls_alone():
    from training.autoconfig import _available_backbones

    assert _available_backbones(PatchCoreConfig()) == ["efficientnet_lite0"]
    # offered more, the search tries those whose weights are installed (Lite2's are a dependency of the train extra)
    offered = _available_backbones(PatchCoreConfig(), ["efficientnet_lite2"])
    assert offered == ["efficientnet_lite0", "efficientnet_lite2"]
    fixed = PatchCoreConfig.model_validate({"backbone": "efficientnet_lite2"})
    assert _available_backbones(fixed, ["efficientnet_lite0"]) == ["efficientnet_lite2"]  # the YAML wins


def test_whitening_is_kept_only_when_it_beats_the_tie():
    raw = _candidate(image=0.990)
    assert _candidate(whiten=True).cost > raw.cost  # one (D, D) product a patch
    assert choose([_candidate(whiten=True, image=0.991), raw]) is raw
    better = _candidate(whiten=True, image=0.995)
    assert choose([raw, better]) is better


def test_at_a_tie_in_cost_and_objective_the_averaged_score_wins_over_the_maximum():
    peak, mean = _candidate(image=0.991), _candidate(image=0.990, top=0.01)
    assert choose([peak, mean]) is mean
    assert choose([_candidate(image=0.995), mean]).score_top_fraction is None  # better by more than the tie
    assert choose([_candidate(size=320, image=0.991, top=0.01), _candidate(image=0.990)]).size == 224  # cost first


def test_sizes_stop_at_the_first_that_covers_the_images_detail():
    from training.autoconfig import _sizes_with_detail

    assert _sizes_with_detail((224, 320, 448), 512) == [224, 320, 448]  # bottle, casting: 512 px
    assert _sizes_with_detail((224, 320, 448), 300) == [224, 320]  # tire: 448 would only upsample
    assert _sizes_with_detail((224, 320, 448), 64) == [224]  # small fixtures: the smallest size only


def test_a_finer_size_is_adopted_only_when_it_beats_the_first_stage_by_more_than_the_tie():
    from types import SimpleNamespace

    from training.autoconfig import choose_with_finer

    first = [_candidate(size=320, image=0.990), _candidate(size=224, image=0.980)]
    coarse_again = _candidate(size=320, image=0.985)  # the first stage's setting, judged on the finer stage's set
    tied = _candidate(size=448, image=0.986)
    search = SimpleNamespace(candidates=first, finer_candidates=[coarse_again, tied])
    assert choose_with_finer(search) is first[0]  # within the tie: the cheaper first-stage choice stays
    better = _candidate(size=448, image=0.995)
    search.finer_candidates = [coarse_again, better]
    assert choose_with_finer(search) is better
    search.finer_candidates = []  # not tried (fixed size, no detail, or over budget)
    assert choose_with_finer(search) is first[0]


def test_the_finer_stage_compares_the_first_choice_at_each_size_and_nothing_else():
    from training.autoconfig import at_settings_of

    lead = _candidate(size=320, top=0.01, whiten=True)
    finer = [
        _candidate(size=448, top=None, whiten=True, image=0.999),  # a better objective with another score rule
        _candidate(size=448, top=0.01, whiten=True, image=0.995),
        _candidate(size=320, top=0.01, whiten=True, image=0.990),
        _candidate(size=448, top=0.01, whiten=True, ratio=0.02),
    ]
    assert at_settings_of(lead, finer) == finer[1:3]


def test_no_neighbourhood_averaging_is_adopted_only_when_it_beats_the_tie():
    lead = _candidate(image=0.990)  # pool 3, chosen by the earlier stages
    rejudged = dataclasses.replace(lead, image_auroc=0.980)  # the same setting on the context stage's own set
    near = dataclasses.replace(rejudged, image_auroc=0.981, pool=1)
    search = SimpleNamespace(candidates=[lead], finer_candidates=[], context_candidates=[rejudged, near])
    assert choose_final(search) is lead  # within the tie: PatchCore's 3 x 3 stays
    better = dataclasses.replace(rejudged, image_auroc=0.985, pool=1)
    search.context_candidates = [rejudged, better]
    assert choose_final(search) is better
    search.context_candidates = []  # the stage did not run (the YAML sets pool, or the budget was spent)
    assert choose_final(search) is lead
