"""Bad generation requests and the field each refusal names: one table, sent over HTTP and through gRPC."""

import base64

from serve.grpc_api import easel_pb2

BAD_GENERATIONS = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x", "n": 99}, "n"),
    ({"prompt": "x", "size": "100x100"}, "size"),
    ({"prompt": "x", "size": "4096x4096"}, "size"),
    ({"prompt": "x", "size": "0064x0064"}, "size"),  # sizes are canonical digits
    ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
    ({"prompt": "x", "num_inference_steps": 10_000}, "num_inference_steps"),
    ({"prompt": "x", "guidance_scale": -2}, "guidance_scale"),
    ({"prompt": "x", "scheduler": "nope"}, "scheduler"),
    ({"prompt": "x", "model": "no-such-model"}, "model"),
    ({"prompt": "x", "model": "m" * 65}, "model"),
    ({"prompt": "x", "scheduler": "lcm", "num_inference_steps": 51}, "num_inference_steps"),
    ({"prompt": "x", "guidance_cutoff": 0}, "guidance_cutoff"),
    ({"prompt": "x", "guidance_cutoff": 1.5}, "guidance_cutoff"),
    ({"prompt": "x", "cache_interval": 0}, "cache_interval"),
    ({"prompt": "x", "cache_interval": 11}, "cache_interval"),
    ({"prompt": "x", "size": "64x64", "num_inference_steps": 4, "cache_interval": 2}, "cache_interval"),  # no engines
    ({"prompt": "x", "size": "64x64", "num_inference_steps": 2, "approximate_cache": True}, "approximate_cache"),
    ({"prompt": "x", "output_format": "gif"}, "output_format"),
    ({"prompt": "x", "output_format": "svg", "vectorize_tier": "9"}, "vectorize_tier"),
    ({"prompt": "x", "vectorize_tier": "1"}, "vectorize_tier"),
    ({"n": 1}, "prompt"),
    ({"prompt": "x", "loras": [{"name": "style"}]}, "loras.0.name"),  # a stack without adapters
    ({"prompt": "x", "ip_adapter_image": "aGk="}, "ip_adapter_image"),
]
"""Each body and the field its 400 (gRPC: INVALID_ARGUMENT) names, on a stack without adapters, step-cache engines
or an approximate cache."""

DEEP = 100_000
"""Nesting far past any parser's limit (a recursive parser overflows its stack)."""


def deeply_nested(depth: int = DEEP) -> str:
    """A JSON list nested ``depth`` deep."""
    return "[" * depth + "]" * depth


def as_message(body: dict) -> easel_pb2.GenerateRequest:
    """The gRPC ``GenerateRequest`` of an HTTP body (adapters as messages, the reference as bytes)."""
    fields = dict(body)
    fields["loras"] = [easel_pb2.Lora(**lora) for lora in fields.get("loras", [])]
    if "ip_adapter_image" in fields:
        fields["ip_adapter_image"] = base64.b64decode(fields["ip_adapter_image"])
    return easel_pb2.GenerateRequest(**fields)
