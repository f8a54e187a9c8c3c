"""The torch runtime with what the ONNX path builds beside a model's own engines: LoRAs, ControlNets, a tiny VAE.

Built on a CPU in fp32 from the random small models, LoRAs and ControlNets the other tests make; the served pipeline
over each torch-runtime folder draws what it draws over the ONNX build of the same model and adapters. The ControlNet
engine's batch buckets (padded rows, per-row scales, residuals sliced back), the LoRA-ready UNet's (banks zero-padded
into static tensors shared by the buckets) and the reduced-precision casts are checked against the fp32 module on a
CPU too (CUDA graphs are a GPU's).
"""

import asyncio
import filecmp
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from build_engines.text_to_image.adapters import AdapterBuild
from build_engines.text_to_image.build import build, engine_dir_for
from build_engines.text_to_image.controlnets import controlnets_key
from build_engines.text_to_image.loras import build_registry, save_registry
from build_engines.text_to_image.random_adapters import make_lora
from serve.adapters.lora import ADAPTERS_INPUT, SCALE_INPUT, LoraBanks, bank_names
from serve.adapters.registry import RegistryLoader
from serve.text_to_image.engine_folder import DIFFUSERS, EngineFolder
from serve.text_to_image.generation import AdapterInputs, Control, Generation, ImageInputs, SamplingParams
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.text_to_image.spec import UNET, VAE_DECODER
from serve.text_to_image.torch_engines import LINKED, LORA_RANKS
from serve.triton.onnx_backend import open_engine
from serve.triton.runtimes import Runtime
from serve.triton.spec import on_gpu, read_model_config
from serve.triton.torch_runtime import DEFAULT_BUCKETS, CaptureShape, TorchEngine, TorchSession
from tests.adapters import LORAS
from tests.conftest import psnr
from tests.controls import edges_image, input_image

PROMPT = "a red heart icon"


def _pipeline(path: Path, capture: bool = False, loras: Path | None = None) -> TextToImagePipeline:
    """The served pipeline over ``path``, in-process on the CPU (``capture``: its torch engines' buckets made).

    ``loras``: the registry folder its LoRA-ready engines take adapters from.
    """
    folder = EngineFolder(path)
    runner = OnnxRuntimeRunner(folder, device="cpu", loras_dir=loras)
    if capture:
        for session in runner.sessions.values():
            session.capture()  # on a CPU a bucket is the eager call on the padded rows
    return TextToImagePipeline(folder, runner)


def _same_files(source: Path, linked: Path) -> bool:
    """Whether ``linked`` holds each file of ``source`` (a link of it, or of the same file a cached build saw)."""
    files = [path.relative_to(source) for path in source.rglob("*") if path.is_file()]
    return bool(files) and all(filecmp.cmp(source / name, linked / name, shallow=False) for name in files)


def _draw(pipeline: TextToImagePipeline, job: Generation) -> np.ndarray:
    return np.stack(asyncio.run(pipeline.generate(job)).images)


@pytest.fixture(scope="module")
def torch_control(default_model, controlnet_dirs, tmp_path_factory):
    """The tiny SD on the torch runtime with its two ControlNets and an SDXL one (refused), installed."""
    repository = tmp_path_factory.mktemp("torch-repository-controlnets")
    folder = build(
        default_model, repository, runtime="torch", precision="fp32", controlnets=controlnet_dirs.for_sd, device="cpu"
    )
    return folder, repository


@pytest.fixture(scope="module")
def taesd(default_model, tmp_path_factory) -> Path:
    """A random-weight AutoencoderTiny at the tiny SD's latent scale (seeded: the same folder, the same builds)."""
    from diffusers import AutoencoderTiny

    from serve.text_to_image.families import family_of_folder

    blocks = family_of_folder(default_model).dims.vae_scale_factor.bit_length()
    torch.manual_seed(7)
    tiny = AutoencoderTiny(
        encoder_block_out_channels=(8,) * blocks,
        decoder_block_out_channels=(8,) * blocks,
        num_encoder_blocks=(1,) * blocks,
        num_decoder_blocks=(1,) * blocks,
        latent_channels=4,
    )
    folder = tmp_path_factory.mktemp("taesd") / "taesd"
    tiny.save_pretrained(folder)
    return folder


def test_the_torch_build_links_its_controlnets_and_names_them_in_its_key(torch_control, default_model, controlnet_dirs):
    folder, repository = torch_control
    assert {choice.runtime for choice in folder.runtimes().values()} == {Runtime.TORCH}
    assert controlnets_key(controlnet_dirs.for_sd) in folder.key
    assert (
        folder.path
        == engine_dir_for(default_model, "fp32", controlnets=controlnet_dirs.for_sd, runtime="torch")
        != engine_dir_for(default_model, "fp32", runtime="torch")
    )
    assert folder.controlnets.ready == ("depth", "edges") and folder.controlnets.get("xl").error
    assert sorted(p.name for p in (folder.path / LINKED).iterdir()) == ["controlnet_depth", "controlnet_edges"]
    for name in ("edges", "depth"):  # linked, not referenced: the folder is self-contained
        assert _same_files(controlnet_dirs.sd[name], folder.path / LINKED / f"controlnet_{name}")
    assert (folder.path / DIFFUSERS / "unet").is_dir()
    assert set(folder.memory_models) == set(folder.specs)  # each loaded and measured in a fresh process
    controlnet, rows = (
        TorchEngine.of(folder.engine("controlnet_edges")),
        folder.specs["controlnet_edges"].max_batch_size,
    )
    assert controlnet.buckets == tuple(b for b in DEFAULT_BUCKETS if b <= rows)  # a timestep: buckets, CUDA graphs
    assert [name for name, _, _ in controlnet.inputs][-2:] == ["controlnet_cond", "conditioning_scale"]
    unet_inputs = [name for name, _, _ in TorchEngine.of(folder.engine(UNET)).inputs]
    assert unet_inputs == [t.name for t in folder.specs[UNET].graph_inputs] and unet_inputs[-1] == "residual_mid"
    config = read_model_config(repository / "controlnet_edges" / "config.pbtxt")
    assert config.backend == "python"


def test_controlnets_on_the_torch_runtime_draw_what_the_onnx_engines_draw(torch_control, control_engine_dir):
    folder, _ = torch_control
    ours, theirs = _pipeline(folder.path, capture=True), _pipeline(control_engine_dir)
    controls = (Control("edges", edges_image(64), 0.8), Control("depth", input_image(48), 0.6, 0.1, 0.7))
    job = Generation(SamplingParams(PROMPT, "", 3, 64, 64, 6, 7.5, 3, "euler"), inputs=ImageInputs(controls=controls))
    got, want = _draw(ours, job), _draw(theirs, job)  # 6 UNet and ControlNet rows: padded to the 8-row bucket
    assert got.shape == want.shape == (3, 64, 64, 3)
    assert psnr(got, want) >= 40
    plain = Generation(SamplingParams(PROMPT, "blurry", 1, 64, 64, 6, 7.5, 3, "ddim"))
    assert psnr(_draw(ours, plain), _draw(theirs, plain)) >= 40  # zero residuals: the plain image
    assert psnr(got, _draw(ours, Generation(job.sampling))) < 35  # the ControlNets steer it
    sessions = ours.engines.sessions
    assert all(s.eager_total == 0 for s in sessions.values() if isinstance(s, TorchSession))


def test_a_controlnet_engine_s_buckets_pad_rows_and_scales_and_slice_its_residuals_back(torch_control):
    folder, _ = torch_control
    spec = folder.specs["controlnet_edges"]
    rng = np.random.default_rng(4)
    feeds = {
        t.name: rng.standard_normal((3, *t.shape(folder.family.dims.sample_size))).astype(np.float32)
        for t in spec.graph_inputs
    }
    feeds["timestep"] = np.array([999.0, 500.5, 1.0], np.float32)
    feeds["conditioning_scale"] = np.array([0.8, 0.0, 1.3], np.float32)  # per row: one off
    feeds["controlnet_cond"] = rng.uniform(0, 1, feeds["controlnet_cond"].shape).astype(np.float32)
    eager = open_engine(folder.engine("controlnet_edges"), device="cpu")
    bucketed = open_engine(folder.engine("controlnet_edges"), device="cpu")
    bucketed.capture(buckets=(4,))
    want = eager.run(feeds)
    got = bucketed.run(feeds)  # 3 rows in the 4-row bucket, the last row (and its scale) repeated
    assert bucketed.eager_total == 0 and len(got) == len(spec.outputs)
    for a, b, output in zip(got, want, spec.outputs, strict=True):
        assert a.shape == b.shape and a.shape[0] == 3, output.name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        assert not a[1].any()  # a zero scale gives zero residuals, whatever the padding
    at = CaptureShape(12, 8, 2)  # a stack's --graph-size 48x32 --graph-chunks 2: the residuals the UNet captures
    controlnet, unet = (TorchEngine.of(folder.engine(name)) for name in ("controlnet_edges", UNET))
    bucketed.capture(buckets=(4,), shapes=[at])
    other = {
        name: np.ones((2, *shape), np.float32)
        for (name, _, _), shape in zip(controlnet.inputs, controlnet.input_shapes(at), strict=True)
    }
    residuals = bucketed.run(other)
    assert bucketed.eager_total == 0
    assert [r.shape[1:] for r in residuals] == list(unet.input_shapes(at)[-len(residuals) :])
    reduced = TorchSession(folder.engine("controlnet_edges"), "bf16", device="cpu")  # behind CastIO: fp32 in and out
    reduced.capture(buckets=(4,))
    for a, b in zip(reduced.run(feeds), want, strict=True):
        assert a.dtype == np.float32 and a.shape == b.shape
        assert np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))) < 5e-2


def test_a_tiny_vae_decoder_on_the_torch_runtime_draws_what_the_onnx_engines_draw(default_model, engine_dir, taesd):
    onnx = build(default_model, repository=None, vae_decoder=taesd)
    folder = build(default_model, None, runtime="torch", precision="fp32", vae_decoder=taesd, device="cpu")
    assert "taesd" in folder.key and folder.path != engine_dir_for(default_model, "fp32", runtime="torch")
    linked = folder.path / LINKED / VAE_DECODER
    assert sorted(p.name for p in (folder.path / LINKED).iterdir()) == [VAE_DECODER]
    assert _same_files(taesd, linked)
    assert TorchEngine.of(folder.engine(VAE_DECODER)).buckets == ()  # no timestep: eager, as the VAE always is
    job = Generation(SamplingParams(PROMPT, "", 2, 64, 64, 4, 7.5, 3, "euler"))
    got = _draw(_pipeline(folder.path), job)
    assert psnr(got, _draw(_pipeline(onnx.path), job)) >= 40
    assert psnr(got, _draw(_pipeline(engine_dir), job)) < 30  # the tiny decoder drew it, not the model's own


@pytest.fixture(scope="module")
def lora_builds(default_model, tmp_path_factory):
    """The tiny SD LoRA-ready on the torch runtime (installed) and through ONNX, each with two LoRAs prepared.

    Returns ``(torch folder, its registry folder, ONNX folder, its registry folder, repository)``.
    """
    repository = tmp_path_factory.mktemp("torch-repository-loras")
    lora = AdapterBuild(lora=True)
    ours = build(default_model, repository, runtime="torch", precision="fp32", adapters=lora, device="cpu")
    theirs = build(default_model, None, adapters=lora)  # the ONNX build the other LoRA tests use (cached)
    files = tmp_path_factory.mktemp("lora-files")
    for name in ("style", "kohya"):
        fmt, rank, seed = LORAS[name]
        make_lora(default_model, files / f"{name}.safetensors", rank=rank, seed=seed, fmt=fmt, strength=0.6)
    registries = []
    for folder in (ours, theirs):
        registry = tmp_path_factory.mktemp("lora-registry")
        save_registry(build_registry(files, folder, default_model), registry)
        registries.append(registry)
    return ours, registries[0], theirs, registries[1], repository


def test_the_torch_build_takes_the_onnx_build_s_lora_inputs(lora_builds):
    ours, _, theirs, _, repository = lora_builds
    assert {choice.runtime for choice in ours.runtimes().values()} == {Runtime.TORCH} and "lora" in ours.key
    assert set(ours.lora_slots()) == set(theirs.lora_slots()) == {"text_encoder", UNET}
    assert set(ours.memory_models) == set(ours.specs)  # each measured with a call's banks (without adapters)
    for engine, slots in ours.lora_slots().items():  # the same layers, so a file is read for both the same way
        assert slots == theirs.lora_slots()[engine]
        torch_engine = TorchEngine.of(ours.engine(engine))
        names = [name for name, _, _ in torch_engine.inputs]
        assert names[:-1] == [t.name for t in ours.specs[engine].graph_inputs] and names[-1] == SCALE_INPUT
        assert [name for name, _, _ in torch_engine.shared] == [n for i in range(len(slots)) for n in bank_names(i)]
    unet = TorchEngine.of(ours.engine(UNET))
    assert unet.buckets == tuple(b for b in DEFAULT_BUCKETS if b <= ours.specs[UNET].max_batch_size)
    assert dict(unet.padded)["lora_rank"] == LORA_RANKS
    config = read_model_config(repository / UNET / "config.pbtxt")
    assert config.backend == "python" and ADAPTERS_INPUT in {t.name for t in config.input}
    assert "LoraOnnxModel" in (repository / UNET / "1" / "model.py").read_text()  # the banks fed as ONNX's are
    assert json.loads((repository / UNET / "1" / "lora_slots.json").read_text())  # installed beside torch.json


def test_loras_on_the_torch_runtime_draw_what_the_onnx_engines_draw(lora_builds):
    ours_folder, ours_loras, theirs_folder, theirs_loras, _ = lora_builds
    ours = _pipeline(ours_folder.path, capture=True, loras=ours_loras)
    theirs = _pipeline(theirs_folder.path, loras=theirs_loras)
    sampling = SamplingParams(PROMPT, "blurry", 1, 64, 64, 3, 7.5, 3, "euler")
    for loras in ((("style", 0.8),), (("style", 0.5), ("kohya", 1.0))):
        job = Generation(sampling, adapters=AdapterInputs(loras=loras))
        got = _draw(ours, job)
        assert got.shape == (1, 64, 64, 3) and psnr(got, _draw(theirs, job)) >= 40, loras
    plain = _draw(ours, Generation(sampling))
    assert psnr(plain, _draw(theirs, Generation(sampling))) >= 40  # no adapters: a rank-1 zero bank, the plain UNet
    assert psnr(got, plain) < 30  # the LoRAs change it
    sessions = ours.engines.sessions
    assert sessions[UNET].eager_total == 0  # ranks 1 and 4 + 4 within the buckets' (zero-padded)


def _bank_feeds(folder: EngineFolder, registry: Path, rows: list) -> tuple[dict, dict]:
    """The UNet's inputs for ``rows`` (each row's adapters) and the banks they share, as the python backend makes."""
    loader = RegistryLoader(registry, UNET)
    scale, bank, refused = LoraBanks(UNET, folder.lora_slots()[UNET], loader, 4).feeds(rows)
    assert not refused
    rng = np.random.default_rng(5)
    side = folder.family.dims.sample_size
    feeds = {
        t.name: rng.standard_normal((len(rows), *t.shape(side))).astype(np.float32)
        for t in folder.specs[UNET].graph_inputs
    }
    feeds["timestep"] = np.linspace(999.0, 1.5, len(rows)).astype(np.float32)
    return feeds | {SCALE_INPUT: scale}, bank


def test_a_lora_ready_unet_s_buckets_hold_each_call_s_banks_zero_padded(lora_builds):
    folder, registry, _, _, _ = lora_builds
    eager = open_engine(folder.engine(UNET), device="cpu")
    bucketed = open_engine(folder.engine(UNET), device="cpu")
    bucketed.capture(buckets=(4,))
    assert len(bucketed.shapes) == len(LORA_RANKS)  # a bucket per rank, the banks' static tensors one set per rank
    calls = {
        "mixed": [(("style", 0.8),), (), (("style", 0.5), ("kohya", -1.0))],  # 3 rows in 4, rank 4 + 4 in 64
        "plain": [(), ()],  # no adapters: the rank-1 bucket
        "other": [(("kohya", 1.2),), (("kohya", 0.3),)],  # other banks into the same static tensors
    }
    fed = {name: _bank_feeds(folder, registry, rows) for name, rows in calls.items()}
    want = {name: eager.run(*fed[name])[0] for name in calls}
    for name in ("mixed", "plain", "other"):
        feeds, bank = fed[name]
        got = bucketed.run(feeds, bank)[0]
        assert got.shape == want[name].shape == (len(calls[name]), *want[name].shape[1:])
        np.testing.assert_allclose(got, want[name], rtol=1e-5, atol=1e-5, err_msg=name)
    feeds, bank = fed["mixed"]  # the first banks again, after others, as the loop inside Triton hands them
    tensors = bucketed.run_tensors({name: torch.from_numpy(array) for name, array in feeds.items()}, bank)
    np.testing.assert_allclose(tensors[0].numpy(), want["mixed"], rtol=1e-5, atol=1e-5)
    assert bucketed.eager_total == 0
    wide = {name: np.repeat(array, 17, axis=1 if "up" in name else 0) for name, array in bank.items()}  # rank 8 x 17
    np.testing.assert_allclose(bucketed.run(feeds, wide)[0], eager.run(feeds, wide)[0], rtol=1e-5, atol=1e-5)
    assert bucketed.eager_total == 1  # beyond the largest rank captured: eager, counted


def test_an_engine_call_s_text_rows_stay_on_the_host_wherever_its_tensors_are():
    on_device = SimpleNamespace(is_cuda=True)  # what the loop inside Triton hands a LoRA-ready engine on a GPU
    rows = np.full(2, "", dtype=object)
    assert on_gpu({"sample": on_device, ADAPTERS_INPUT: rows})
    assert not on_gpu({"sample": torch.zeros(2), ADAPTERS_INPUT: rows}) and not on_gpu({ADAPTERS_INPUT: rows})
