"""A request pays for what it runs: one price (its model's ``ServedModel.work``) for both doors and the replicas'
admission.

Every engine pass counts (the VAE decoder per image, the VAE encoder with input images, each ControlNet per step),
so do the pixels its uploads decode to, and a request without ``size`` is priced at its own model's native size in
the table served now (a replaced default's new size counts).
"""

import base64
import json
import shutil

import pytest

from serve.models.admission import DEFAULT_MAX_COST, Admission, Limits, Work
from serve.models.served import ServedModels
from serve.models.table import MODEL_TABLE, ModelTable
from serve.protocol.schema import GenerationRequest
from serve.settings import DEFAULT_MODEL
from serve.text_to_image.tiling import VaeTiling
from tests.images import png_header_only

LARGE = "large"


def _png(width: int, height: int) -> str:
    return base64.b64encode(png_header_only(width, height)).decode()


def _request(**fields) -> GenerationRequest:
    return GenerationRequest.model_validate({"prompt": "a red heart icon"} | fields)


def _work(models: ServedModels, request: GenerationRequest) -> Work:
    """What ``request`` asks of the model its name resolves to (as the Gateway's admission prices it)."""
    return models.resolve(request.model).work(request)


@pytest.fixture(scope="module")
def large_dir(engine_dir, tmp_path_factory):
    """The embedded default's engines claiming a 4x larger native size (a 256-px model beside the 64-px default)."""
    folder = tmp_path_factory.mktemp("large") / "engines"
    shutil.copytree(engine_dir, folder)
    saved = json.loads((folder / "pipeline.json").read_text())
    saved["dims"]["sample_size"] *= 4
    (folder / "pipeline.json").write_text(json.dumps(saved))
    return folder


@pytest.fixture(scope="module")
def models(engine_dir, large_dir):
    return ServedModels.open({DEFAULT_MODEL: str(engine_dir), LARGE: str(large_dir)}, max_cost=DEFAULT_MAX_COST)


def test_strength_0_still_pays_for_its_vae_passes_and_its_decoded_input(models):
    """It was charged n x 0 steps x megapixels = 0: a key limited to 0.01 a minute ran 4 such requests at once."""
    request = _request(image=[_png(512, 512)], strength=0.0, n=4)
    work = _work(models, request)
    assert (work.rows, work.steps, work.width, work.height) == (4, 0, 512, 512)
    assert work.cost == pytest.approx(4 * 0.262144 * 2 + 0.262144)  # decode + encode per image; the input decoded
    assert work.cost > 0.01


def test_large_inputs_pay_for_the_pixels_they_decode_to(models):
    """Four 4096x4096 inputs (72 KB each as PNG) resized to 64x64 were charged 0.016; decoding them is 67 MP."""
    request = _request(image=[_png(4096, 4096)] * 4, size="64x64", num_inference_steps=2)
    assert _work(models, request).cost > 4 * 4096 * 4096 / 1e6 > DEFAULT_MAX_COST  # over the ceiling: a 400
    controlled = _request(controlnets=[{"name": "edges", "image": _png(4096, 4096)}], size="64x64")
    assert _work(models, controlled).input_pixels == 4096 * 4096


def test_many_prompts_are_priced_once_for_all_their_rows(models):
    one = _work(models, _request(n=1, num_inference_steps=10))
    prompts = [{"prompt": f"icon {i}"} for i in range(4)]
    four = _work(models, GenerationRequest.model_validate({"prompts": prompts, "num_inference_steps": 10}))
    assert (four.rows, four.steps) == (4, 10) and four.cost == pytest.approx(4 * one.cost)


def test_every_engine_pass_counts(models):
    text = _work(models, _request(size="64x64", num_inference_steps=10))
    assert text.passes_per_image == 10 + 1  # the UNet per step, the VAE decoder once
    controlled = _request(size="64x64", num_inference_steps=10, controlnets=[{"name": "e", "image": _png(64, 64)}])
    assert _work(models, controlled).passes_per_image == 10 * 2 + 1
    img2img = _request(size="64x64", num_inference_steps=10, image=[_png(64, 64)], strength=0.5)
    assert _work(models, img2img).passes_per_image == 5 + 1 + 1  # the steps that run, decode, encode
    referenced = _work(models, _request(size="64x64", num_inference_steps=10, ip_adapter_image=_png(64, 64)))
    assert referenced.cost == pytest.approx(text.cost + 64 * 64 / 1e6 * 2)  # its image encoder pass and its pixels


def test_best_of_n_is_priced_as_every_candidate_drawn(models):
    one = _work(models, _request(size="64x64", num_inference_steps=10))
    best = _work(models, _request(size="64x64", num_inference_steps=10, candidates=4))
    assert best.rows == 4 and best.cost == pytest.approx(4 * one.cost)
    two = _work(models, _request(size="64x64", num_inference_steps=10, candidates=3, n=2))
    assert two.rows == 6 and two.cost == pytest.approx(6 * one.cost)


def test_a_sizeless_request_is_priced_at_its_own_model_s_native_size(models):
    """It was priced at the default's size, read once at start: 16x too little for a 256-px model beside a 64-px."""
    default, large = _work(models, _request()), _work(models, _request(model=LARGE))
    assert (default.width, large.width) == (64, 256)
    assert large.cost == pytest.approx(16 * default.cost)


def test_after_the_default_is_replaced_a_sizeless_request_is_priced_at_the_new_version_s_size(
    engine_dir, large_dir, tmp_path
):
    path = tmp_path / MODEL_TABLE
    start = {DEFAULT_MODEL: str(engine_dir)}
    ModelTable.start(start).write(path)
    gateway = ServedModels.open(start, max_cost=DEFAULT_MAX_COST, table_path=path)
    assert _work(gateway, _request()).width == 64
    table = ModelTable.read(path)
    table.replace(DEFAULT_MODEL, str(large_dir))
    table.write(path)  # as the residency writes it when `easel models replace` runs
    assert _work(gateway.refreshed(), _request()).width == 256


def test_the_replica_admits_by_the_same_work():
    """The in-flight capacity a request holds is its Work's cost; one over the ceiling is a 400 saying the sum."""
    admission = Admission({}, 0, Limits(1, max_cost=1.0), VaeTiling(256, 8), "unet")
    work = Work(4, 0, 512, 512, encodes=True, input_pixels=4 * 4096 * 4096)
    with pytest.raises(Exception, match="input megapixels") as refused:
        admission.check(work)
    assert refused.value.field == "num_inference_steps"
    with pytest.raises(Exception, match="the UNet and 2 ControlNets"):
        admission.check(Work(1, 150, 512, 512, passes=3))
    assert admission.check(Work(1, 0, 64, 64, encodes=True)).cost == Work(1, 0, 64, 64, encodes=True).cost > 0
