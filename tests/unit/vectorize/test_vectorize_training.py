"""A tiny end-to-end training run, ONNX parity, and the tiers on its models and on the committed ones."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from build_engines.vectorize.export import ParityError, export_onnx
from build_engines.vectorize.train import train_all
from serve.paths import ICONS_DEV
from serve.triton.spec import read_model_config, write_model_config
from serve.vectorize.features import F, compute_features
from serve.vectorize.image import load_image
from serve.vectorize.params import DEFAULTS, P, VtracerParams
from serve.vectorize.runtime import TRAINED_DIR, Models
from serve.vectorize.spec import POLICY, QUALITY, SPECS
from serve.vectorize.tiers import TIERS, choose, pick

TRAIN = ICONS_DEV / "train"


def _make_images(folder: Path, count: int = 6) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(count):
        pixels = np.full((96, 96, 3), 255, dtype=np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, 70, 2)
            pixels[y : y + rng.integers(8, 26), x : x + rng.integers(8, 26)] = rng.integers(0, 255, 3)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict, Path]:
    root = tmp_path_factory.mktemp("vectorize")
    data = _make_images(root / "data")
    report = train_all(
        data,
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


def test_tiers_return_valid_params(trained):
    out, _, data = trained
    models = Models.load(out)
    assert models.mapping is not None and models.predictor is not None and models.policy is not None
    pixels = load_image(sorted(data.iterdir())[0])
    for tier in TIERS:
        choice = choose(pixels, tier, models.mapping, models.predictor, models.policy, margin=models.margin)
        assert isinstance(choice.params, VtracerParams)
        assert choice.tier.endswith(tier) or choice.tier.startswith("auto")
    features = np.repeat(compute_features(pixels)[None], 5, axis=0)
    assert models.policy(features).shape == (5, P)
    ssim, log_bytes = models.predictor(features, np.random.default_rng(0).random((5, P), dtype=np.float32))
    assert ssim.shape == (5,) and log_bytes.shape == (5,)


def test_missing_model_is_an_error_and_auto_degrades():
    pixels = np.full((32, 32, 3), 255, dtype=np.uint8)
    with pytest.raises(ValueError, match="tier2"):
        choose(pixels, "tier2")
    assert choose(pixels, "auto").params == DEFAULTS


def test_pick_prefers_smallest_that_keeps_quality():
    ssim = np.asarray([0.95, 0.96, 0.99, 0.90])
    log_bytes = np.asarray([8.0, 7.0, 7.5, 5.0])
    assert pick(ssim, log_bytes, margin=0.0) == 1
    assert pick(ssim, log_bytes, margin=0.02) == 2
    assert pick(ssim, log_bytes, margin=0.1) == 2  # none qualifies: highest SSIM
    # with a reference (tier 1's answer) only candidates rated better than it may replace it
    assert pick(ssim, log_bytes, margin=0.0, reference=1) == 1
    assert pick(ssim, log_bytes, margin=0.0, reference=2) == 2
    assert pick(np.asarray([0.95, 0.96, 0.99, 0.97]), log_bytes, margin=0.0, reference=1) == 3


def test_export_parity_failure_raises(tmp_path):
    import torch

    class Drift(torch.nn.Module):
        def forward(self, features):
            # random output: ONNX and PyTorch disagree
            return torch.rand(features.shape[0], P) + features[:, :1] * 0

    with pytest.raises(ParityError):
        export_onnx(Drift(), POLICY, tmp_path / "drift.onnx")


def test_triton_configs_round_trip(tmp_path):
    for spec in SPECS:
        config = read_model_config(write_model_config(spec, tmp_path))
        assert config.max_batch_size == spec.max_batch_size > 0 and config.HasField("dynamic_batching")
        assert [tuple(i.dims) for i in config.input] == [t.dims for t in spec.inputs]
    assert QUALITY.input("features").dims == (F,) and QUALITY.input("params").dims == (P,)


@pytest.mark.skipif(not (TRAINED_DIR / "tier1.json").exists(), reason="no committed models")
def test_committed_models_load_and_answer():
    models = Models.load(TRAINED_DIR)
    assert models.mapping is not None and models.predictor is not None and models.policy is not None
    image = sorted(TRAIN.glob("*.png"))[0] if TRAIN.exists() else None
    pixels = load_image(image) if image else np.full((64, 64, 3), 255, np.uint8)
    for tier in TIERS:
        assert isinstance(choose(pixels, tier, models.mapping, models.predictor, models.policy).params, VtracerParams)
    total = sum(p.stat().st_size for p in TRAINED_DIR.iterdir())
    assert total < 5 * 1024 * 1024


def test_evaluate_folder_and_plot(trained, tmp_path):
    from serve.vectorize.evaluate import METHODS, evaluate_folder, format_table
    from serve.vectorize.plot import plot_quality_vs_size

    out, _, data = trained
    result = evaluate_folder(data, size=64, random_search=3, limit=2, processes=1, models_dir=out)
    rows = {r["method"]: r for r in result["summary"]}
    assert list(rows) == list(METHODS)
    assert rows["defaults"]["bytes_ratio"] == 1.0 and all(r["images"] == 2 for r in rows.values())
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


def test_tier2_falls_back_to_tier1_outside_training_radius():
    from serve.vectorize.params import PRESETS, to_vector
    from serve.vectorize.tiers import Tier1Map, tier2

    mapping = Tier1Map(
        mean=np.zeros(F, np.float32),
        std=np.ones(F, np.float32),
        centroids=np.zeros((1, F), np.float32),
        params=to_vector(PRESETS["photo"])[None],
        radius=np.asarray([0.5], np.float32),
    )

    def predictor(features, params):  # rates the defaults (row 0) best and smallest
        ssim = np.full(len(params), 0.5, np.float32)
        ssim[0] = 0.99
        return ssim, np.where(np.arange(len(params)) == 0, 1.0, 9.0).astype(np.float32)

    near, far = np.zeros(F, np.float32), np.full(F, 3.0, np.float32)
    assert mapping.familiar(near) and not mapping.familiar(far)
    assert tier2(near, predictor, mapping, margin=0.0).params == DEFAULTS
    assert tier2(far, predictor, mapping, margin=0.0).params == PRESETS["photo"]
    assert Tier1Map.from_json(mapping.to_json()).radius.tolist() == [0.5]
