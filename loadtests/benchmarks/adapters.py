"""``easel bench generate --adapters N``: what LoRA adapters cost, and what sharing UNet batches across them saves.

Three parts, on one embedded model with ``N`` random LoRAs made for it (``random_adapters.make_lora``):

* **engines, in-process** (ONNX Runtime, the stack stopped): UNet ms per row at one batch size for the plain engine,
  the LoRA-ready engine with no adapter, with one adapter for every row and with every row its own adapter; and the
  plain engine with the batch split into one execution per adapter (what engines with fused adapters, which cannot
  share executions, would run).
* **making an adapter ready**: Easel's, reading the file as diffusers does (once per file; cached) and loading the
  prepared tensors into an engine instance (each cold use); the fused alternative's, fusing the LoRA into the UNet,
  exporting it to ONNX and opening a session.
* **served** (the stack with the LoRA folder and an IP-Adapter): a cold adapter's first request against a warm
  one's (concurrency 1), and images/s at a concurrency with every request on the base model, on one adapter, on
  adapters that all fit the resident bound, and on more adapters than it holds; with the UNet rows per execution
  Triton formed. Then LoRAs uploaded while it runs (``POST /v1/loras``): the upload's time, from the upload to the
  first image with it (a never-seen adapter's first request), and that adapter warm; and a stored reference
  (``POST /v1/references``) against the same image sent inline, with the image encoder's executions; and a request
  keeping a face (``identity`` by an IP-Adapter FaceID) by its embedding and by a picture, against none.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

from build_engines.text_to_image.adapters import AdapterBuild
from build_engines.text_to_image.build import build
from build_engines.text_to_image.export import export_engine
from build_engines.text_to_image.loras import build_registry, save_registry
from loadtests.benchmarks import loop
from serve.adapters.lora_files import prepare
from serve.adapters.registry import LoraRegistry, engine_banks
from serve.paths import run_dir
from serve.stack import scratch_stack
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.families.exports import UnetModule
from serve.text_to_image.spec import UNET
from serve.triton.engine_files import EngineFiles
from serve.triton.onnx_backend import ShardedSession, make_session

logger = logging.getLogger(__name__)

PROMPT = "a lighthouse on a cliff"
UPLOADS = 3
"""LoRAs uploaded while the stack runs (each timed from its upload to its first image)."""


@dataclass(frozen=True)
class AdapterBenchSettings(loop.ServedComparison):
    """What the adapter benchmark runs: the served comparison's load, and its random LoRAs (how many are held)."""

    adapters: int = 8
    rank: int = 8
    resident: int = 4


def make_loras(
    model_dir: Path, folder: Path, settings: AdapterBenchSettings, prefix: str = "bench", count: int | None = None
) -> list[str]:
    """``count`` (default ``settings.adapters``) random LoRAs for ``model_dir`` in ``folder`` (kept between runs)."""
    from build_engines.text_to_image.random_adapters import make_lora

    names = [f"{prefix}{i}" for i in range(settings.adapters if count is None else count)]
    for i, name in enumerate(names):
        path = folder / f"{name}.safetensors"
        if not path.exists():
            make_lora(model_dir, path, rank=settings.rank, seed=100 + i + (1000 if prefix != "bench" else 0))
    return names


def _unet_feeds(engines: EngineFolder, batch: int, latent: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    spec = engines.specs["unet"]
    feeds = {}
    for tensor in spec.graph_inputs:
        shape = (batch, *tensor.shape(latent))
        values = rng.random(shape) * 999 if tensor.name == "timestep" else rng.standard_normal(shape)
        feeds[tensor.name] = values.astype(tensor.numpy_dtype)
    return feeds


def engine_costs(
    plain: EngineFolder, lora_ready: EngineFolder, loras_dir: Path, names: list[str], settings, rounds: int = 5
) -> dict[str, float]:
    """UNet ms/row in-process: plain, LoRA-ready without/with adapters, and the plain batch run per adapter.

    Every setting runs the same ``settings.batch`` rows; the settings take turns (``rounds`` rounds after a warm-up
    one), so a drifting machine slows them alike, and each reports its median.
    """
    latent = settings.size // plain.family.dims.vae_scale_factor
    unet = plain.engine("unet")
    plain_unet = ShardedSession(unet.onnx, 1)
    ready_unet = lora_ready.engine("unet")
    ready = ShardedSession(ready_unet.onnx, 1)
    banks = engine_banks(ready_unet.lora_slots, "unet", loras_dir)
    batch = settings.batch
    feeds = _unet_feeds(plain, batch, latent, np.random.default_rng(0))

    def with_adapters(rows):
        scale, bank, _ = banks.feeds(rows)
        return lambda: ready.run(feeds | {"lora_scale": scale}, bank)

    def split(groups: int):
        parts = [{k: v[g::groups] for k, v in feeds.items()} for g in range(groups)]
        return lambda: [plain_unet.run(part) for part in parts]

    settings_run = {
        "plain": lambda: plain_unet.run(feeds),
        "lora-ready, no adapter": with_adapters([()] * batch),
        "lora-ready, one adapter": with_adapters([((names[0], 1.0),)] * batch),
        "lora-ready, each row its own adapter": with_adapters([((names[i % len(names)], 1.0),) for i in range(batch)]),
        **{f"plain, one run per adapter ({k} adapters)": split(k) for k in (2, 4, 8) if k <= batch},
    }
    times: dict[str, list[float]] = {label: [] for label in settings_run}
    for round_ in range(rounds + 1):
        for label, run in settings_run.items():
            started = time.perf_counter()
            run()
            if round_:  # round 0 warms up
                times[label].append((time.perf_counter() - started) / batch * 1000)
        logger.info("engine costs: round %d/%d", round_, rounds)
    return {label: statistics.median(values) for label, values in times.items()}


def fused_ready_s(model_dir: Path, lora: Path, plain: EngineFolder) -> float:
    """Seconds to make an adapter ready the fused way: fuse into the UNet, export ONNX, open a session."""
    import torch
    from diffusers import DiffusionPipeline

    family = plain.family
    spec = family.specs["unet"]
    pipeline = DiffusionPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
    started = time.perf_counter()
    pipeline.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="fused")
    pipeline.fuse_lora()
    pipeline.unload_lora_weights()
    with tempfile.TemporaryDirectory() as folder:
        path = EngineFiles(Path(folder)).onnx
        added = tuple(t.name for t in spec.inputs[3:])  # SDXL's text_embeds and time_ids
        export_engine(UnetModule(pipeline.unet, added), spec, family, path)
        make_session(path)
    return time.perf_counter() - started


def _body(settings: AdapterBenchSettings, index: int, loras: list[dict]) -> dict:
    size = f"{settings.size}x{settings.size}"
    body = {"prompt": PROMPT, "seed": index, "size": size, "num_inference_steps": settings.steps}
    return body | ({"loras": loras} if loras else {})


def served(api_url: str, triton_http_url: str, names: list[str], settings: AdapterBenchSettings) -> dict:
    """Cold vs warm first requests, and throughput per condition with the UNet rows per execution."""

    async def run() -> dict:
        limits = httpx.Limits(max_connections=settings.concurrency)
        async with httpx.AsyncClient(base_url=api_url, timeout=600, limits=limits) as client:

            async def once(index: int, loras: list[dict]) -> float:
                started = time.perf_counter()
                response = await client.post("/v1/images/generations", json=_body(settings, index, loras))
                response.raise_for_status()
                return time.perf_counter() - started

            await once(0, [])  # warm the engines
            cold, warm = [], []
            for i, name in enumerate(names):  # each adapter's first use is cold (the resident bound evicts others)
                cold.append(await once(i, [{"name": name}]))
                warm.append(await once(i, [{"name": name}]))
            conditions = {"base model": lambda i: []}
            for distinct in sorted({1, 4, settings.resident, len(names)} & set(range(1, len(names) + 1))):
                held = "all held" if distinct <= settings.resident else "more than held"
                label = "one adapter" if distinct == 1 else f"{distinct} adapters ({held})"
                conditions[label] = lambda i, k=distinct: [{"name": names[i % k]}]
            rows, batching = [], {}
            for label, loras in conditions.items():

                async def call(index: int, loras=loras) -> None:
                    await once(index, loras(index))

                before = loop.triton_counts(triton_http_url, UNET)
                rows.append(await loop.measure(label, call, settings.concurrency, settings.requests))
                after = loop.triton_counts(triton_http_url, UNET)
                executions = max(1, after[1] - before[1])
                batching[label] = (after[0] - before[0]) / executions
            return {"cold_s": cold, "warm_s": warm, "rows": rows, "unet_rows_per_execution": batching}

    return asyncio.run(run())


def uploaded(api_url: str, uploads: list[Path], settings: AdapterBenchSettings) -> dict:
    """Each LoRA of ``uploads`` uploaded while the stack runs: the upload, upload to first image, then warm (s)."""

    async def run() -> dict:
        async with httpx.AsyncClient(base_url=api_url, timeout=600) as client:
            upload_s, first_image_s, never_seen_s, warm_s = [], [], [], []
            for index, path in enumerate(uploads):
                started = time.perf_counter()
                added = await client.post("/v1/loras", data={"name": path.stem}, files={"file": path.read_bytes()})
                added.raise_for_status()
                upload_s.append(time.perf_counter() - started)
                body = _body(settings, index, [{"name": path.stem}])
                (await client.post("/v1/images/generations", json=body)).raise_for_status()
                first_image_s.append(time.perf_counter() - started)
                never_seen_s.append(first_image_s[-1] - upload_s[-1])
                started = time.perf_counter()
                (await client.post("/v1/images/generations", json=body)).raise_for_status()
                warm_s.append(time.perf_counter() - started)
                (await client.delete(f"/v1/loras/{path.stem}")).raise_for_status()
            return {
                "upload_s": upload_s,
                "first_image_s": first_image_s,
                "never_seen_s": never_seen_s,
                "warm_s": warm_s,
            }

    return asyncio.run(run())


def stored_reference(api_url: str, triton_http_url: str, settings: AdapterBenchSettings, rounds: int = 5) -> dict:
    """A stored reference's requests against the same image sent inline: seconds each, image-encoder executions."""
    from PIL import Image

    pixels = (np.random.default_rng(0).random((224, 224, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()

    async def run() -> dict:
        async with httpx.AsyncClient(base_url=api_url, timeout=600) as client:
            stored = await client.post("/v1/references", json={"image": image})
            stored.raise_for_status()
            found = {}
            for label, field in (
                ("inline", {"ip_adapter_image": image}),
                ("stored", {"ip_adapter_reference": stored.json()["id"]}),
            ):
                before = loop.triton_counts(triton_http_url, "image_encoder")[1]
                times = []
                for index in range(rounds):
                    started = time.perf_counter()
                    body = _body(settings, index, []) | field
                    (await client.post("/v1/images/generations", json=body)).raise_for_status()
                    times.append(time.perf_counter() - started)
                executions = loop.triton_counts(triton_http_url, "image_encoder")[1] - before
                found[label] = {"s": times, "image_encoder_executions": executions}
            await client.delete(f"/v1/references/{stored.json()['id']}")
            return found

    return asyncio.run(run())


def identity_costs(api_url: str, settings: AdapterBenchSettings, rounds: int = 5) -> dict:
    """Requests keeping a face (``identity``, an IP-Adapter FaceID) against the same without: seconds each.

    By how the face is sent: its embedding, or a picture whose face the face models find and embed at admission.
    """
    from PIL import Image

    from build_engines.faces.random_pack import drawn_faces

    buffer = io.BytesIO()
    Image.fromarray(drawn_faces([(160, 120, 60)])).save(buffer, format="PNG")
    picture = base64.b64encode(buffer.getvalue()).decode()

    async def run() -> dict:
        async with httpx.AsyncClient(base_url=api_url, timeout=600) as client:
            analyzed = await client.post("/v1/faces/analyze", json={"image": picture, "max_faces": 1})
            analyzed.raise_for_status()
            embedding = analyzed.json()["data"][0]["embedding"]
            found = {}
            for label, field in (
                ("without", {}),
                ("embedding", {"identity": {"embedding": embedding}}),
                ("picture", {"identity": {"image": picture, "face": "largest"}}),
            ):
                times = []
                for index in range(rounds):
                    started = time.perf_counter()
                    (
                        await client.post("/v1/images/generations", json=_body(settings, index, []) | field)
                    ).raise_for_status()
                    times.append(time.perf_counter() - started)
                found[label] = times
            return found

    return asyncio.run(run())


def run_adapter_benchmark(model_dir: Path, label: str, settings: AdapterBenchSettings, out: Path, stack: bool) -> str:
    """The adapter benchmark on ``model_dir``; with ``stack``, its served part too. Writes JSON, returns the report."""
    folder = run_dir() / "bench"
    loras_dir = folder / f"loras-{label}"
    names = make_loras(model_dir, loras_dir, settings)
    plain = build(model_dir, folder / "plain_repository")
    report: dict = {"settings": asdict(settings), "model": label}
    rows = []
    if stack:
        from build_engines.faces.random_pack import random_face_pack
        from build_engines.text_to_image.random_adapters import make_faceid_adapter, make_ip_adapter

        uploads_dir = folder / f"uploads-{label}"
        made = make_loras(model_dir, uploads_dir, settings, "up", UPLOADS)
        uploads = [uploads_dir / f"{name}.safetensors" for name in made]
        with scratch_stack(model_dir, loras_dir=loras_dir, lora_resident=settings.resident) as running:
            lora_ready, registry_dir = EngineFolder(running.info.engine_dir), running.options.run_dir / "loras"
            with running.paused():
                costs = engine_costs(plain, lora_ready, registry_dir, names, settings)
            result = served(running.info.api_url, running.info.triton_http_url, names, settings)
            report["uploaded"] = uploaded(running.info.api_url, uploads, settings)
            report["ready_s"] = {"load into an instance (mean)": _triton_load_seconds(running.info.triton_metrics_url)}
        ip_adapter, faceid = folder / f"ip-adapter-{label}", folder / f"faceid-{label}"
        if not ip_adapter.is_dir():
            make_ip_adapter(model_dir, ip_adapter, seed=5)
        if not faceid.is_dir():
            make_faceid_adapter(model_dir, faceid, seed=5)
        faces, no_loras = random_face_pack(folder / "buffalo_l"), folder / "no-loras"
        no_loras.mkdir(exist_ok=True)  # a FaceID's LoRA is drawn by LoRA-ready engines
        adapted = {"ip_adapters": {"ip": ip_adapter, "faceid": faceid}, "faces": faces, "loras_dir": no_loras}
        with scratch_stack(model_dir, folder / "ip", **adapted) as running:  # a UNet with references and faces
            report["reference"] = stored_reference(running.info.api_url, running.info.triton_http_url, settings)
            report["identity"] = identity_costs(running.info.api_url, settings)
        rows = result.pop("rows")
        report |= {"cold_first_request_s": result["cold_s"], "warm_request_s": result["warm_s"]}
        report["unet_rows_per_execution"] = result["unet_rows_per_execution"]
    else:
        lora_ready = build(model_dir, folder / "model_repository", adapters=AdapterBuild(lora=True))
        registry_dir = folder / f"registry-{label}"
        save_registry(build_registry(loras_dir, lora_ready, model_dir, len(names)), registry_dir)
        costs = engine_costs(plain, lora_ready, registry_dir, names, settings)
    entries = LoraRegistry.load(registry_dir).entries
    report["adapter_bytes"] = {name: entries[name].bytes for name in names}
    report["unet_ms_per_row"] = costs
    report.setdefault("ready_s", {})
    report["ready_s"]["prepare (once per file)"] = _prepare_seconds(loras_dir, lora_ready, model_dir)
    report["ready_s"]["fused: fuse + export + session"] = fused_ready_s(
        model_dir, loras_dir / f"{names[0]}.safetensors", plain
    )
    loop.write_json(out, rows, **report)
    table = [loop.format_table(rows, "img")] if rows else []
    return "\n".join([*table, *_lines(report), f"written to {out}"])


def _prepare_seconds(loras_dir: Path, engines: EngineFolder, model_dir: Path) -> float:
    """Seconds to read one LoRA file as diffusers does, for these engines (no cache; the median of 3)."""
    slots = engines.lora_slots()
    path = next(iter(sorted(loras_dir.glob("*.safetensors"))))
    times = []
    for _ in range(3):  # the first pays for imports
        started = time.perf_counter()
        prepare(path, model_dir, engines.family.pipeline_class, slots)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _triton_load_seconds(metrics_url: str) -> float | None:
    """Mean seconds per adapter load in the engine instances, from Triton's metrics."""
    from serve import metrics

    text = httpx.get(metrics_url).text
    seconds = _sum_series(text, metrics.ADAPTER_LOAD_SECONDS.series[0])
    loads = _sum_series(text, metrics.ADAPTER_LOADS.series[0])
    return seconds / loads if loads else None


def _sum_series(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def _lines(report: dict) -> list[str]:
    lines = []
    if "cold_first_request_s" in report:
        cold, warm = report["cold_first_request_s"], report["warm_request_s"]
        lines.append(
            f"cold adapter, first request: p50 {statistics.median(cold) * 1000:.0f} ms; the same adapter warm: p50 "
            f"{statistics.median(warm) * 1000:.0f} ms ({len(cold)} adapters)"
        )
    if "uploaded" in report:
        up = {k: statistics.median(v) * 1000 for k, v in report["uploaded"].items()}
        lines.append(
            f"uploaded while running ({len(report['uploaded']['upload_s'])} LoRAs, p50): upload {up['upload_s']:.0f} "
            f"ms, upload to first image {up['first_image_s']:.0f} ms; the never-seen adapter's first request "
            f"{up['never_seen_s']:.0f} ms, then warm {up['warm_s']:.0f} ms"
        )
    if "reference" in report:
        reference = report["reference"]
        lines.append(
            "IP-Adapter reference, p50: "
            + ", ".join(
                f"{label} {statistics.median(r['s']) * 1000:.0f} ms ({r['image_encoder_executions']} image-encoder "
                f"executions in {len(r['s'])} requests)"
                for label, r in reference.items()
            )
        )
    if "identity" in report:
        lines.append(
            "identity (IP-Adapter FaceID), p50: "
            + ", ".join(f"{label} {statistics.median(s) * 1000:.0f} ms" for label, s in report["identity"].items())
        )
    lines += [
        "making an adapter ready: "
        + ", ".join(f"{k} {v:.3f} s" for k, v in report["ready_s"].items() if v is not None),
        f"adapter size: {statistics.mean(report['adapter_bytes'].values()) / 2**20:.2f} MiB (prepared, rank "
        f"{report['settings']['rank']})",
        "UNet ms/row in-process at batch "
        + str(report["settings"]["batch"])
        + ": "
        + ", ".join(f"{k} {v:.2f}" for k, v in report["unet_ms_per_row"].items()),
    ]
    if "unet_rows_per_execution" in report:
        batching = report["unet_rows_per_execution"].items()
        lines.append("UNet rows per execution served: " + ", ".join(f"{k} {v:.1f}" for k, v in batching))
    return lines
