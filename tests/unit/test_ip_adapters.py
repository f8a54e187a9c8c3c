"""Several IP-Adapters and several references per request, with region masks: the request's shape and its checks,
and the export UNet's attention against diffusers' ``load_ip_adapter`` with lists and ``ip_adapter_masks``."""

import base64

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from build_engines.text_to_image.ip_adapter import IpAdapterFolder, IpReadyUnet, load_into_unet
from build_engines.text_to_image.random_adapters import make_ip_adapter
from serve.adapters.ip_adapter import MAX_REFERENCES, level_sides, preprocessed_masks, region_masks
from serve.errors import InvalidInput, invalid_input
from serve.protocol.ip_scale import ip_choices
from serve.protocol.schema import GenerationRequest
from serve.text_to_image.families.exports import UnetModule
from tests.images import encode

PNG = base64.b64encode(encode(Image.new("RGB", (8, 8)))).decode()
REF = "ref_" + "0" * 24


def _refused(**fields) -> tuple[str, str]:
    with pytest.raises(ValidationError) as error:
        GenerationRequest(prompt="x", **fields)
    refused = invalid_input(error.value)
    return refused.field, str(refused)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"ip_adapters": [{"images": [PNG] * (MAX_REFERENCES + 1)}]}, "ip_adapters.0.images"),
        ({"ip_adapters": [{"images": [PNG] * 3, "references": [REF] * 2}]}, "ip_adapters.0.images"),
        ({"ip_adapters": [{"name": "face"}]}, "ip_adapters.0.images"),
        ({"ip_adapters": [{"images": [PNG], "masks": [PNG, PNG]}]}, "ip_adapters.0.masks"),
        ({"ip_adapters": [{"images": [PNG]}] * 5}, "ip_adapters"),
        ({"ip_adapters": [{"name": "a", "images": [PNG]}, {"name": "a", "images": [PNG]}]}, "ip_adapters"),
        ({"ip_adapters": [{"images": [PNG]}], "ip_adapter_image": PNG}, "ip_adapters"),
        ({"ip_adapters": [{"images": ["###"]}]}, "ip_adapters.0.images"),
        ({"ip_adapters": [{"images": [PNG], "scale": 3}]}, "ip_adapters.0.scale"),
        ({"ip_adapters": [{"references": ["nope"]}]}, "ip_adapters.0.references.0"),
        ({"ip_adapter_image": PNG, "ip_adapter_reference": REF}, "ip_adapter_reference"),
        ({"ip_adapter_scale": 0.5}, "ip_adapter_scale"),
    ],
)
def test_bad_ip_adapter_fields_name_the_field(fields, field):
    assert _refused(**fields)[0] == field


def test_both_spellings_read_as_one_list_naming_their_fields():
    short = GenerationRequest(prompt="x", ip_adapter_image=PNG, ip_adapter_scale=0.5)
    (one,) = ip_choices(short)
    assert one.choice.images == [PNG] and one.choice.scale == 0.5 and one.choice.name is None
    assert one.name_of("images") == "ip_adapter_image" and one.name_of("references") == "ip_adapter_reference"
    full = GenerationRequest(
        prompt="x",
        ip_adapters=[{"name": "style", "images": [PNG]}, {"name": "face", "references": [REF], "masks": [PNG]}],
    )
    style, face = ip_choices(full)
    assert (style.choice.name, face.choice.name) == ("style", "face")
    assert face.name_of("masks", 0) == "ip_adapters.1.masks.0" and face.name_of("name") == "ip_adapters.1.name"
    assert ip_choices(GenerationRequest(prompt="x")) == []
    hashed = full.images_hashed()["ip_adapters"]
    assert hashed[0]["images"][0].startswith("sha256:") and hashed[1]["masks"][0].startswith("sha256:")


def _mask(height: int, width: int, left: bool) -> np.ndarray:
    """A region mask image: white on the left (or right) 40 % of the picture."""
    mask = np.zeros((height, width, 3), np.uint8)
    cut = int(width * 0.4)
    if left:
        mask[:, :cut] = 255
    else:
        mask[:, cut:] = 255
    return mask


@pytest.mark.parametrize(("height", "width"), [(64, 64), (72, 40)])
def test_region_masks_are_diffusers_masks_at_every_level(height, width):
    """``IPAdapterMaskProcessor``'s preprocessing and downsampling, for every level a UNet's queries sit at."""
    from diffusers.image_processor import IPAdapterMaskProcessor

    images = [_mask(height, width, True), _mask(height, width, False)]
    masks = preprocessed_masks(images, height, width)
    want = IPAdapterMaskProcessor().preprocess([Image.fromarray(m) for m in images], height=height, width=width)
    np.testing.assert_array_equal(masks, want[:, 0].numpy())
    assert set(np.unique(masks)) == {0.0, 1.0}
    sides = level_sides(height // 8, width // 8, (0, 1, 2))
    assert sides[2] == (-(-height // 32), -(-width // 32))
    for level, grid in region_masks(masks, sides).items():
        h, w = sides[level]
        for i in range(2):
            reference = IPAdapterMaskProcessor.downsample(want[i : i + 1, 0], 1, h * w, 1)
            np.testing.assert_array_equal(grid[i].reshape(-1), reference.reshape(-1).numpy())


@pytest.fixture(scope="module")
def two_adapters(default_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ip")
    return [
        IpAdapterFolder.read(make_ip_adapter(default_model, folder / name, seed=s)) for name, s in (("a", 5), ("b", 6))
    ]


def test_the_export_unet_is_diffusers_multi_ip_adapter_with_masks(default_model, two_adapters):
    """Two adapters (one with two references and masks, one with one reference, unmasked), and one row without the
    second adapter (scale 0, no reference): each row as diffusers' UNet with ``load_ip_adapter`` lists gives it."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    height = width = 64
    latent = (height // 8, width // 8)
    want_unet = UNet2DConditionModel.from_pretrained(default_model / "unet").eval()
    want_unet._load_ip_adapter_weights([f.state_dict() for f in two_adapters], low_cpu_mem_usage=False)
    ours = UnetModule(UNet2DConditionModel.from_pretrained(default_model / "unet").eval(), ("image_embeds",))
    layers, _ = load_into_unet(ours.unet, two_adapters)
    levels = tuple(sorted({p.level for p in ours.unet.attn_processors.values() if hasattr(p, "level")}))
    export = IpReadyUnet(ours, ours.unet.ip_inputs, 2, levels)
    sample, text = torch.randn(1, 4, *latent), torch.randn(1, 16, 64)
    timestep = torch.tensor([500.0])
    embeds = [torch.randn(1, 2, 24), torch.randn(1, 1, 24)]
    images = [_mask(height, width, True), _mask(height, width, False)]
    masks = preprocessed_masks(images, height, width)
    scales = (0.8, 0.6)

    def ours_row(second: bool) -> torch.Tensor:
        padded = [torch.zeros(1, MAX_REFERENCES, 24) for _ in range(2)]
        padded[0][:, :2], padded[1][:, :1] = embeds[0], embeds[1]
        references = torch.zeros(1, 2, MAX_REFERENCES)
        references[0, 0, :2], references[0, 1, :1] = 1, 1 if second else 0
        scale = torch.tensor([[scales[0]] * len(layers), [scales[1] if second else 0.0] * len(layers)])[None]
        grids = region_masks(masks, level_sides(*latent, levels))
        level_masks = []
        for level in levels:
            grid = torch.zeros(1, 2, MAX_REFERENCES, *grids[level].shape[1:])
            grid[0, 0, :2] = torch.from_numpy(grids[level])
            level_masks.append(grid)
        masked = torch.tensor([[1.0, 0.0]])
        with torch.no_grad():
            return export(sample, timestep, text, *padded, scale, references, masked, *level_masks)

    def want_row(second: bool) -> torch.Tensor:
        for processor in want_unet.attn_processors.values():
            if hasattr(processor, "scale"):
                processor.scale = [scales[0], scales[1] if second else 0.0]
        mask = torch.from_numpy(masks)[None]  # [1, references, H, W]
        kwargs = {"ip_adapter_masks": [mask, None]}
        with torch.no_grad():
            return want_unet(
                sample, timestep, text, added_cond_kwargs={"image_embeds": embeds}, cross_attention_kwargs=kwargs
            ).sample

    for second in (True, False):
        got, want = ours_row(second), want_row(second)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (ours_row(True) - ours_row(False)).abs().max() > 1e-3, "the second adapter should change the output"


def test_grpc_takes_the_same_shape():
    from serve.grpc_api import easel_pb2
    from serve.grpc_api.messages import generation_request

    png = base64.b64decode(PNG)
    message = easel_pb2.GenerateRequest(
        prompt="x",
        ip_adapters=[
            easel_pb2.IpAdapter(name="style", images=[png], scale_json='{"up": 1.0}'),
            easel_pb2.IpAdapter(name="face", references=[REF], scale=0.5, masks=[png]),
        ],
    )
    want = GenerationRequest(
        prompt="x",
        ip_adapters=[
            {"name": "style", "images": [PNG], "scale": {"up": 1.0}},
            {"name": "face", "references": [REF], "scale": 0.5, "masks": [PNG]},
        ],
    )
    assert generation_request(message) == want
    bad = easel_pb2.GenerateRequest(
        prompt="x", ip_adapters=[easel_pb2.IpAdapter(images=[png], scale=1, scale_json="1")]
    )
    with pytest.raises(InvalidInput, match="ip_adapters.0.scale_json") as refused:
        generation_request(bad)
    assert refused.value.field == "ip_adapters.0.scale_json"


def test_the_ip_unet_bench_times_each_folder_s_unet(engine_dir, tmp_path):
    """``easel bench ip-unet``: every size of every folder timed, the table and the JSON naming them."""
    import json

    from loadtests.benchmarks.ip_unet import SIDES, run

    table = run([engine_dir], tmp_path / "bench.json")
    name = engine_dir.name.split("-opset")[0]
    assert name in table
    seconds = json.loads((tmp_path / "bench.json").read_text())["seconds"][name]
    assert list(seconds) == [f"{side}x{side}" for side in SIDES] and all(s > 0 for s in seconds.values())
