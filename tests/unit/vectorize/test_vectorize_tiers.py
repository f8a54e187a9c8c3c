"""The one dispatcher (tiers.choose), the check that guards quality (needs_check, answer) and their vocabulary."""

from dataclasses import replace

import numpy as np
import pytest

from serve.vectorize.features import F
from serve.vectorize.params import DEFAULTS, PRESETS, P, from_vector, scale_to_size, to_vector
from serve.vectorize.schema import Preference, Tier, VectorizeOptions
from serve.vectorize.tiers import (
    DEFAULTS_ROW,
    TIER1_ROW,
    Margins,
    Scores,
    Why,
    answer,
    choose,
    needs_check,
    pick,
    served_answer,
)
from tests.images import icon_pixels

SMALL = to_vector(PRESETS["photo"])  # a candidate the fake predictor rates best and smallest


def _scores(familiar: bool = True, gradient: bool = False, trust: float = 0.01) -> Scores:
    """Candidates: defaults, 3 presets, tier 1's answer (poster), SMALL; the policy proposes the bw preset."""
    rows = [to_vector(DEFAULTS), *(to_vector(p) for p in PRESETS.values()), to_vector(PRESETS["poster"]), SMALL]
    features = np.zeros(F, np.float32)
    features[8] = 0.5 if gradient else 0.0  # smooth_fraction: the gradient class
    return Scores(
        features=features,
        candidates=np.stack(rows),
        ssim=np.asarray([0.90, 0.90, 0.80, 0.70, 0.905, 0.95], np.float32),
        log_bytes=np.asarray([9.0, 9.5, 9.0, 8.0, 8.5, 7.0], np.float32),
        policy=to_vector(PRESETS["bw"]),
        policy_ssim=0.93,
        policy_log_bytes=7.5,
        familiar=familiar,
        margins=Margins(0.01, {Tier.TIER1: trust, Tier.TIER2: trust, Tier.TIER3: trust}),
    )


def test_tier_is_the_api_vocabulary():
    assert [t.value for t in Tier] == ["auto", "1", "2", "3", "default"]
    assert VectorizeOptions.model_validate({"tier": "2"}).tier is Tier.TIER2
    assert VectorizeOptions.model_validate({}).prefer is Preference.QUALITY
    with pytest.raises(ValueError):
        VectorizeOptions.model_validate({"tier": "tier2"})


def test_priority_is_prefer_s_former_name_still_accepted():
    assert VectorizeOptions.model_validate({"prefer": "size"}).prefer is Preference.SIZE
    former = VectorizeOptions.model_validate({"priority": "size"})
    assert former.prefer is Preference.SIZE
    assert VectorizeOptions.model_validate(former.model_dump(by_alias=True)).prefer is Preference.SIZE
    assert VectorizeOptions.model_validate({"priority": "size", "prefer": "quality"}).prefer is Preference.QUALITY


@pytest.mark.parametrize(
    ("asked", "used", "why", "params"),
    [
        (Tier.TIER1, Tier.TIER1, Why.ASKED, PRESETS["poster"]),
        (Tier.TIER2, Tier.TIER2, Why.ASKED, PRESETS["photo"]),
        (Tier.TIER3, Tier.TIER3, Why.ASKED, PRESETS["bw"]),
        (Tier.AUTO, Tier.TIER1, Why.AUTO, PRESETS["poster"]),
        (Tier.DEFAULT, Tier.DEFAULT, Why.ASKED, DEFAULTS),
    ],
)
def test_choose_carries_asked_used_and_why(asked, used, why, params):
    choice = choose(asked, _scores(), side=256)
    assert (choice.asked, choice.used, choice.why, choice.params) == (asked, used, why, params)
    if used is not Tier.DEFAULT:
        assert choice.predicted_gain == pytest.approx(choice.predicted_ssim - 0.90, abs=1e-6)


def test_auto_searches_gradients_within_budget():
    assert choose(Tier.AUTO, _scores(gradient=True), 256).used is Tier.TIER2
    assert choose(Tier.AUTO, _scores(gradient=True), 256, budget_ms=10).used is Tier.TIER1


def test_tier2_keeps_tier1s_answer_for_unfamiliar_images_and_honours_target_quality():
    unfamiliar = choose(Tier.TIER2, _scores(familiar=False), 256)
    assert unfamiliar.why is Why.UNFAMILIAR and unfamiliar.params == PRESETS["poster"]
    target = choose(Tier.TIER2, _scores(), 256, target_quality=0.85)
    assert target.why is Why.TARGET_QUALITY and target.params == PRESETS["photo"]
    assert choose(Tier.TIER2, _scores(), 256, target_quality=0.99).params == PRESETS["photo"]  # none reach: best


def test_pixel_sized_parameters_follow_the_image_size_but_defaults_stay_exact():
    assert choose(Tier.TIER2, _scores(), 512).params.filter_speckle == 2 * PRESETS["photo"].filter_speckle
    assert choose(Tier.DEFAULT, _scores(), 512).params == DEFAULTS


def test_pick_prefers_smallest_that_keeps_quality():
    ssim = np.asarray([0.95, 0.96, 0.99, 0.90])
    log_bytes = np.asarray([8.0, 7.0, 7.5, 5.0])
    assert pick(ssim, log_bytes, margin=0.0) == 1
    assert pick(ssim, log_bytes, margin=0.02) == 2
    assert pick(ssim, log_bytes, margin=0.1) == 2  # none qualifies: highest SSIM
    assert pick(ssim, log_bytes, margin=0.0, reference=1) == 1
    assert pick(ssim, log_bytes, margin=0.0, reference=2) == 2
    assert pick(np.asarray([0.95, 0.96, 0.99, 0.97]), log_bytes, margin=0.0, reference=1) == 3


def test_needs_check_when_the_predictor_is_not_sure():
    scores = _scores(trust=0.01)
    sure = choose(Tier.TIER2, scores, 256)  # predicted +0.05 over the defaults
    unsure = choose(Tier.TIER1, scores, 256)  # predicted +0.005
    assert not needs_check(sure, scores, Preference.QUALITY, None)
    assert needs_check(unsure, scores, Preference.QUALITY, None)
    assert needs_check(sure, replace(scores, familiar=False), Preference.QUALITY, None)
    assert not needs_check(unsure, scores, Preference.SIZE, None)  # size first: as is
    assert not needs_check(unsure, scores, Preference.QUALITY, 0.9)  # the request names its own quality
    assert not needs_check(choose(Tier.DEFAULT, scores, 256), scores, Preference.QUALITY, None)


def test_a_choice_that_loses_gives_way_to_tier_1_s_answer_when_that_holds():
    pixels = icon_pixels(96)
    losing = choose(Tier.TIER3, _scores(), 96)  # binary mode loses the colours; tier 1's answer is the poster preset
    assert losing.runner_up == scale_to_size(PRESETS["poster"], 96)
    result = answer(pixels, losing, check=True)
    assert result.choice.used is Tier.TIER1 and result.choice.asked is Tier.TIER3 and not result.choice.fallback
    assert result.choice.why is Why.TIER1_AFTER_CHECK and result.choice.params == losing.runner_up
    assert result.unchecked_ssim < result.ssim and result.unchecked.svg != result.conversion.svg


def test_a_choice_that_loses_with_its_runner_up_is_replaced_by_the_defaults():
    pixels = icon_pixels(96)
    losing = replace(choose(Tier.TIER3, _scores(), 96), runner_up=PRESETS["bw"].replace(filter_speckle=8))
    result = answer(pixels, losing, check=True)
    assert result.choice.used is Tier.DEFAULT and result.choice.asked is Tier.TIER3
    assert result.choice.why is Why.BELOW_DEFAULTS and result.choice.fallback
    assert result.choice.params == DEFAULTS and result.unchecked_ssim < result.ssim
    assert result.conversion.n_bytes > 0 and "check" in result.timings_ms


def test_tier_1_has_no_runner_up_and_neither_has_a_choice_that_is_tier_1_s_answer():
    assert choose(Tier.TIER1, _scores(), 256).runner_up is None
    assert choose(Tier.TIER2, _scores(familiar=False), 256).runner_up is None  # unfamiliar: tier 1's answer
    assert choose(Tier.TIER2, _scores(), 256).runner_up == PRESETS["poster"]


def test_tier_3_serves_the_policy_only_where_the_predictor_trusts_it():
    trusted = choose(Tier.TIER3, _scores(trust=0.01), 256)  # the policy's gain over the defaults: 0.03
    assert (trusted.used, trusted.why, trusted.params) == (Tier.TIER3, Why.ASKED, PRESETS["bw"])
    for scores in (_scores(trust=0.05), _scores(familiar=False)):
        unsure = choose(Tier.TIER3, scores, 256)
        assert (unsure.used, unsure.why, unsure.params) == (Tier.TIER1, Why.POLICY_UNSURE, PRESETS["poster"])
        assert unsure.asked is Tier.TIER3 and unsure.runner_up is None and not unsure.fallback


def test_a_choice_at_least_as_good_stays_and_unchecked_answers_measure_nothing():
    pixels = icon_pixels(96)
    good = replace(choose(Tier.TIER1, _scores(), 96), params=DEFAULTS.replace(color_precision=8))
    kept = answer(pixels, good, check=True)
    assert kept.choice == good and kept.checked and kept.ssim > 0.9 and kept.unchecked is None
    plain = answer(pixels, good, check=False)
    assert plain.ssim is None and not plain.checked and set(plain.timings_ms) == {"convert"}


def test_the_served_answer_measures_its_svg_and_falls_back_below_the_target_quality():
    pixels = icon_pixels(96)
    binary = choose(Tier.TIER3, _scores(), 96)  # binary mode loses the colours: well below the defaults
    measured = served_answer(pixels, binary, check=False, measure=True, target_quality=None)
    assert measured.choice == binary and measured.ssim is not None and "validate" in measured.timings_ms
    below = served_answer(pixels, binary, check=False, measure=True, target_quality=0.99)
    assert below.choice.used is Tier.DEFAULT and below.choice.why is Why.BELOW_TARGET and below.ssim > measured.ssim
    assert served_answer(pixels, binary, check=False, measure=False, target_quality=0.99).ssim is None


def test_margins_round_trip_through_the_tensor():
    margins = Margins(0.005, {Tier.TIER1: 0.02, Tier.TIER2: 0.0, Tier.TIER3: 0.05})
    again = Margins.from_array(margins.as_array())
    assert again.tier2 == pytest.approx(0.005) and again.trust[Tier.TIER3] == pytest.approx(0.05)
    assert DEFAULTS_ROW == 0 and TIER1_ROW == 1 + len(PRESETS) and from_vector(SMALL) == PRESETS["photo"]
    assert P == len(SMALL)
