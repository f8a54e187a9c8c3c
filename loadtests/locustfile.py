"""Locust users for Easel: text-to-image and vectorize over HTTP and over Easel's gRPC API, and Triton directly.

Environment (set by `easel loadtest`): ``EASEL_GRPC`` (host:port of Easel's gRPC API), ``EASEL_TRITON_GRPC``
(host:port of Triton's gRPC endpoint, KServe v2) and ``EASEL_LOADTEST_IMAGES`` (a folder of PNG/JPEG files for the
vectorize users); ``EASEL_API_KEY`` when the stack has API keys.
"""

from __future__ import annotations

import io
import math
import os
import random
import time
from pathlib import Path

import grpc.experimental.gevent as grpc_gevent
import numpy as np
from locust import HttpUser, User, between, events, task
from PIL import Image

from serve.access.keys import client_headers
from serve.triton.spec import AXIS_SCALE

grpc_gevent.init_gevent()

PROMPTS = ("a lighthouse on a cliff", "a red fox, flat icon", "a bowl of ramen", "a paper plane, line art")
_images: list[bytes] = []


def _uploads() -> list[bytes]:
    """The vectorize uploads, read once per worker from ``EASEL_LOADTEST_IMAGES``."""
    if not _images:
        folder = Path(os.environ.get("EASEL_LOADTEST_IMAGES", ""))
        paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[:64]
        if not paths:
            raise RuntimeError(f"EASEL_LOADTEST_IMAGES={folder} holds no PNG/JPEG files")
        _images.extend(p.read_bytes() for p in paths)
    return _images


class EaselUser(HttpUser):
    """An HTTP user that sends ``$EASEL_API_KEY`` (if set) with every request."""

    abstract = True

    def on_start(self) -> None:
        """Authenticate every request of this user."""
        self.client.headers.update(client_headers())


class TextToImageUser(EaselUser):
    """Generates small images with a few steps, like an interactive client."""

    wait_time = between(0.0, 0.5)

    @task
    def generate(self) -> None:
        """POST /v1/images/generations."""
        body = {
            "prompt": random.choice(PROMPTS),
            "size": "256x256",
            "num_inference_steps": 10,
            "seed": random.randrange(2**31),
        }
        self.client.post("/v1/images/generations", json=body, name="generations")


class SmallImageUser(EaselUser):
    """Generates 64x64 images with 4 steps and no pause: enough requests that autoscaling sees the load (ramp)."""

    @task
    def generate(self) -> None:
        """POST /v1/images/generations."""
        body = {"prompt": random.choice(PROMPTS), "size": "64x64", "num_inference_steps": 4}
        self.client.post("/v1/images/generations", json={**body, "seed": random.randrange(2**31)}, name="generations")


class VectorizeUser(EaselUser):
    """Uploads icons from a folder, mostly with the auto tier."""

    wait_time = between(0.0, 0.2)

    @task(4)
    def auto(self) -> None:
        """POST /v1/vectorize, tier auto."""
        self._vectorize("auto")

    @task(1)
    def each_tier(self) -> None:
        """POST /v1/vectorize with a named tier."""
        self._vectorize(random.choice(("1", "2", "3")))

    def _vectorize(self, tier: str) -> None:
        upload = random.choice(_uploads())
        self.client.post(
            "/v1/vectorize",
            files={"file": ("icon.png", upload, "image/png")},
            data={"tier": tier},
            headers={"Accept": "application/json"},
            name=f"vectorize tier {tier}",
        )


CHUNK = 77
"""One chunk of a prompt's tokens (CLIP's window): the length a UNet's dynamic text axis is sent at."""
LATENT_SIDE = 32
"""The latent side of :class:`TritonGrpcUser`'s UNet calls (a 256x256 image for a VAE factor of 8)."""
SIZES = (64, 128, 256, 512)
"""The icon sides a mixed-size vectorize user uploads (the uploads resized, each side equally often)."""
_sized: list[tuple[int, bytes]] = []


def _sized_uploads() -> list[tuple[int, bytes]]:
    """Every upload at every side of :data:`SIZES`, as PNG (made once per worker)."""
    if not _sized:
        for upload in _uploads():
            image = Image.open(io.BytesIO(upload)).convert("RGB")
            for side in SIZES:
                buffer = io.BytesIO()
                image.resize((side, side), Image.Resampling.LANCZOS).save(buffer, "PNG")
                _sized.append((side, buffer.getvalue()))
    return _sized


class VectorizeSizesUser(VectorizeUser):
    """Uploads icons of mixed sizes (64-512 px), mostly tier auto; a 429 counts apart, by whether it has Retry-After."""

    def _vectorize(self, tier: str) -> None:
        _, upload = random.choice(_sized_uploads())
        with self.client.post(
            "/v1/vectorize",
            files={"file": ("icon.png", upload, "image/png")},
            data={"tier": tier},
            headers={"Accept": "application/json"},
            name=f"vectorize tier {tier}",
            catch_response=True,
        ) as response:
            if response.status_code == 429:  # shed: told when to retry, or not
                said = "with" if response.headers.get("Retry-After") else "WITHOUT"
                response.failure(f"429 {said} Retry-After")


class MixedUser(EaselUser):
    """Mostly vectorize, sometimes a generation: both pipelines share the machine."""

    wait_time = between(0.0, 0.5)
    tasks = {TextToImageUser.generate: 1, VectorizeUser.auto: 6}

    def _vectorize(self, tier: str) -> None:
        VectorizeUser._vectorize(self, tier)


class FallbackUser(EaselUser):
    """Small generations and vectorize uploads, each named ``NAME (fallback)`` when a fallback answered it.

    ``Easel-Fallback`` says so: a run through a fault reports the share its fallbacks drew (the stats' names).
    """

    wait_time = between(0.0, 0.2)

    @task(2)
    def generate(self) -> None:
        """POST /v1/images/generations, 64x64, 2 steps."""
        body = {"prompt": random.choice(PROMPTS), "size": "64x64", "num_inference_steps": 2}
        body["seed"] = random.randrange(2**31)
        self._named("generations", "/v1/images/generations", json=body)

    @task(1)
    def vectorize(self) -> None:
        """POST /v1/vectorize, tier auto."""
        upload = {"file": ("icon.png", random.choice(_uploads()), "image/png")}
        self._named("vectorize", "/v1/vectorize", files=upload, headers={"Accept": "application/json"})

    def _named(self, name: str, path: str, **request) -> None:
        with self.client.post(path, name=name, catch_response=True, **request) as response:
            if response.headers.get("Easel-Fallback"):
                response.request_meta["name"] = f"{name} (fallback)"


class EaselGrpcUser(User):
    """Easel's public gRPC API: a streamed small generation (every progress event read) and a vectorize call."""

    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        """Open a channel to ``$EASEL_GRPC``; send ``$EASEL_API_KEY`` (if set) as metadata."""
        import grpc

        from serve.grpc_api import easel_pb2, easel_pb2_grpc

        self.messages = easel_pb2
        self.channel = grpc.insecure_channel(os.environ["EASEL_GRPC"])
        self.stub = easel_pb2_grpc.EaselStub(self.channel)
        self.metadata = [(k.lower(), v) for k, v in client_headers().items()]

    def on_stop(self) -> None:
        """Close the channel (an open one under gevent keeps the process from exiting)."""
        self.channel.close()

    @task(1)
    def generate(self) -> None:
        """A streamed 64x64 generation of a few steps."""
        request = self.messages.GenerateRequest(
            prompt=random.choice(PROMPTS), size="64x64", num_inference_steps=4, seed=random.randrange(1000)
        )
        self._call("Generate", lambda: list(self.stub.Generate(request, metadata=self.metadata, timeout=120)))

    @task(2)
    def vectorize(self) -> None:
        """One icon to SVG with tier auto."""
        request = self.messages.VectorizeRequest(image=random.choice(_uploads()), tier="auto")
        self._call("Vectorize", lambda: self.stub.Vectorize(request, metadata=self.metadata, timeout=60))

    def _call(self, name: str, call) -> None:
        started = time.perf_counter()
        error = None
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - reported to locust as a failure
            error = exc
        events.request.fire(
            request_type="grpc",
            name=f"easel.v1.Easel/{name}",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=error,
            context={},
        )


class TritonGrpcUser(User):
    """Calls Triton directly over gRPC: one UNet step, and the vectorize ensemble."""

    wait_time = between(0.0, 0.1)

    def on_start(self) -> None:
        """Connect and prepare inputs shaped from Triton's own model metadata."""
        import tritonclient.grpc as grpcclient

        self.grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(os.environ["EASEL_TRITON_GRPC"])
        meta = {i.name: list(i.shape) for i in self.client.get_model_metadata("unet").inputs}
        parameters = self.client.get_model_config("unet", as_json=True)["config"].get("parameters", {})
        sample = [2, meta.pop("sample")[1], LATENT_SIDE, LATENT_SIDE]
        self.unet_inputs = {
            "sample": np.random.default_rng(0).standard_normal(sample).astype(np.float32),
            "timestep": np.full((2, 1), 500.0, np.float32),
            "encoder_hidden_states": np.zeros(
                [2, *(d if d > 0 else CHUNK for d in meta.pop("encoder_hidden_states")[1:])], np.float32
            ),
        }
        meta.pop("timestep")
        for name, shape in meta.items():  # a ControlNet-ready UNet's residuals: zeros, as for a row without one
            scale = float(parameters.get(f"{AXIS_SCALE}{name}", {}).get("string_value", 1))
            side = math.ceil(LATENT_SIDE * scale)
            self.unet_inputs[name] = np.zeros([2, *(d if d > 0 else side for d in shape[1:])], np.float32)
        self.icon = np.full((256, 256, 3), 255, np.uint8)
        self.icon[64:192, 64:192] = (200, 40, 40)

    def on_stop(self) -> None:
        """Close the channel: an open gRPC channel under gevent keeps the process from exiting."""
        self.client.close()

    @task(3)
    def unet_step(self) -> None:
        """One classifier-free-guided UNet call (2 rows)."""
        self._infer("unet", self.unet_inputs)

    @task(1)
    def vectorize_ensemble(self) -> None:
        """The vectorize ensemble on one icon."""
        self._infer("vectorize", {"image": self.icon})

    def _infer(self, model: str, arrays: dict[str, np.ndarray]) -> None:
        tensors = []
        for name, array in arrays.items():
            tensor = self.grpc.InferInput(name, list(array.shape), "UINT8" if array.dtype == np.uint8 else "FP32")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        started = time.perf_counter()
        error = None
        try:
            self.client.infer(model, tensors)
        except Exception as exc:  # noqa: BLE001 - reported to locust as a failure
            error = exc
        events.request.fire(
            request_type="grpc",
            name=model,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=error,
            context={},
        )
