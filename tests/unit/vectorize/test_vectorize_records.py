"""Recorded vectorize answers: sampled, bounded in the SQLite store, exported as the training folder and rows."""

import io
import json
import random
from types import SimpleNamespace

import numpy as np
from PIL import Image

from serve.vectorize.features import FEATURE_NAMES, F
from serve.vectorize.recording import Recording
from serve.vectorize.records import IMAGES_FOLDER, RECORDS_FILE, Record, SqliteRecordStore, export, open_record_store
from tests.images import icon_pixels


def _result(version: int = 2, predicted: float | None = 0.9, ssim: float = 0.93):
    return SimpleNamespace(
        model_version=version,
        tier="2",
        image_class="simple",
        parameters={"mode": "spline"},
        predicted_quality=predicted,
        ssim=ssim,
        bytes=1234,
    )


def test_the_store_keeps_the_newest_rows_only(tmp_path):
    store = SqliteRecordStore(f"sqlite:///{tmp_path / 'easel.db'}", max_rows=5)
    for number in range(8):
        store.add(Record(float(number), 1, "1", None, {}, {}, None, 0.5, number))
    assert [record.bytes for record in store.rows()] == [3, 4, 5, 6, 7]


def test_a_sampled_share_is_recorded_with_its_image_and_exported_for_training(tmp_path):
    url = f"sqlite:///{tmp_path / 'easel.db'}"
    recording = Recording(rate=0.5, images=True, store_url=url, rng=random.Random(1))
    assert 70 < sum(recording.sampled() for _ in range(200)) < 130
    pixels = icon_pixels(64)
    scores = SimpleNamespace(features=np.arange(F, dtype=np.float32) / F)
    for _ in range(3):
        recording.keep(_result(), pixels, scores)
    recording.keep(_result(predicted=None), pixels, None)  # the defaults answered: no prediction, no features
    counts = export(open_record_store(url), tmp_path / "out")
    assert counts["rows"] == 4 and counts["images"] == 4
    rows = [json.loads(line) for line in (tmp_path / "out" / RECORDS_FILE).read_text().splitlines()]
    assert rows[0]["predicted_ssim"] == 0.9 and rows[0]["ssim"] == 0.93 and rows[0]["model_version"] == 2
    assert list(rows[0]["features"]) == list(FEATURE_NAMES) and rows[3]["features"] == {}
    image = Image.open(io.BytesIO((tmp_path / "out" / rows[0]["image"]).read_bytes()))
    assert np.array_equal(np.asarray(image), pixels) and rows[0]["image"].startswith(f"{IMAGES_FOLDER}/")


def test_without_the_operator_s_opt_in_no_image_is_kept(tmp_path):
    url = f"sqlite:///{tmp_path / 'easel.db'}"
    Recording(rate=1.0, store_url=url).keep(_result(), icon_pixels(32), None)
    assert [record.image_png for record in open_record_store(url).rows()] == [None]
    assert not Recording(rate=0.0, store_url=url).sampled() and not Recording(rate=1.0).sampled()


def test_the_predictor_s_error_is_measured_minus_predicted():
    assert abs(Record(0, 1, "1", None, {}, {}, 0.9, 0.85, 1).error + 0.05) < 1e-9
    assert Record(0, 1, "default", None, {}, {}, None, 0.85, 1).error is None
