"""The answers' shapes the route examples share (:mod:`serve.contract.examples`): a model, a job, a kept image...

Copied from a stack on the embedded default (ids, times and base64 shortened).
"""

PNG = "iVBORw0KGgo..."
MODEL = {"id": "easel-default", "object": "model", "created": 1795707696, "owned_by": "easel", "family": "sd"}
MODEL |= {"native_size": "64x64", "loaded": True, "loras": False, "ip_adapter": False, "ip_adapters": []}
MODEL |= {"ip_adapter_kinds": {}}
MODEL |= {"controlnets": [], "takes_images": True, "version": 1, "circuit": "closed", "fallback": []}
FACE = {"box": [159.2, 78.82, 256.29, 176.9], "score": 0.865, "embedding": [-0.0151, -0.0598, 0.0122, "..."]}
FACE |= {"landmarks": [[191.85, 115.32], [224.2, 114.96], [207.74, 129.79], [195.63, 143.73], [221.0, 144.28]]}
IMAGES = {
    "created": 1795709100,
    "seed": 0,
    "data": [{"id": "img_59b70a8550e819ebf3a0789b", "b64_json": PNG}],
    "model": "easel-default",
    "experiment": None,
}
JOB = {
    "id": "job_013723972e827da58356432d",
    "object": "image.generation.job",
    "status": "succeeded",
    "priority": "normal",
    "progress": {"step": 20, "total": 20, "stage": "denoise"},
    "created_at": 1795709101.05,
    "started_at": 1795709101.05,
    "finished_at": 1795709101.74,
    "cancel_requested": False,
    "created": 1795709101,
    "seed": 1,
    "data": [{"id": "img_90567f6aeb4c49a748a1b59a", "b64_json": PNG}],
    "model": "easel-default",
    "experiment": None,
}
LORA = {
    "id": "ink",
    "object": "lora",
    "name": "ink",
    "status": "ready",
    "rank": 4,
    "bytes": 301872,
    "layers": {"unet": 32, "text_encoder": 12},
    "model": "easel-default",
    "source": "upload",
    "sha256": "5be1...",
    "created_at": 1795709200.0,
}
CHARACTER = {"object": "character", "name": "ada", "model": "easel-default", "images": 2}
CHARACTER |= {"references": ["ref_5d0a...", "ref_77c1..."], "lora": {"name": "ink", "scale": 0.8}}
CHARACTER |= {"trigger_words": "ada woman", "visibility": "private", "note": "", "face": True, "created_at": 1795709300}
REFERENCE = {"id": "ref_2f1c...", "object": "reference", "model": "easel-default"}
REFERENCE |= {"created_at": 1795709300, "name": "ada"}
VIDEO = {
    "id": "job_7d0e...",
    "object": "video",
    "status": "queued",
    "progress": 0,
    "model": "easel-default",
    "seconds": "2",
    "size": "64x64",
    "created_at": 1795709400,
    "completed_at": None,
    "frames": 16,
    "fps": 8,
    "seed": 1,
}
EXPERIMENT = {
    "object": "experiment",
    "id": "logo-v",
    "policy": "split",
    "reward": "feedback",
    "mode": "pooled",
    "variants": {"easel-default": 1.0},
    "posteriors": {"easel-default": {"alpha": 1.0, "beta": 1.0, "mean": 0.5, "feedback": 0}},
}
PREFERENCES = {
    "object": "user.preferences",
    "user": "ann",
    "owner": "4f1c9a2b7d3e",
    "by": "experiment",
    "experiment": "art",
    "preferred": "sd-v2",
    "variants": {
        "sd-v1": {"alpha": 1.0, "beta": 3.0, "mean": 0.25, "feedback": 2},
        "sd-v2": {"alpha": 5.0, "beta": 1.0, "mean": 0.833, "feedback": 4},
    },
}
TASTE = {
    "object": "user.preferences",
    "user": "ann",
    "owner": "4f1c9a2b7d3e",
    "by": "lora",
    "experiment": None,
    "preferred": "ink-wash",
    "variants": {"ink-wash": {"alpha": 4.0, "beta": 1.0, "mean": 0.8, "feedback": 3}},
}
VERSION = {"version": 1, "current": True, "triton_model": "vectorize", "trained_dir": "build_engines/vectorize/trained"}
VECTORIZE_PARAMETERS = {"colormode": "color", "mode": "polygon", "filter_speckle": 4, "path_precision": 1}
IMAGE_ID = "img_59b70a8550e819ebf3a0789b"
SIGNED = f"http://127.0.0.1:8000/v1/images/{IMAGE_ID}/content?expires=1795712700&signature=Zk3..."
KEPT = {
    "id": IMAGE_ID,
    "object": "image",
    "created_at": 1795709100.4,
    "media_type": "image/png",
    "bytes": 6571,
    "record": {
        "prompt": "a red heart icon",
        "negative_prompt": "",
        "model": "easel-default",
        "model_version": 1,
        "sampler": "ddim",
        "steps": 20,
        "guidance_scale": 7.5,
        "seed": 0,
        "size": "64x64",
        "n": 1,
        "index": 0,
        "easel_version": "0.1.0",
    },
    "url": SIGNED,
}
