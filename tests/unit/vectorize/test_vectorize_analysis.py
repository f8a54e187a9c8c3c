"""The analysis ``POST /v1/vectorize/analyze`` answers: the dispatcher's own class, tier and predictions."""

import numpy as np
import pytest

from serve.grpc_api.messages import analyze_reply
from serve.vectorize.analysis import analysis
from serve.vectorize.features import CLASS_RULES, FEATURE_NAMES, F, ImageClass, classify, classify_with_confidence
from serve.vectorize.schema import Tier, VectorizeOptions
from serve.vectorize.tiers import choose
from tests.unit.vectorize.test_vectorize_tiers import _scores


@pytest.mark.parametrize("gradient", [False, True])
def test_class_tier_and_parameters_are_the_dispatcher_s(gradient):
    scores = _scores(gradient=gradient)
    result = analysis(scores, 512, VectorizeOptions())
    chosen = choose(Tier.AUTO, scores, 512)
    assert result["image_class"] == scores.image_class.value == ("gradient" if gradient else "simple")
    assert result["tier"] == chosen.used.value == ("2" if gradient else "1")
    assert result["parameters"] == chosen.params.kwargs() and result["why"] == "auto"
    assert set(result["features"]) == set(FEATURE_NAMES) and result["familiar"] is True


def test_predictions_per_tier_are_each_tier_s_choice():
    scores = _scores(trust=0.1)  # tier 3's predicted gain (0.03) below its trust: tier 1 stands in
    predicted = analysis(scores, 256, VectorizeOptions(tier="3"))["predicted"]
    assert predicted["default"] == {"tier": "default", "ssim": pytest.approx(0.90), "bytes": round(np.exp(9.0))}
    assert predicted["1"]["tier"] == "1" and predicted["1"]["ssim"] == pytest.approx(0.905)
    assert predicted["2"] == {"tier": "2", "ssim": pytest.approx(0.95), "bytes": round(np.exp(7.0))}
    assert predicted["3"]["tier"] == "1"  # the policy's pick is not trusted
    assert analysis(scores, 256, VectorizeOptions(tier="3"))["tier"] == "1"


def test_the_confidence_grows_with_the_distance_from_the_deciding_threshold():
    features = np.zeros(F, np.float32)
    smooth = FEATURE_NAMES.index("smooth_fraction")
    threshold = CLASS_RULES[0][1][0][2]
    confidences = []
    for value in (threshold * 1.01, threshold * 1.5, threshold * 4):
        features[smooth] = value
        image_class, confidence = classify_with_confidence(features)
        assert image_class is ImageClass.GRADIENT
        confidences.append(confidence)
    assert 0.5 < confidences[0] < 0.55 < confidences[1] < confidences[2] <= 1.0


def test_the_class_with_a_confidence_is_the_class_auto_dispatches_on():
    rows = np.random.default_rng(3).uniform(0, 1, (2000, F)).astype(np.float32)
    rows[:, FEATURE_NAMES.index("smooth_fraction")] *= 0.25
    for row in rows:
        image_class, confidence = classify_with_confidence(row)
        assert image_class is classify(row) and 0.5 <= confidence <= 1.0
    assert {classify(row) for row in rows} == set(ImageClass)


def test_the_grpc_reply_carries_every_field():
    result = analysis(_scores(gradient=True), 256, VectorizeOptions()) | {"model_version": 2}
    reply = analyze_reply(result)
    assert reply.model_version == 2
    assert reply.tier == "2" and reply.image_class == "gradient" and reply.predicted["2"].tier == "2"
    assert dict(reply.features) == pytest.approx(result["features"]) and reply.check == result["check"]
