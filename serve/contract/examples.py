"""One request and its answer per route, added to the OpenAPI document (``x-easel-example``; docs/API.md shows them).

Answers copied from a stack on the embedded default (ids, times and base64 shortened). The unit tests hold every
route to having both and every JSON request to its body's schema; the answers themselves are not compared with a
running stack's (the guides' runnable blocks are).
"""

from __future__ import annotations

from typing import Any

from serve.contract.answers import (
    CHARACTER,
    EXPERIMENT,
    FACE,
    IMAGE_ID,
    IMAGES,
    JOB,
    KEPT,
    LORA,
    MODEL,
    PNG,
    PREFERENCES,
    REFERENCE,
    SIGNED,
    TASTE,
    VECTORIZE_PARAMETERS,
    VERSION,
    VIDEO,
)


def _json(line: str, body: str) -> str:
    return f"{line}\nContent-Type: application/json\n\n{body}"


AUDIT_ENTRY = {"id": "audit_18a2b3c4d5e6f7a8ab12", "created_at": 1795709100.123, "key_id": "4f1c9a2b7d3e"}
AUDIT_ENTRY |= {"key_name": "ops", "action": "PUT /v1/models/{model_id}/fallback", "path": "/v1/models/m/fallback"}
AUDIT_PAGE = {"object": "list", "data": [AUDIT_ENTRY | {"status": 200, "outcome": "ok", "via": "http", "detail": None}]}
CHARACTER_BODY = (
    '{"name": "ada", "images": ["iVBORw0KGgoAAAANSUhEUgAA", "iVBORw0KGgoAAAANSUhEUgAA"], "trigger_words": "ada woman", '
    '"lora": {"name": "ink", "scale": 0.8}}'
)
EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/healthz"): {"request": "GET /healthz", "answer": {"status": "ok"}},
    ("get", "/readyz"): {
        "request": "GET /readyz",
        "answer": {"status": "ready", "models": {"text_encoder": True, "unet": True, "vae_decoder": True}},
    },
    ("post", "/v1/images/generations"): {
        "request": _json("POST /v1/images/generations", '{"prompt": "a red heart icon", "size": "64x64", "seed": 0}'),
        "answer": IMAGES,
    },
    ("post", "/v1/images/edits"): {
        "request": "POST /v1/images/edits\nContent-Type: multipart/form-data\n\n"
        "image=@heart.png  prompt=a blue heart icon  strength=0.6  seed=7",
        "answer": IMAGES | {"seed": 7},
    },
    ("get", "/v1/images"): {
        "request": "GET /v1/images?limit=1",
        "answer": {"object": "list", "data": [KEPT], "has_more": True},
    },
    ("post", "/v1/images/rerun"): {
        "request": _json("POST /v1/images/rerun", f'{{"image_id": "{IMAGE_ID}", "response_format": "url"}}'),
        "answer": IMAGES
        | {"data": [{"id": "img_0c6f3be1d2a94e8f7b5d1c20", "url": SIGNED}], "rerun_of": IMAGE_ID, "changed": []},
    },
    ("get", "/v1/images/{image_id}"): {
        "request": f"GET /v1/images/{IMAGE_ID}",
        "answer": "200, image/png: the PNG as answered (its parameters and easel chunks hold the record)",
    },
    ("delete", "/v1/images/{image_id}"): {
        "request": f"DELETE /v1/images/{IMAGE_ID}",
        "answer": {"id": IMAGE_ID, "object": "image", "deleted": True},
    },
    ("get", "/v1/images/{image_id}/content"): {
        "request": f"GET /v1/images/{IMAGE_ID}/content?expires=1795712700&signature=Zk3...",
        "answer": "200, image/png: the image, no key needed until expires (403 after, or with another signature)",
    },
    ("post", "/v1/videos"): {
        "request": _json("POST /v1/videos", '{"prompt": "a red fox running", "frames": 16, "fps": 8, "seed": 1}'),
        "answer": VIDEO,
    },
    ("post", "/v1/videos/{video_id}/interpolate"): {
        "request": _json("POST /v1/videos/job_7d0e.../interpolate", '{"factor": 4, "interpolator": "rife"}'),
        "answer": VIDEO | {"id": "job_9a41...", "seconds": "1.90625", "frames": 61, "fps": 32},
    },
    ("get", "/v1/videos/{video_id}"): {"request": "GET /v1/videos/job_7d0e...", "answer": VIDEO | {"progress": 40}},
    ("get", "/v1/videos/{video_id}/content"): {
        "request": "GET /v1/videos/job_7d0e.../content",
        "answer": "(the MP4's bytes, video/mp4; ?variant=frames: the PNG frames in a zip)",
    },
    ("delete", "/v1/videos/{video_id}"): {
        "request": "DELETE /v1/videos/job_7d0e...",
        "answer": VIDEO | {"status": "failed", "error": {"code": "canceled", "message": "canceled"}},
    },
    ("get", "/v1/loras"): {"request": "GET /v1/loras", "answer": {"object": "list", "data": [LORA]}},
    ("post", "/v1/loras"): {
        "request": "POST /v1/loras\nContent-Type: multipart/form-data\n\nname=ink  file=@ink.safetensors",
        "answer": LORA,
    },
    ("put", "/v1/loras/{name}"): {
        "request": "PUT /v1/loras/ink\nContent-Type: multipart/form-data\n\nfile=@ink-v2.safetensors",
        "answer": LORA | {"sha256": "9ac0..."},
    },
    ("delete", "/v1/loras/{name}"): {
        "request": "DELETE /v1/loras/ink",
        "answer": {"id": "ink", "object": "lora", "deleted": True},
    },
    ("post", "/v1/references"): {
        "request": _json("POST /v1/references", '{"image": "iVBORw0KGgoAAAANSUhEUgAA", "name": "ada"}'),
        "answer": REFERENCE,
    },
    ("get", "/v1/references"): {"request": "GET /v1/references", "answer": {"object": "list", "data": [REFERENCE]}},
    ("get", "/v1/references/{reference_id}"): {"request": "GET /v1/references/ref_2f1c...", "answer": REFERENCE},
    ("delete", "/v1/references/{reference_id}"): {
        "request": "DELETE /v1/references/ref_2f1c...",
        "answer": {"id": "ref_2f1c...", "object": "reference", "deleted": True},
    },
    ("post", "/v1/characters"): {"request": _json("POST /v1/characters", CHARACTER_BODY), "answer": CHARACTER},
    ("get", "/v1/characters"): {"request": "GET /v1/characters", "answer": {"object": "list", "data": [CHARACTER]}},
    ("get", "/v1/characters/{name}"): {"request": "GET /v1/characters/ada", "answer": CHARACTER},
    ("put", "/v1/characters/{name}"): {"request": _json("PUT /v1/characters/ada", CHARACTER_BODY), "answer": CHARACTER},
    ("delete", "/v1/characters/{name}"): {
        "request": "DELETE /v1/characters/ada",
        "answer": {"object": "character", "name": "ada", "deleted": True},
    },
    ("get", "/v1/controlnets"): {"request": "GET /v1/controlnets", "answer": {"object": "list", "data": []}},
    ("get", "/v1/upscalers"): {
        "request": "GET /v1/upscalers",
        "answer": {"object": "list", "data": [], "face_restorers": [], "interpolators": [], "faces": []},
    },
    ("post", "/v1/images/upscale"): {
        "request": "POST /v1/images/upscale\nContent-Type: multipart/form-data\n\n"
        "image=@icon.png  upscaler=x4  scale=2",
        "answer": {"created": 1795709500, "data": [{"b64_json": PNG}], "upscaler": "x4", "scale": 2, "size": "128x128"},
    },
    ("get", "/v1/models"): {"request": "GET /v1/models", "answer": {"object": "list", "data": [MODEL]}},
    ("post", "/v1/models"): {
        "request": _json("POST /v1/models", '{"name": "xl", "engine_dir": "/srv/easel/engines/4be1...-auto-fp32"}'),
        "answer": MODEL | {"id": "xl", "family": "sdxl", "native_size": "1024x1024"},
    },
    ("get", "/v1/models/{model_id}"): {"request": "GET /v1/models/easel-default", "answer": MODEL},
    ("put", "/v1/models/{model_id}"): {
        "request": _json("PUT /v1/models/xl", '{"engine_dir": "/srv/easel/engines/77c2...-auto-fp32"}'),
        "answer": MODEL | {"id": "xl", "family": "sdxl", "native_size": "1024x1024", "version": 2},
    },
    ("put", "/v1/models/{model_id}/fallback"): {
        "request": _json("PUT /v1/models/easel-default/fallback", '{"chain": ["sd15", "hosted"]}'),
        "answer": MODEL | {"fallback": ["sd15", "hosted"]},
    },
    ("delete", "/v1/models/{model_id}"): {
        "request": "DELETE /v1/models/xl",
        "answer": {"object": "model", "id": "xl", "deleted": True, "version": 2},
    },
    ("get", "/v1/jobs"): {
        "request": "GET /v1/jobs?status=succeeded&limit=1",
        "answer": {"object": "list", "data": [JOB], "has_more": False, "first_id": JOB["id"], "last_id": JOB["id"]},
    },
    ("get", "/v1/jobs/{job_id}"): {"request": "GET /v1/jobs/job_013723972e827da58356432d", "answer": JOB},
    ("post", "/v1/jobs/{job_id}/cancel"): {
        "request": "POST /v1/jobs/job_013723972e827da58356432d/cancel",
        "answer": {key: JOB[key] for key in ("id", "object", "priority", "created_at")}
        | {"status": "canceled", "progress": {"step": 3, "total": 20, "stage": "denoise"}, "cancel_requested": True},
    },
    ("get", "/v1/jobs/{job_id}/events"): {
        "request": "GET /v1/jobs/job_013723972e827da58356432d/events",
        "answer": 'event: state\ndata: {"id": "job_0137...", "status": "running", ...}\n\n'
        'event: progress\ndata: {"step": 1, "total": 20}\n\n...\n\n'
        'event: completed\ndata: {"id": "job_0137...", "status": "succeeded", "data": [...]}',
    },
    ("post", "/v1/vectorize"): {
        "request": "POST /v1/vectorize\nAccept: application/json\nContent-Type: multipart/form-data\n\nfile=@heart.png",
        "answer": {
            "svg": '<?xml version="1.0" encoding="UTF-8"?>\n<svg ...',
            "tier": "2",
            "requested_tier": "auto",
            "why": "unfamiliar",
            "image_class": "gradient",
            "parameters": VECTORIZE_PARAMETERS,
            "predicted_quality": 0.953,
            "ssim": 0.928,
            "checked": True,
            "bytes": 583,
            "paths": 3,
            "fallback": None,
            "model_version": 1,
            "timings_ms": {"decode": 0.76, "models": 7.86, "convert": 7.76, "check": 6.49, "total": 48.73},
            "id": None,
            "experiment": None,
        },
    },
    ("post", "/v1/vectorize/analyze"): {
        "request": "POST /v1/vectorize/analyze\nContent-Type: multipart/form-data\n\nfile=@heart.png",
        "answer": {
            "features": {"edge_density": 0.072, "unique_colors": 0.476, "white_fraction": 0.645, "aspect": 1.0},
            "image_class": "gradient",
            "class_confidence": 0.9996,
            "familiar": False,
            "requested_tier": "auto",
            "tier": "2",
            "why": "unfamiliar",
            "parameters": VECTORIZE_PARAMETERS,
            "check": True,
            "predicted": {"default": {"tier": "default", "ssim": 0.961, "bytes": 10270}},
            "model_version": 1,
        },
    },
    ("get", "/v1/vectorize/models"): {
        "request": "GET /v1/vectorize/models",
        "answer": {"object": "list", "data": [VERSION]},
    },
    ("post", "/v1/vectorize/models"): {
        "request": _json("POST /v1/vectorize/models", '{"trained_dir": "/srv/easel/trained-v2"}'),
        "answer": {"object": "vectorize.model"}
        | VERSION
        | {"version": 2, "current": False, "triton_model": "vectorize.v2"},
    },
    ("put", "/v1/vectorize/models"): {
        "request": _json("PUT /v1/vectorize/models", '{"version": 1}'),
        "answer": {"object": "vectorize.model"} | VERSION,
    },
    ("delete", "/v1/vectorize/models/{version}"): {
        "request": "DELETE /v1/vectorize/models/2",
        "answer": {"object": "vectorize.model", "version": 2, "deleted": True},
    },
    ("post", "/v1/moderations"): {
        "request": _json("POST /v1/moderations", '{"input": "a red heart icon"}'),
        "answer": {
            "id": "modr-f1a79ccc89c64c76fe3259ea",
            "model": "easel-moderation",
            "results": [{"flagged": False, "categories": {}, "category_scores": {}}],
        },
    },
    ("post", "/v1/prompts/analyze"): {
        "request": _json("POST /v1/prompts/analyze", '{"prompt": "a (red:1.5) [heart]", "negative_prompt": "blurry"}'),
        "answer": {
            "model": "easel-default",
            "family": "sd",
            "encoders": {"text_encoder": {"chunk_tokens": 14, "max_chunks": 16}},
            "prompt": {
                "weights": [
                    {"text": "a ", "weight": 1.0},
                    {"text": "red", "weight": 1.5},
                    {"text": " ", "weight": 1.0},
                    {"text": "heart", "weight": 0.909091},
                ],
                "encoders": {"text_encoder": {"tokens": 5, "chunks": 1, "truncated": 0}},
            },
            "negative_prompt": {
                "weights": [{"text": "blurry", "weight": 1.0}],
                "encoders": {"text_encoder": {"tokens": 4, "chunks": 1, "truncated": 0}},
            },
            "truncated": 0,
            "moderation": {
                "flagged": False,
                "categories": {},
                "category_scores": {},
                "policy": "off",
                "refused": False,
            },
        },
    },
    ("post", "/v1/images/score"): {
        "request": _json("POST /v1/images/score", f'{{"images": ["{PNG}"], "prompt": "a red heart icon"}}'),
        "answer": {"object": "list", "data": [{"index": 0, "clip_score": 0.21, "aesthetic": 5.3}]},
    },
    ("post", "/v1/faces/analyze"): {
        "request": _json("POST /v1/faces/analyze", f'{{"image": "{PNG}", "max_faces": 4}}'),
        "answer": {"object": "list", "model": "buffalo_l", "size": "320x240", "data": [FACE]},
    },
    ("post", "/v1/feedback"): {
        "request": _json("POST /v1/feedback", '{"image_id": "img_59b70a8550e819ebf3a0789b", "rating": 5}'),
        "answer": {
            "object": "feedback",
            "id": "img_59b70a8550e819ebf3a0789b",
            "reward": 1.0,
            "model": "easel-default",
            "experiment": None,
        },
    },
    ("get", "/v1/experiments"): {"request": "GET /v1/experiments", "answer": {"object": "list", "data": [EXPERIMENT]}},
    ("get", "/v1/experiments/{name}"): {"request": "GET /v1/experiments/logo-v", "answer": EXPERIMENT},
    ("put", "/v1/experiments/{name}"): {
        "request": _json("PUT /v1/experiments/logo-v", '{"variants": {"easel-default": 1.0}}'),
        "answer": EXPERIMENT,
    },
    ("delete", "/v1/experiments/{name}"): {
        "request": "DELETE /v1/experiments/logo-v",
        "answer": {"object": "experiment", "id": "logo-v", "deleted": True},
    },
    ("get", "/v1/users/{user}/preferences"): {
        "request": "GET /v1/users/ann/preferences",
        "answer": {"object": "list", "user": "ann", "data": [PREFERENCES, TASTE]},
    },
    ("delete", "/v1/users/{user}/preferences"): {
        "request": "DELETE /v1/users/ann/preferences",
        "answer": {"object": "user.preferences", "user": "ann", "owner": "4f1c9a2b7d3e", "deleted": 2},
    },
    ("get", "/v1/audit"): {"request": "GET /v1/audit?limit=1", "answer": AUDIT_PAGE | {"has_more": True}},
}
"""(method, path) -> its example: ``request`` as HTTP (a line, headers, a body), ``answer`` its 200's body."""


def add_examples(document: dict) -> None:
    """Put each route's example in the ``document`` (``x-easel-example``), changed in place."""
    for (method, path), example in EXAMPLES.items():
        document["paths"][path][method]["x-easel-example"] = example
