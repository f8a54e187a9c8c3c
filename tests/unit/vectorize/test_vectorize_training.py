"""A tiny end-to-end training run, ONNX parity, and the tiers on its models and on the committed ones."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from build_engines.vectorize.dataset import list_images
from build_engines.vectorize.export import ParityError, export_onnx
from build_engines.vectorize.runtime import TRAINED_DIR, Models
from build_engines.vectorize.train import train_all
from serve.images.raster import load_image
from serve.paths import ICONS_DEV
from serve.triton.spec import read_model_config, write_model_config
from serve.vectorize.features import F, compute_features
from serve.vectorize.params import P, VtracerParams
from serve.vectorize.schema import Tier
from serve.vectorize.spec import POLICY, QUALITY, SPECS
from serve.vectorize.tiers import MODEL_TIERS, choose
from tests.images import write_icons

TRAIN = ICONS_DEV / "train"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict, Path]:
    root = tmp_path_factory.mktemp("vectorize")
    data = write_icons(root / "data")
    report = train_all(
        [list_images(data)],
        root / "out",
        samples_per_image=4,
        seed=0,
        ppo_steps=256,
        processes=1,
        clusters=2,
        epochs=3,
        size=96,
        use_cache=False,
        verify_images=1,
        refine_rounds=1,
    )
    return root / "out", report, data


def test_training_writes_models_with_parity(trained):
    out, report, _ = trained
    assert report["images"] == 6 and report["rows"] == 6 * (4 + 4) + 6 * 3  # + one refinement round
    for spec in SPECS:
        model = onnx.load(out / f"{spec.name}.onnx")
        assert [i.name for i in model.graph.input] == [t.name for t in spec.inputs]
        assert [o.name for o in model.graph.output] == [t.name for t in spec.outputs]
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        assert report["onnx_max_abs_error"][spec.name] <= 1e-3
    assert (out / "tier1.json").exists()
    assert set(report["trust_margins"]) == {str(t) for t in MODEL_TIERS}


def test_tiers_return_valid_params(trained):
    out, _, data = trained
    models = Models.load(out)
    pixels = load_image(sorted(data.iterdir())[0])
    scores = models.scores(pixels)
    for tier in Tier:
        choice = choose(tier, scores, max(pixels.shape[:2]))
        assert isinstance(choice.params, VtracerParams) and choice.asked is tier
    features = np.repeat(compute_features(pixels)[None], 5, axis=0)
    params, ssim, log_bytes = models.policy(features)
    assert params.shape == (5, P) and ssim.shape == log_bytes.shape == (5, 1)
    rated, _ = models.predictor(features, params)  # the policy's own rating is the predictor's
    np.testing.assert_allclose(rated, ssim[:, 0], atol=1e-5)


def test_missing_models_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="easel train vectorize"):
        Models.load(tmp_path)


def test_export_parity_failure_raises(tmp_path):
    import torch

    class Drift(torch.nn.Module):
        def forward(self, features):
            # random output: ONNX and PyTorch disagree
            params = torch.rand(features.shape[0], P) + features[:, :1] * 0
            return params, params[:, :1], params[:, 1:2]

    with pytest.raises(ParityError):
        export_onnx(Drift(), POLICY, tmp_path / "drift.onnx")


def test_triton_configs_round_trip(tmp_path):
    for spec in SPECS:
        config = read_model_config(write_model_config(spec, tmp_path))
        assert config.max_batch_size == spec.max_batch_size > 0 and config.HasField("dynamic_batching")
        assert [tuple(i.dims) for i in config.input] == [t.dims for t in spec.inputs]
    assert QUALITY.input("features").dims == (F,) and QUALITY.input("params").dims == (P,)


def test_committed_models_load_and_answer():
    models = Models.load(TRAINED_DIR)
    image = sorted(TRAIN.glob("*.png"))[0] if TRAIN.exists() else None
    pixels = load_image(image) if image else np.full((64, 64, 3), 255, np.uint8)
    scores = models.scores(pixels)
    for tier in Tier:
        assert isinstance(choose(tier, scores, max(pixels.shape[:2])).params, VtracerParams)
    total = sum(p.stat().st_size for p in TRAINED_DIR.iterdir())
    assert total < 5 * 1024 * 1024


def test_evaluate_folder_and_plot(trained, tmp_path):
    from build_engines.vectorize.evaluate import METHODS, TIER_METHODS, evaluate_folder, format_table
    from build_engines.vectorize.plot import plot_quality_vs_size

    out, _, data = trained
    (data / "img0.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96"><rect width="9" height="9"/></svg>'
    )
    result = evaluate_folder(data, size=64, random_search=3, limit=2, processes=1, models_dir=out)
    rows = {r["method"]: r for r in result["summary"]}
    assert list(rows) == list(METHODS)
    assert rows["original"]["images"] == 1 and rows["original"]["median_paths"] == 1  # the source SVG's one shape
    assert rows["defaults"]["bytes_ratio"] == 1.0 and all(
        r["images"] == 2 for r in rows.values() if r["method"] != "original"
    )
    for method in TIER_METHODS:  # served quality first: a checked choice never scores below the defaults
        served = [r for r in result["records"] if r["method"] == method and r["checked"]]
        defaults = {r["image"]: r["ssim"] for r in result["records"] if r["method"] == "defaults"}
        assert all(r["ssim"] >= defaults[r["image"]] - 1e-9 for r in served)
    # the oracles never lose SSIM against the defaults
    assert rows["random_search"]["mean_ssim"] >= rows["defaults"]["mean_ssim"]
    assert rows["best_preset"]["mean_ssim"] >= rows["defaults"]["mean_ssim"]
    assert "tier2" in format_table(result["summary"])
    assert plot_quality_vs_size(result["summary"], tmp_path / "plot.png").stat().st_size > 1000


def test_merge_tables_offsets_images():
    from build_engines.vectorize.dataset import Table, merge_tables

    def table(n_images: int, rows: int, name: str) -> Table:
        return Table(
            features=np.zeros((n_images, F), np.float32),
            image=np.arange(rows, dtype=np.int32) % n_images,
            params=np.zeros((rows, P), np.float32),
            ssim=np.ones(rows, np.float32),
            n_bytes=np.ones(rows, np.int64),
            n_paths=np.ones(rows, np.int32),
            seconds=np.zeros(rows, np.float32),
            names=np.asarray([f"{name}{i}" for i in range(n_images)]),
        )

    merged = merge_tables([table(2, 4, "a"), table(3, 6, "b")])
    assert len(merged.features) == 5 and len(merged.ssim) == 10
    assert merged.image.tolist() == [0, 1, 0, 1, 2, 3, 4, 2, 3, 4]
    assert merged.names.tolist() == ["a0", "a1", "b0", "b1", "b2"]


def test_tier1_table_round_trips_with_its_margins():
    from serve.vectorize.params import PRESETS, to_vector
    from serve.vectorize.tiers import Margins, Tier1Map

    mapping = Tier1Map(
        mean=np.zeros(F, np.float32),
        std=np.ones(F, np.float32),
        centroids=np.zeros((1, F), np.float32),
        params=to_vector(PRESETS["photo"])[None],
        radius=np.asarray([0.5], np.float32),
        margins=Margins(0.002, {Tier.TIER1: 0.03, Tier.TIER2: 0.0, Tier.TIER3: 0.05}),
    )
    near, far = np.zeros(F, np.float32), np.full(F, 3.0, np.float32)
    assert mapping.familiar(near) and not mapping.familiar(far)
    again = Tier1Map.from_json(mapping.to_json())
    assert again.radius.tolist() == [0.5] and again.margins == mapping.margins
