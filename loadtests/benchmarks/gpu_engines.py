"""``easel bench gpu``'s in-process checks of a model's engines: fp16 parity at every bucket, graph replay, an image.

- **Parity**: each engine as the stack runs it (the torch runtime's session, fp16, its buckets captured as CUDA
  graphs) against the same engine's module in fp32 (eager, TF32 off), on the same random inputs, at every bucket's
  full rows and at a row count that pads into it (the bucket less one row, where no smaller bucket holds it);
  engines without buckets at one row. Relative error: max |fp16 - fp32| / max(1, max |fp32|).
- **Replay**: the bare CUDA-graph replay of the denoiser's 2-row bucket (one guided step at c=1), timed with CUDA
  events over :data:`REPLAYS` replays: what the loop's per-step cost is compared with.
- **Fractional timesteps**: the same generations drawn by the pipeline with Euler on Karras sigmas (timesteps between
  integers) over the fp16 sessions and over the fp32 ones; PSNR of each image. With random weights this is a
  numerical check of fp16 along a whole denoising (timesteps included), not a measure of image quality.

On a CPU the sessions run fp32 on both sides (the smoke run): the checks run, their numbers mean nothing.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np

from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.text_to_image.spec import VAE_DECODER
from serve.triton.spec import ModelSpec

logger = logging.getLogger(__name__)

REPLAYS = 50
CHUNK_ROWS = 8
"""Rows per fp32 reference call (its activations stay small)."""
FRACTIONAL_SAMPLER = "euler"
FRACTIONAL_PROMPTS = ("a lighthouse on a cliff", "a city skyline at night")


def check_rows(buckets: tuple[int, ...]) -> list[tuple[int, int]]:
    """(rows, bucket) to check: each bucket full, and its rows less one where that pads into it; (1, 0): no buckets."""
    if not buckets:
        return [(1, 0)]
    ordered = sorted(set(buckets))
    checks = []
    for smaller, bucket in zip([0, *ordered], ordered, strict=False):
        checks.append((bucket, bucket))
        if bucket - 1 > smaller:
            checks.append((bucket - 1, bucket))
    return checks


def engine_buckets(folder: EngineFolder, name: str, override: tuple[int, ...] = ()) -> tuple[int, ...]:
    """The buckets the stack captures for engine ``name`` (``override``'s within its batch limit, as the loop does)."""
    from serve.triton.torch_runtime import TorchEngine

    own = TorchEngine.of(folder.engine(name)).buckets
    if not own or not override:
        return own
    return tuple(size for size in override if size <= folder.specs[name].max_batch_size)


class SessionRunner:
    """Engines' sessions in this process, one call at a time: the pipeline's runner (no Triton, no adapters)."""

    def __init__(self, sessions: Mapping) -> None:
        self.sessions = sessions

    async def infer(self, spec: ModelSpec, inputs: Mapping[str, np.ndarray], priority: int = 0) -> dict:
        """The engine's outputs by name."""
        session = self.sessions[spec.name]
        feeds = {t.name: np.asarray(inputs[t.name], dtype=t.numpy_dtype) for t in spec.inputs if t.name in inputs}
        return dict(zip(session.output_names, session.run(feeds), strict=True))


class KarrasPipeline(TextToImagePipeline):
    """The pipeline with its sampler on Karras sigmas (fractional timesteps)."""

    def make_scheduler(self, name: str):
        """The family's sampler ``name`` with ``use_karras_sigmas``."""
        sampler = self.family.samplers[name]
        return sampler.cls.from_config(self.scheduler_config, **sampler.overrides, use_karras_sigmas=True)


@contextmanager
def full_fp32() -> Iterator[None]:
    """fp32 matmuls and convolutions without TF32 (whose 10-bit mantissa is fp16's) for the block."""
    import torch

    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn


def free() -> None:
    """Give the device memory of dropped objects back."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def relative_error(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """The largest |got - want| over max(1, max |want|), all outputs; inf where fp16 overflowed (NaN or inf)."""
    from build_engines.openvino import error_against

    error = error_against(got, want)
    return error if math.isfinite(error) else float("inf")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


class EngineChecks:
    """The checks of one model's engines (``run``: its :class:`~loadtests.benchmarks.gpu_rows.ModelRun`)."""

    def __init__(self, run, folder: EngineFolder) -> None:
        self.run, self.folder = run, folder
        self.device = "cuda" if run.settings.device == "cuda" else "cpu"
        self.plan = {name: check_rows(engine_buckets(folder, name, run.settings.buckets)) for name in folder.specs}
        self.feeds = {name: self._feeds(name, max(rows for rows, _ in checks)) for name, checks in self.plan.items()}
        self.reference: dict[str, list[np.ndarray]] = {}
        self.images32: list[np.ndarray] = []

    def _feeds(self, name: str, rows: int) -> dict[str, np.ndarray]:
        import torch

        from build_engines.text_to_image.export import sample_inputs

        family = self.folder.family
        side = family.dims.sample_size - family.dims.sample_size % family.latent_multiple
        generator = torch.Generator().manual_seed(1)
        feeds = sample_inputs(self.folder.specs[name], batch=rows, size=side, generator=generator)
        return {k: v.numpy() for k, v in feeds.items()}

    def run_all(self, deadline) -> float | None:
        """Every check within ``deadline`` (what it leaves is listed as skipped); the 2-row replay in ms, if timed."""
        self._fp32(deadline)
        free()
        if deadline.expired():
            self._skip_unmeasured("the engines' time share was spent")
            return None
        return self._fp16(deadline)

    def _fp32(self, deadline) -> None:
        from serve.triton.torch_runtime import TorchSession

        started = time.perf_counter()
        with full_fp32():
            sessions = {name: TorchSession(self.folder.engine(name), "fp32", self.device) for name in self.plan}
            for name, session in sessions.items():
                rows, out = len(next(iter(self.feeds[name].values()))), []
                for first in range(0, rows, CHUNK_ROWS):
                    if deadline.expired():
                        break
                    out.append(session.run({k: v[first : first + CHUNK_ROWS] for k, v in self.feeds[name].items()}))
                else:
                    self.reference[name] = [np.concatenate(parts) for parts in zip(*out, strict=True)]
            if self.run.model.fractional and not deadline.expired():
                self.images32 = self._draw(sessions)
        logger.info("fp32 references of %s in %.1f s", self.run.model.name, time.perf_counter() - started)

    def _fp16(self, deadline) -> float | None:
        from serve.triton.onnx_backend import open_engine
        from serve.triton.torch_runtime import TorchSession

        started = time.perf_counter()
        sessions = {name: open_engine(self.folder.engine(name), device=self.device) for name in self.plan}
        for name, session in sessions.items():
            buckets = [bucket for _, bucket in self.plan[name] if bucket]
            if isinstance(session, TorchSession) and buckets:
                session.capture(sorted(set(buckets)))
        for name, checks in self.plan.items():
            for rows, bucket in checks:
                if name not in self.reference or deadline.expired():
                    continue
                session = sessions[name]
                eager_before = getattr(session, "eager_total", 0)
                got = session.run({k: v[:rows] for k, v in self.feeds[name].items()})
                want = [w[:rows] for w in self.reference[name]]
                dtype = str(getattr(session, "dtype", "float32")).removeprefix("torch.")
                entry = {"model": self.run.model.name, "engine": name, "dtype": dtype, "rows": rows, "bucket": bucket}
                entry |= {
                    "padded": rows != bucket and bucket > 0,
                    "missed_bucket": eager_before != getattr(session, "eager_total", 0),
                }
                self.run.report.add("parity", entry | {"relative_error": relative_error(got, want)})
        self._skip_unmeasured("the engines' time share was spent")
        if self.device == "cuda" and VAE_DECODER in self.reference and not deadline.expired():
            vae_bf16_row(self.run, self.folder, self.feeds[VAE_DECODER], self.reference[VAE_DECODER])
        denoiser = self.folder.family.denoiser
        replay = None
        if not deadline.expired() and denoiser in sessions:
            replay = replay_ms(sessions[denoiser], {k: v[:2] for k, v in self.feeds[denoiser].items()})
        if self.images32 and not deadline.expired():
            images16 = self._draw(sessions)
            values = [psnr(a, b) for a, b in zip(images16, self.images32, strict=True)]
            entry = {"model": self.run.model.name, "sampler": "Euler, Karras sigmas", "steps": self.run.settings.steps}
            entry |= {"timesteps": self._timesteps(), "images": len(values)}
            self.run.report.add("fractional", entry | {"min_db": min(values), "mean_db": float(np.mean(values))})
        elif self.run.model.fractional:
            self.run.report.add(
                "skipped",
                {
                    "model": self.run.model.name,
                    "fractional": "fp16 against fp32",
                    "why": "the engines' time share was spent",
                },
            )
        logger.info("fp16 checks of %s in %.1f s", self.run.model.name, time.perf_counter() - started)
        del sessions
        free()
        return replay

    def _skip_unmeasured(self, why: str) -> None:
        measured = {
            (p["engine"], p["rows"]) for p in self.run.report.data["parity"] if p["model"] == self.run.model.name
        }
        for name, checks in self.plan.items():
            left = [rows for rows, _ in checks if (name, rows) not in measured]
            if left:
                self.run.report.add(
                    "skipped", {"model": self.run.model.name, "parity": f"{name} at rows {left}", "why": why}
                )

    def _draw(self, sessions: Mapping) -> list[np.ndarray]:
        from serve.text_to_image.generation import Generation

        pipeline = KarrasPipeline(self.folder, SessionRunner(sessions))

        async def draw() -> list[np.ndarray]:
            jobs = [Generation(self._sampling(prompt, seed)) for seed, prompt in enumerate(FRACTIONAL_PROMPTS)]
            return [(await pipeline.generate(job)).images[0] for job in jobs]

        return asyncio.run(draw())

    def _sampling(self, prompt: str, seed: int):
        from serve.text_to_image.generation import SamplingParams

        s, size = self.run.settings, self.run.model.size
        return SamplingParams(prompt, "", 1, size, size, s.steps, s.guidance_scale, seed, FRACTIONAL_SAMPLER)

    def _timesteps(self) -> list[float]:
        """The first timesteps of the Karras schedule (fractional)."""
        from serve.text_to_image.generation import Generation

        pipeline = KarrasPipeline(self.folder, SessionRunner({}))
        scheduler = pipeline.make_scheduler(FRACTIONAL_SAMPLER)
        self.folder.family.set_timesteps(scheduler, Generation(self._sampling("", 0)))
        return [round(float(t), 3) for t in scheduler.timesteps[:4]]


def replay_ms(session, feeds: dict[str, np.ndarray]) -> tuple[float, str]:
    """(ms, what was timed) of one call at ``feeds``' rows: its bucket's bare CUDA-graph replay where there is one.

    Elsewhere (a CPU) the session's call at those rows, copies included: the median of a few.
    """
    import torch

    rows = len(next(iter(feeds.values())))
    buckets = getattr(session, "_buckets", {})  # the torch runtime's buckets, by (rows, shapes)
    graph = next((getattr(b, "graph", None) for key, b in buckets.items() if key[0] == rows), None)
    if graph is not None:
        for _ in range(5):
            graph.replay()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(REPLAYS):
            graph.replay()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / REPLAYS, f"bare CUDA-graph replay ({rows} rows, {REPLAYS} replays)"
    times = []
    for _ in range(5):
        started = time.perf_counter()
        session.run(feeds)
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1000, f"the session's call ({rows} rows, no CUDA graph here)"


def vae_bf16_row(run, folder, feeds: dict[str, np.ndarray], reference: list[np.ndarray]) -> None:
    """SDXL's VAE (kept fp32 by the build) in bf16 against fp32: the time of one decode each, bf16's relative error."""
    import torch

    from serve.text_to_image.spec import VAE_DECODER
    from serve.triton.torch_runtime import CastIO, TorchSession

    session = TorchSession(folder.engine(VAE_DECODER), "fp16", "cuda")
    if not session.engine.keep_fp32:
        return
    latent = torch.from_numpy(feeds["latent"][:1]).cuda()
    bf16 = CastIO(session.engine.load(folder.path, torch.bfloat16).to("cuda", torch.bfloat16).eval(), torch.bfloat16)
    entry = {"model": run.model.name, "engine": VAE_DECODER, "rows": 1}
    with torch.inference_mode():
        for name, module in (("fp32", session.module), ("bf16", bf16)):
            entry[f"{name}_ms"] = _median_ms(lambda m=module: m(latent))
        got = bf16(latent).float().cpu().numpy()
    entry["relative_error"] = relative_error([got], [reference[0][:1]])
    run.report.add("vae", entry)
    logger.info("VAE in bf16: %s", entry)
    del session, bf16


def _median_ms(call, repeats: int = 5) -> float:
    import torch

    call()
    times = []
    for _ in range(repeats):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        call()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    return float(np.median(times))
