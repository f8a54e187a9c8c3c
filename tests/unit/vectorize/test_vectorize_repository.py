"""The served models read everything from the model repository: ONNX engines and the tier-1 table."""

import numpy as np

from build_engines.vectorize.repository import install_vectorize
from build_engines.vectorize.runtime import TRAINED_DIR
from serve.triton.spec import Backend
from serve.vectorize.spec import ENSEMBLE, FEATURES, POLICY, QUALITY
from serve.vectorize.tiers import TIER1_FILE, Scores
from serve.vectorize.triton_features import FeaturesModel, features_and_candidates
from tests.images import icon_pixels


def test_install_puts_the_table_beside_the_features_model(tmp_path):
    assert install_vectorize(tmp_path, backend=Backend.PYTHON_ONNX)
    table = tmp_path / FEATURES.name / "1" / TIER1_FILE
    assert table.resolve() == (TRAINED_DIR / TIER1_FILE).resolve()
    for spec in (QUALITY, POLICY):
        assert (tmp_path / spec.name / "1" / "model.onnx").exists()
    assert (tmp_path / ENSEMBLE.name / "config.pbtxt").exists()


def test_untrained_folder_installs_nothing(tmp_path):
    assert not install_vectorize(tmp_path / "repo", trained_dir=tmp_path)
    assert not (tmp_path / "repo").exists()


def test_features_model_reads_its_table_from_the_repository(tmp_path):
    install_vectorize(tmp_path)
    model = FeaturesModel()
    model.initialize({"model_repository": str(tmp_path / FEATURES.name), "model_version": "1"})
    outputs = features_and_candidates(icon_pixels(64), model.mapping)
    assert list(outputs) == [t.name for t in FEATURES.outputs]
    for tensor in FEATURES.outputs:
        shape = outputs[tensor.name].shape
        assert len(shape) == len(tensor.dims) and all(d in (-1, s) for d, s in zip(tensor.dims, shape, strict=True))
    scored = {
        **outputs,
        "ssim": np.zeros((len(outputs["candidates"]), 1), np.float32),
        "log_bytes": np.zeros((len(outputs["candidates"]), 1), np.float32),
        "policy_params": outputs["candidates"][:1],
        "policy_ssim": np.zeros((1, 1), np.float32),
        "policy_log_bytes": np.zeros((1, 1), np.float32),
    }
    assert set(scored) == {t.name for t in ENSEMBLE.outputs} | {"features_tiled"}
    scores = Scores.from_outputs(scored)
    assert scores.margins == model.mapping.margins and isinstance(scores.familiar, bool)


def test_the_models_see_a_512_px_image_as_its_256_px_self():
    """Trained at 256 px only: the size feature is pinned, so a larger upload is neither unfamiliar nor mispredicted."""
    from build_engines.vectorize.runtime import Models

    models = Models.load(TRAINED_DIR)
    small, large = (
        features_and_candidates(icon_pixels(256), models.mapping),
        features_and_candidates(icon_pixels(512), models.mapping),
    )
    np.testing.assert_allclose(small["features"], large["features"], atol=0.02)
    assert small["familiar"][0] == large["familiar"][0]
