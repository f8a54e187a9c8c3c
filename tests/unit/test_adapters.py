"""Adapters without servers: reading LoRA files as diffusers does, the per-row LoRA layers, banks, IP scales, checks."""

import asyncio
import json
import shutil

import numpy as np
import pytest
import torch

from build_engines.text_to_image.adapters import AdapterBuild
from build_engines.text_to_image.build import build
from build_engines.text_to_image.ip_adapter import IpAdapterFolder, ip_layers, load_into_unet
from build_engines.text_to_image.loras import build_registry, save_registry
from build_engines.text_to_image.random_adapters import make_ip_adapter, make_lora
from serve.adapters.ip_adapter import IpScales
from serve.adapters.lora import LoraBanks, Slot, parse_row, row_text
from serve.adapters.lora_files import AdapterError, prepare, weightless
from serve.adapters.lora_layers import lora_ready, save_slots, slots_of
from serve.adapters.registry import ERROR, READY, LoraEntry, LoraRegistry
from serve.adapters.requests import StackAdapters
from serve.errors import InvalidInput
from serve.protocol.schema import GenerationRequest
from serve.text_to_image.engine_folder import PIPELINE, EngineFolder
from serve.text_to_image.generation import AdapterInputs, Generation, SamplingParams
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.triton.engine_files import EngineFiles
from tests.conftest import diffusers_reference, psnr, reference_images

SD = "StableDiffusionPipeline"


@pytest.fixture(scope="module")
def slots(default_model):
    return {engine: slots_of(weightless(default_model, engine)) for engine in ("text_encoder", "unet")}


def test_kohya_and_diffusers_files_of_one_lora_read_the_same(default_model, slots, tmp_path):
    make_lora(default_model, tmp_path / "d.safetensors", rank=4, alpha=2, seed=7)
    make_lora(default_model, tmp_path / "k.safetensors", rank=4, alpha=2, seed=7, fmt="kohya")
    ours = prepare(tmp_path / "d.safetensors", default_model, SD, slots)
    kohya = prepare(tmp_path / "k.safetensors", default_model, SD, slots)
    assert ours.layers == kohya.layers and ours.layers["text_encoder"] > 0 and ours.layers["unet"] > 0
    assert ours.tensors.keys() == kohya.tensors.keys()
    for key, value in ours.tensors.items():
        np.testing.assert_array_equal(value, kohya.tensors[key], err_msg=key)
    # alpha / rank = 0.5 is folded into B: the same LoRA with alpha = rank changes each layer twice as much
    make_lora(default_model, tmp_path / "a.safetensors", rank=4, alpha=4, seed=7)
    doubled = prepare(tmp_path / "a.safetensors", default_model, SD, slots)
    layer = next(k.removesuffix(".up") for k in ours.tensors if k.startswith("unet.") and k.endswith(".up"))

    def delta(prepared):
        up, down = prepared.tensors[f"{layer}.up"], prepared.tensors[f"{layer}.down"]
        return up.reshape(len(up), -1) @ down.reshape(len(down), -1)

    np.testing.assert_allclose(delta(doubled), 2 * delta(ours), rtol=1e-5, atol=1e-7)


def test_files_that_cannot_be_served_say_why(default_model, slots, tmp_path, tiny_xl_model):
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(AdapterError, match="not a readable LoRA file"):
        prepare(tmp_path / "junk.safetensors", default_model, SD, slots)
    make_lora(tiny_xl_model, tmp_path / "xl.safetensors", rank=2, seed=1, text_encoder=False)
    with pytest.raises(AdapterError, match="made for another base model"):
        prepare(tmp_path / "xl.safetensors", default_model, SD, slots)


def test_the_registry_reports_each_file_and_reuses_what_it_prepared(default_model, engine_dir, tmp_path, monkeypatch):
    ready = tmp_path / "engines"  # the embedded model's engine folder, as if built LoRA-ready
    for engine in ("text_encoder", "unet"):
        (ready / engine).mkdir(parents=True)
        save_slots(slots_of(weightless(default_model, engine)), EngineFiles(ready / engine).lora_slots)
    shutil.copy2(engine_dir / PIPELINE, ready / PIPELINE)
    loras = tmp_path / "loras"
    make_lora(default_model, loras / "good.safetensors", rank=2, seed=3)
    make_lora(default_model, loras / "bad name!.safetensors", rank=2, seed=3)
    (loras / "broken.safetensors").write_bytes(b"\0" * 64)
    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "home"))
    registry = build_registry(loras, EngineFolder(ready), default_model)
    assert registry.get("good").status == READY and registry.get("good").rank == 2
    assert registry.get("broken").status == ERROR and "not a readable" in registry.get("broken").error
    assert registry.get("bad name!").status == ERROR and "name must match" in registry.get("bad name!").error

    read_again = []

    def reading(path, *_args):
        read_again.append(path.name)
        raise AdapterError("still broken")

    monkeypatch.setattr("serve.adapters.lora_files.prepare", reading)
    again = build_registry(loras, EngineFolder(ready), default_model)
    assert again.get("good") == registry.get("good") and read_again == ["broken.safetensors"]


class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(6, 5)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, y):
        return self.linear(x), self.conv(y)


def test_each_row_gets_exactly_its_own_adapters_and_weights():
    torch.manual_seed(0)
    toy = _Toy().eval()
    ready, slots, _ = lora_ready(toy, toy)
    adapters = {
        name: {i: (torch.randn(s.down_shape(rank)), torch.randn(s.up_shape(rank))) for i, s in enumerate(slots)}
        for name, rank in (("a", 2), ("b", 3))
    }
    numpy_adapters = {n: {i: (d.numpy(), u.numpy()) for i, (d, u) in t.items()} for n, t in adapters.items()}
    banks = LoraBanks("toy", slots, lambda name: numpy_adapters[name], resident=2)
    rows = [(("a", 1.0),), (("b", 1.0),), (("a", 0.5), ("b", -1.0)), ()]
    scale, bank, _ = banks.feeds(rows)
    x, y = torch.randn(4, 7, 6), torch.randn(4, 3, 5, 5)
    args = [x, y, torch.from_numpy(scale)]
    for i in range(len(slots)):
        args += [torch.from_numpy(bank[f"lora_{part}_{i}"]) for part in ("down", "up", "column")]
    with torch.no_grad():
        got_linear, got_conv = ready(*args)
        for row, wanted in enumerate(rows):
            linear, conv = toy.linear.base(x[row]), toy.conv.base(y[row : row + 1])
            for name, weight in wanted:
                (down_l, up_l), (down_c, up_c) = adapters[name][0], adapters[name][1]
                linear = linear + weight * (x[row] @ down_l.T @ up_l.T)
                conv = conv + weight * torch.nn.functional.conv2d(
                    torch.nn.functional.conv2d(y[row : row + 1], down_c, padding=1), up_c
                )
            torch.testing.assert_close(got_linear[row], linear, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got_conv[row : row + 1], conv, rtol=1e-5, atol=1e-5)


class _Frames(_Toy):
    """The toy over videos: each row's frames are rows of its layers (as in a motion UNet), each video's together."""

    def forward(self, x, y):
        videos = x.shape[0]
        linear, conv = super().forward(x.flatten(0, 1), y.flatten(0, 1))
        return linear.unflatten(0, (videos, -1)), conv.unflatten(0, (videos, -1))


def test_every_frame_of_a_video_row_gets_its_row_s_adapters():
    torch.manual_seed(1)
    frames, toy = _Frames().eval(), _Toy().eval()
    toy.load_state_dict(frames.state_dict())
    (ready_frames, _, extras), (ready_toy, _, _) = lora_ready(frames, frames), lora_ready(toy, toy)
    banks = extras.sample(3, torch.Generator().manual_seed(2))
    x, y = torch.randn(3, 4, 7, 6), torch.randn(3, 4, 3, 5, 5)
    with torch.no_grad():
        got = ready_frames(x, y, *banks.values())
        for frame in range(4):
            want = ready_toy(x[:, frame], y[:, frame], *banks.values())
            torch.testing.assert_close(got[0][:, frame], want[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got[1][:, frame], want[1], rtol=1e-5, atol=1e-5)


def test_banks_hold_the_most_recently_used_and_a_batch_all_it_needs():
    slot = Slot("layer", "linear", 3, 2)
    loaded, events = [], []

    def load(name):
        loaded.append(name)
        return {0: (np.ones((1, 3), np.float32), np.ones((2, 1), np.float32))}

    banks = LoraBanks("m", [slot, Slot("other", "linear", 2, 2)], load, 2, lambda kind, name, _: events.append(kind))
    for name in "abab":
        banks.feeds([((name, 1.0),)])
    assert loaded == ["a", "b"] and banks.held == ["a", "b"]
    banks.feeds([(("c", 1.0),)])
    assert banks.held == ["b", "c"] and events.count("evict") == 1
    scale, bank, _ = banks.feeds([(("a", 0.5),), (("b", 1.0), ("c", 2.0)), ()])  # three in one batch: all held for it
    assert scale.tolist() == [[0.5, 0, 0], [0, 1.0, 2.0], [0, 0, 0]]
    assert bank["lora_column_0"].tolist() == [0, 1, 2] and bank["lora_down_0"].shape == (3, 3)
    assert bank["lora_down_1"].shape == (1, 2) and not bank["lora_up_1"].any()  # no adapter touches it
    assert len(banks.held) == 3


def test_rows_travel_as_text():
    assert parse_row(row_text([("a", 0.5), ("b", -1.0)])) == (("a", 0.5), ("b", -1.0))
    assert parse_row(row_text([])) == () and parse_row("") == ()


def test_ip_scales_are_what_set_ip_adapter_scale_gives(default_model, tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    folder = IpAdapterFolder.read(make_ip_adapter(default_model, tmp_path / "ip"))
    unet = UNet2DConditionModel.from_pretrained(default_model / "unet")
    config = json.loads((default_model / "unet" / "config.json").read_text())
    scales = IpScales(config, ip_layers(unet))
    pipeline = StableDiffusionPipeline.from_pretrained(default_model)
    pipeline.load_ip_adapter(str(folder.weights.parent), subfolder="", weight_name=folder.weights.name)
    for scale in (0.6, {"up": {"block_0": [0.0, 1.0]}}, {"down": 0.3, "mid": 0.0, "up": {"block_0": [0.5]}}):
        pipeline.set_ip_adapter_scale(scale)
        processors = pipeline.unet.attn_processors
        want = [processors[name].scale[0] for name in scales.layers]
        np.testing.assert_allclose(scales(scale), want, err_msg=str(scale))
    with pytest.raises(ValueError, match="block_7"):
        scales({"up": {"block_7": 1.0}})
    layers, hidden_states = load_into_unet(weightless(default_model, "unet"), [folder])
    assert layers == scales.layers and hidden_states == (False,)


def test_the_stack_refuses_adapters_it_does_not_have(tmp_path):
    save_registry(LoraRegistry({"ok": LoraEntry("ok", READY), "bad": LoraEntry("bad", ERROR, "corrupt")}), tmp_path)
    offered = StackAdapters(str(tmp_path), ip_adapter=False)
    offered.check(GenerationRequest(prompt="x", loras=[{"name": "ok"}]))
    for loras, message in (([{"name": "nope"}], "unknown LoRA adapter 'nope'"), ([{"name": "bad"}], "corrupt")):
        with pytest.raises(InvalidInput, match=message) as refused:
            offered.check(GenerationRequest(prompt="x", loras=loras))
        assert refused.value.field == "loras.0.name"
    with pytest.raises(InvalidInput, match="model xl takes no LoRA adapters .start the stack with --loras xl=DIR"):
        StackAdapters(model="xl").check(GenerationRequest(prompt="x", loras=[{"name": "ok"}]))
    with pytest.raises(InvalidInput, match="no IP-Adapter") as refused:
        offered.check(GenerationRequest(prompt="x", ip_adapter_image="aGk="))
    assert refused.value.field == "ip_adapter_image"


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_transformer_loras_per_row_match_diffusers_load_lora_weights(name, transformer_models, tmp_path):
    """SD3's and Flux's LoRAs (transformer and CLIP layers), read as their pipelines read them, one or two per row.

    The LoRA-ready engines come from the machine's engine cache (built there once, by content)."""
    model = transformer_models[name]
    folder = build(model, repository=tmp_path / "repository", adapters=AdapterBuild(lora=True))
    for seed, lora in enumerate(("a", "b"), start=1):
        make_lora(model, tmp_path / "loras" / f"{lora}.safetensors", rank=4 - seed, seed=seed, strength=0.6)
    registry = build_registry(tmp_path / "loras", folder, model)
    assert all(e.layers["transformer"] > 0 and e.layers["text_encoder"] > 0 for e in registry.entries.values())
    save_registry(registry, tmp_path / "registry")
    ours = TextToImagePipeline(folder, OnnxRuntimeRunner(folder, loras_dir=tmp_path / "registry"))
    theirs = diffusers_reference(model)
    for lora in ("a", "b"):
        theirs.load_lora_weights(str(tmp_path / "loras"), weight_name=f"{lora}.safetensors", adapter_name=lora)
    plain = None
    for loras in ((("a", 0.8),), (("a", 0.5), ("b", 1.0)), ()):
        job = Generation(
            SamplingParams("a red fox", "", 1, 96, 64, 4, 4.0, 3, "euler"), adapters=AdapterInputs(loras=loras)
        )
        got = asyncio.run(ours.generate(job)).images[0]
        if loras:
            theirs.enable_lora()
            theirs.set_adapters([lora for lora, _ in loras], [weight for _, weight in loras])
        else:
            theirs.disable_lora()
            plain = got
        want = reference_images(
            theirs,
            "euler",
            samplers=ours.family.samplers,
            prompt="a red fox",
            width=96,
            height=64,
            num_inference_steps=4,
            guidance_scale=4.0,
            seed=3,
        )[0]
        assert psnr(got, want) >= 40, loras
    with_a = asyncio.run(
        ours.generate(
            Generation(
                SamplingParams("a red fox", "", 1, 96, 64, 4, 4.0, 3, "euler"),
                adapters=AdapterInputs(loras=(("a", 0.8),)),
            )
        )
    )
    assert psnr(with_a.images[0], plain) < 40  # the adapter changes the image beyond the parity bar


def _toy_feeds(slots, adapters: dict, rows: list) -> tuple[list, dict]:
    """The toy's LoRA inputs for ``rows`` from ``adapters`` (numpy, loaded as given: no check on the way)."""
    banks = LoraBanks("toy", slots, lambda name: adapters[name], resident=4)
    banks._adapter = lambda name: adapters[name]  # the engine's load check bypassed: the graph alone contains it
    scale, bank, refused = banks.feeds(rows)
    assert not refused
    return [scale, *(bank[f"lora_{part}_{i}"] for i in range(len(slots)) for part in ("down", "up", "column"))], bank


@pytest.mark.parametrize("poison", [np.nan, np.inf, 3e38], ids=["nan", "inf", "overflowing"])
def test_a_poisoned_bank_reaches_no_row_but_its_own_in_torch_and_in_the_exported_graph(poison, tmp_path):
    """Rows are selected, not scaled by 0: a plain row batched with a poisoned adapter's comes out as it does alone,
    in PyTorch and in the ONNX graph the engines run; so does a good adapter's row next to overflowing (finite)
    weights. Weights that are not finite never reach the graph: the engine refuses them at load (the test below)."""
    import onnxruntime

    torch.manual_seed(3)
    toy = _Toy().eval()
    ready, slots, extras = lora_ready(toy, toy)
    good = {
        i: (
            np.random.default_rng(i).standard_normal(s.down_shape(2)).astype(np.float32),
            np.random.default_rng(i + 9).standard_normal(s.up_shape(2)).astype(np.float32),
        )
        for i, s in enumerate(slots)
    }
    bad = {
        i: (np.full(s.down_shape(3), poison, np.float32), np.full(s.up_shape(3), poison, np.float32))
        for i, s in enumerate(slots)
    }
    adapters = {"good": good, "bad": bad}
    x, y = (
        np.random.default_rng(1).standard_normal((3, 7, 6), np.float32),
        np.random.default_rng(2).standard_normal((3, 3, 5, 5), np.float32),
    )
    batched, _ = _toy_feeds(slots, adapters, [(), (("good", 0.7),), (("bad", 1.0),)])
    alone = [_toy_feeds(slots, adapters, [row])[0] for row in [(), (("good", 0.7),)]]
    torch.onnx.export(
        ready,
        tuple(torch.from_numpy(a) for a in [x, y, *batched]),
        tmp_path / "toy.onnx",
        input_names=["x", "y", *extras.names],
        dynamo=False,
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}} | extras.dynamic_axes,
    )
    session = onnxruntime.InferenceSession(tmp_path / "toy.onnx")

    def run_torch(xs, ys, feeds):
        with torch.no_grad():
            return [out.numpy() for out in ready(*(torch.from_numpy(a) for a in [xs, ys, *feeds]))]

    def run_onnx(xs, ys, feeds):
        names = [i.name for i in session.get_inputs()]
        return session.run(None, dict(zip(names, [xs, ys, *feeds], strict=True)))

    for run in (run_torch, run_onnx):
        together = run(x, y, batched)
        for row in (0, 1) if np.isfinite(poison) else (0,):
            solo = run(x[row : row + 1], y[row : row + 1], alone[row])
            for out, single in zip(together, solo, strict=True):
                assert np.isfinite(out[row]).all(), (run.__name__, row)
                np.testing.assert_allclose(out[row], single[0], rtol=1e-5, atol=1e-6, err_msg=f"{run.__name__} {row}")
        assert not all(np.isfinite(out[2]).all() for out in together), "the poisoned row's own output is poisoned"


def test_an_adapter_that_is_not_finite_fails_only_the_rows_that_name_it():
    slot = Slot("layer", "linear", 3, 2)
    weights = {"good": np.ones((1, 3), np.float32), "bad": np.full((1, 3), np.nan, np.float32)}
    banks = LoraBanks("m", [slot], lambda name: {0: (weights[name], np.ones((2, 1), np.float32))}, 4)
    scale, bank, refused = banks.feeds([(("good", 1.0),), (("bad", 1.0),), (), (("good", 0.5), ("bad", 1.0))])
    assert set(refused) == {1, 3} and "NaN or Inf" in str(refused[1])
    assert scale.tolist() == [[1.0], [0.0], [0.0], [0.0]] and np.isfinite(bank["lora_down_0"]).all()
    assert banks.held == ["good"]

    from serve.triton.onnx_backend import run_batched

    class _Session:
        output_names = ["y"]

        def run(self, feeds, shared):
            return [feeds["x"] * 2]

    def prepare(merged):
        return merged, {}, {1: ValueError("its adapter")}  # merged row 1: the second request's

    feeds = [{"x": np.ones((1, 2), np.float32)}, {"x": np.ones((1, 2), np.float32)}, {"x": np.ones((2, 2), np.float32)}]
    results = run_batched(_Session(), feeds, None, prepare)
    assert isinstance(results[1], ValueError)
    assert results[0]["y"].tolist() == [[2, 2]] and results[2]["y"].shape == (2, 2)


def _poisoned_file(source, target, poison: float):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(source), framework="numpy") as handle:
        metadata = handle.metadata()
    tensors = load_file(source)
    first = sorted(key for key in tensors if key.startswith("unet."))[0]
    tensors[first] = np.full_like(tensors[first], poison)
    save_file(tensors, target, metadata)
    return target


def test_weights_past_the_limits_are_refused_naming_why_and_kept_ones_are_balanced(default_model, slots, tmp_path):
    from serve.adapters.limits import LoraLimits

    good = make_lora(default_model, tmp_path / "good.safetensors", rank=3, seed=5)
    for poison, why in ((np.nan, "NaN or Inf"), (np.inf, "NaN or Inf"), (3e38, "--lora-max-norm")):
        with pytest.raises(AdapterError, match=why):
            prepare(_poisoned_file(good, tmp_path / "poisoned.safetensors", poison), default_model, SD, slots)
    with pytest.raises(AdapterError, match="rank 3, over the largest served, 2"):
        prepare(good, default_model, SD, slots, LoraLimits(max_rank=2))
    prepared = prepare(good, default_model, SD, slots)
    with pytest.raises(AdapterError, match="--lora-max-norm"):
        prepare(good, default_model, SD, slots, LoraLimits(max_norm=prepared.norm * 0.99))
    for key, down in prepared.tensors.items():
        if key.endswith(".down"):
            up = prepared.tensors[key.removesuffix(".down") + ".up"]
            np.testing.assert_allclose(np.linalg.norm(down), np.linalg.norm(up), rtol=1e-4, err_msg=key)
    assert 0 < prepared.norm < 20  # a test LoRA: far under the default bound (docs/DECISIONS.md)
