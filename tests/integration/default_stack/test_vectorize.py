"""Vectorize through a real Triton (features -> quality/policy ensemble) and a real Ray Serve app, over HTTP."""

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from serve.paths import ICONS_DEV
from serve.vectorize.schema import MAX_UPLOAD_BYTES
from serve.vectorize.spec import ENSEMBLE
from tests.images import dev_icon_png, encode, png_header_only
from tests.integration.conftest import triton_killed

pytestmark = pytest.mark.integration

VECTORIZE = "/v1/vectorize"
TIER1_STOOD_IN = {"policy_unsure", "tier1_after_check"}  # tier 1's answer served for a tier 2 or 3 request
JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def icon() -> bytes:
    return dev_icon_png(ICONS_DEV / "val")


def test_multipart_upload_returns_svg(api, icon):
    response = api.post(VECTORIZE, files={"file": ("icon.png", icon, "image/png")})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert "<svg" in response.text and "<path" in response.text
    assert response.headers["Easel-Tier"] in {"1", "2", "default"}  # auto: tier 1 or 2, or the defaults if better


@pytest.mark.parametrize("tier", ["1", "2", "3", "auto", "default"])
def test_every_tier_answers_with_json_details(api, icon, tier):
    response = api.post(
        VECTORIZE,
        files={"file": ("icon.png", icon, "image/png")},
        data={"tier": tier, "validate": "true"},
        headers=JSON,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["requested_tier"] == tier
    # quality first: the tier answers, or the defaults do when the check found them better (and says so)
    if body["tier"] == "default" and tier != "default":
        assert body["why"] == "below_defaults" and body["checked"] and body["fallback"]
    elif body["why"] in TIER1_STOOD_IN:  # tier 1's answer in place of tier 2 or 3's pick (and says why)
        assert tier in {"2", "3", "auto"} and body["tier"] == "1" and body["fallback"] is None
        assert body["why"] != "policy_unsure" or tier == "3"
    else:
        assert body["fallback"] is None and body["why"] in {"asked", "auto", "unfamiliar"}
        assert body["tier"] == tier if tier in {"1", "2", "3", "default"} else body["tier"] in {"1", "2"}
    assert 0.5 < body["ssim"] <= 1.0 and body["bytes"] == len(body["svg"].encode()) and body["paths"] > 0
    assert {"decode", "convert", "validate", "total"} <= set(body["timings_ms"])
    assert body["parameters"]["path_precision"] >= 0
    if tier == "2":  # no prediction when the image is unlike the training icons (tier 1's answer stands)
        assert body["predicted_quality"] is None or 0 < body["predicted_quality"] <= 1.1


def test_json_body_with_base64(api, icon):
    response = api.post(VECTORIZE, json={"image": base64.b64encode(icon).decode(), "tier": "3"}, headers=JSON)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["requested_tier"] == "3" and (body["tier"] == "3" or body["why"] in TIER1_STOOD_IN)


def test_raw_image_body_with_query_options(api, icon):
    response = api.post(f"{VECTORIZE}?tier=1", content=icon, headers={"Content-Type": "image/png", **JSON})
    assert response.status_code == 200, response.text
    assert response.json()["tier"] == "1"


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (64, 64), (255, 0, 0, 0)),
        Image.new("P", (64, 64), 3),
        Image.new("I;16", (64, 64), 40000),
        Image.new("LA", (64, 64), (10, 128)),
    ],
    ids=["rgba", "palette", "16bit", "grey-alpha"],
)
def test_modes_are_converted(api, image):
    response = api.post(VECTORIZE, files={"file": ("x.png", encode(image), "image/png")}, headers=JSON)
    assert response.status_code == 200, response.text


def test_cmyk_jpeg_and_animated_gif_first_frame(api):
    cmyk = encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG")
    assert api.post(VECTORIZE, files={"file": ("x.jpg", cmyk, "image/jpeg")}).status_code == 200
    frames = [Image.new("P", (48, 48), i) for i in (1, 2, 3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    assert api.post(VECTORIZE, files={"file": ("x.gif", gif.getvalue(), "image/gif")}).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "status", "field"),
    [
        ({"files": {"file": ("x.png", b"definitely not an image", "image/png")}}, 400, "image"),
        ({"files": {"file": ("x.png", b"", "image/png")}}, 400, "image"),
        ({"files": {"file": ("x.png", png_header_only(5000, 10), "image/png")}}, 413, "image"),
        ({"files": {"file": ("x.png", png_header_only(4096, 4096), "image/png")}}, 413, "image"),
        ({"files": {"file": ("x.png", png_header_only(0, 10), "image/png")}}, 400, "image"),
        ({"files": {"other": ("x.png", b"123", "image/png")}}, 400, "file"),
        ({"json": {"image": "not base64!!"}}, 400, "image"),
        ({"json": {"image": "\u00f3\uac7b=="}}, 400, "image"),
        ({"json": {"image": "aGVsbG8=", "tier": "7"}}, 400, "tier"),
        ({"json": {"image": "aGVsbG8=", "time_budget_ms": -5}}, 400, "time_budget_ms"),
        ({"json": {"image": "aGVsbG8=", "target_quality": 2}}, 400, "target_quality"),
        ({"content": b"abc", "headers": {"Content-Type": "text/plain"}}, 400, "Content-Type"),
        ({"content": b"\0" * (MAX_UPLOAD_BYTES + 1), "headers": {"Content-Type": "image/png"}}, 413, "body"),
        ({"files": [("file", (f"{n}.png", b"123", "image/png")) for n in range(3)]}, 400, "file"),
    ],
    ids=[
        "not-image",
        "zero-bytes",
        "side-over-4096",
        "over-16mp",
        "zero-size",
        "no-file-part",
        "bad-base64",
        "non-ascii-base64",
        "unknown-tier",
        "negative-budget",
        "target-over-1",
        "wrong-content-type",
        "body-over-limit",
        "three-files",
    ],
)
def test_bad_uploads_are_4xx_naming_the_field(api, kwargs, status, field):
    response = api.post(VECTORIZE, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == field
    assert " object at 0x" not in response.json()["error"]["message"]  # no Python reprs


def test_truncated_png_is_a_400_and_the_server_keeps_serving(api, icon):
    response = api.post(VECTORIZE, files={"file": ("x.png", icon[: len(icon) // 2], "image/png")})
    assert response.status_code == 400 and response.json()["error"]["param"] == "image"
    assert api.post(VECTORIZE, files={"file": ("icon.png", icon, "image/png")}).status_code == 200


def test_ensemble_is_ready_and_callable_over_grpc(api, stack, icon):
    import tritonclient.grpc as grpcclient

    assert api.get("/readyz").json()["models"][ENSEMBLE.name] is True
    pixels = np.asarray(Image.open(io.BytesIO(icon)).convert("RGB"))
    tensor = grpcclient.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = grpcclient.InferenceServerClient(stack.info.triton_grpc_url).infer(ENSEMBLE.name, [tensor])
    assert result.as_numpy("ssim").shape[0] == result.as_numpy("candidates").shape[0] > 1


def test_falls_back_to_vtracer_defaults_with_triton_stopped(api, stack, icon):
    with triton_killed(stack):
        response = api.post(
            VECTORIZE, files={"file": ("icon.png", icon, "image/png")}, data={"tier": "2"}, headers=JSON
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["tier"] == "default" and "unavailable" in body["fallback"]
        assert response.headers["Easel-Fallback"] == "models_unavailable"
        assert body["parameters"]["path_precision"] == 2 and body["parameters"]["filter_speckle"] == 4
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the Vectorizer's own channel must have reconnected, not just Triton
        ready = api.get("/readyz")
        if ready.status_code == 200 and ready.json()["models"].get(ENSEMBLE.name):
            break
        time.sleep(0.5)
    # Each Vectorizer replica has its own channel, which retries within a second (TritonClient's reconnect backoff):
    # a request may still fall back meanwhile, but four in a row (both replicas, most likely) must be answered by the
    # models again: tier 2, or the defaults when tier 2's check found them better (never "models_unavailable").
    served = ("asked", "unfamiliar", "below_defaults", "tier1_after_check")
    whys: list[str] = []
    while time.monotonic() < deadline + 10 and not (len(whys) >= 4 and all(why in served for why in whys[-4:])):
        again = api.post(VECTORIZE, files={"file": ("icon.png", icon, "image/png")}, data={"tier": "2"}, headers=JSON)
        whys.append(again.json()["why"])
    assert len(whys) >= 4 and all(why in served for why in whys[-4:]), whys


ANALYZE = "/v1/vectorize/analyze"


def _val_icons(count: int) -> list[bytes]:
    """The first ``count`` validation icons of the shared set (a flat random icon where it is absent)."""
    icons = sorted((ICONS_DEV / "val").glob("*.png"))[:count] if (ICONS_DEV / "val").exists() else []
    return [path.read_bytes() for path in icons] or [encode(Image.new("RGB", (96, 96), "white"))]


@pytest.mark.parametrize("prefer", ["size", "quality"])
def test_analyze_s_class_and_tier_are_what_vectorize_then_reports(api, prefer):
    for icon in _val_icons(6):
        upload = {"file": ("icon.png", icon, "image/png")}
        analyzed = api.post(ANALYZE, files=upload, data={"prefer": prefer})
        assert analyzed.status_code == 200, analyzed.text
        found = analyzed.json()
        assert "svg" not in found and analyzed.headers["Easel-Tier"] == found["tier"]
        assert set(found["predicted"]) == {"1", "2", "3", "default"} and 0.5 <= found["class_confidence"] <= 1
        served = api.post(VECTORIZE, files=upload, data={"prefer": prefer}, headers=JSON).json()
        assert served["image_class"] == found["image_class"]
        assert served["checked"] == found["check"]
        if served["why"] not in {"below_defaults", "tier1_after_check"}:  # a check may replace the choice
            assert served["tier"] == found["tier"] and served["parameters"] == found["parameters"]


def test_analyze_refuses_what_vectorize_refuses(api):
    response = api.post(ANALYZE, files={"file": ("x.png", b"not an image", "image/png")})
    assert response.status_code == 400 and response.json()["error"]["param"] == "image"
    assert api.post(ANALYZE, content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 400
