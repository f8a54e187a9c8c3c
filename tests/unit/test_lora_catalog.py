"""LoRA adapters added, replaced and removed while a stack runs (:class:`LoraCatalog`), without servers.

What a request then gets from the engines is the integration tests' (``test_adapters.py``): here, what is kept,
what a request resolves to, and every refusal.
"""

import asyncio
import dataclasses
import io
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from build_engines.text_to_image.random_adapters import make_lora
from serve.adapters import catalog as catalog_module
from serve.adapters import requests as requests_module
from serve.adapters.catalog import Caller, LoraCatalog, LoraTarget
from serve.adapters.limits import LoraLimits
from serve.adapters.lora_files import prepare, weightless
from serve.adapters.lora_layers import slots_of
from serve.adapters.registry import MODEL_CONFIGS, LoraEntry, LoraRegistry
from serve.adapters.requests import StackAdapters
from serve.errors import Conflict, Forbidden, InvalidInput, NotFound
from serve.protocol.schema import GenerationRequest

SD = "StableDiffusionPipeline"
ENGINES = ("text_encoder", "unet")


@pytest.fixture(scope="module")
def slots(default_model):
    return {engine: slots_of(weightless(default_model, engine)) for engine in ENGINES}


@pytest.fixture
def stack_folder(default_model, tmp_path):
    """A registry folder as ``easel up --loras`` leaves it: the engines' configs, one adapter of the folder."""
    folder = tmp_path / "run" / "loras"
    for engine in ENGINES:
        (folder / MODEL_CONFIGS / engine).mkdir(parents=True)
        shutil.copyfile(default_model / engine / "config.json", folder / MODEL_CONFIGS / engine / "config.json")
    from build_engines.text_to_image.loras import save_registry

    save_registry(LoraRegistry({"house": LoraEntry("house", "ready")}), folder)
    return folder


@pytest.fixture
def catalog(stack_folder, slots, tmp_path):
    requests_module._STORES.clear()
    adapters = StackAdapters(str(stack_folder), False, f"sqlite:///{tmp_path / 'run' / 'easel.db'}", "easel-default")
    target = LoraTarget("easel-default", adapters, "engines-key", SD, slots)

    def targets(model):
        if model not in (None, "easel-default"):
            raise InvalidInput(f"model: unknown model {model!r}", "model")
        return target

    yield LoraCatalog(targets, lambda: [adapters])
    for store in requests_module._STORES.values():
        store.close()
    requests_module._STORES.clear()


def _lora(model_dir, tmp_path, seed: int, rank: int = 2) -> bytes:
    path = tmp_path / f"upload-{seed}.safetensors"
    make_lora(model_dir, path, rank=rank, seed=seed)
    return path.read_bytes()


def _resolved(catalog: LoraCatalog, name: str) -> tuple:
    request = GenerationRequest(prompt="x", loras=[{"name": name, "scale": 0.5}])
    return catalog.targets(None).adapters.resolve(request)


def test_an_upload_is_read_by_diffusers_kept_by_content_and_served_by_its_key(catalog, default_model, slots, tmp_path):
    data = _lora(default_model, tmp_path, seed=1, rank=3)
    added = asyncio.run(catalog.add("style", None, io.BytesIO(data)))
    assert added["id"] == "style" and added["model"] == "easel-default" and added["rank"] == 3
    assert added["status"] == "ready" and added["source"] == "upload" and added["bytes"] > 0
    ((key, weight),) = _resolved(catalog, "style")
    assert weight == 0.5
    folder = catalog.targets(None).folder
    assert (folder / "files" / f"{added['sha256']}.safetensors").read_bytes() == data
    kept = load_file(folder / f"{key}.safetensors")
    wanted = prepare(tmp_path / "upload-1.safetensors", default_model, SD, slots).tensors
    assert kept.keys() == wanted.keys()
    for name, tensor in wanted.items():
        np.testing.assert_array_equal(kept[name], tensor, err_msg=name)
    listed = {entry["name"]: entry for entry in catalog.listing()["data"]}
    assert set(listed) == {"house", "style"} and listed["style"]["rank"] == 3


def test_a_replace_gives_the_name_new_weights_and_keeps_the_old_ones_for_requests_in_flight(
    catalog, default_model, tmp_path
):
    asyncio.run(catalog.add("style", None, io.BytesIO(_lora(default_model, tmp_path, seed=1))))
    ((old, _),) = _resolved(catalog, "style")
    replaced = asyncio.run(catalog.replace("style", io.BytesIO(_lora(default_model, tmp_path, seed=2))))
    ((new, _),) = _resolved(catalog, "style")
    folder = catalog.targets(None).folder
    assert new != old and replaced["id"] == "style"
    assert (folder / f"{old}.safetensors").is_file() and (folder / f"{new}.safetensors").is_file()


def test_a_removed_lora_is_a_400_naming_the_request_s_field_and_a_restart_keeps_the_others(
    catalog, default_model, tmp_path
):
    for name, seed in (("style", 1), ("line", 2)):
        asyncio.run(catalog.add(name, None, io.BytesIO(_lora(default_model, tmp_path, seed=seed))))
    assert asyncio.run(catalog.remove("style")) == {"id": "style", "object": "lora", "deleted": True}
    with pytest.raises(InvalidInput, match="unknown LoRA adapter 'style'") as refused:
        _resolved(catalog, "style")
    assert refused.value.field == "loras.0.name"
    with pytest.raises(NotFound):
        asyncio.run(catalog.remove("style"))
    adapters = catalog.targets(None).adapters
    requests_module._STORES.pop(adapters.store_url).close()  # a new process: the store opened afresh
    restarted = StackAdapters(adapters.loras_dir, False, adapters.store_url).registry()
    assert set(restarted.entries) == {"house", "line"}


def test_bad_uploads_are_400s_naming_the_field_and_change_nothing(
    catalog, default_model, tiny_xl_model, tmp_path, monkeypatch
):
    good = _lora(default_model, tmp_path, seed=1)
    xl = tmp_path / "xl.safetensors"
    make_lora(tiny_xl_model, xl, rank=2, seed=1, text_encoder=False)
    cases = [
        ("style", None, b"junk", "file", "not a readable LoRA file"),
        ("style", None, xl.read_bytes(), "file", "made for another base model"),
        ("style", None, b"", "file", "empty"),
        ("house", None, good, "name", "named 'house' already"),
        ("bad name!", None, good, "name", "must match"),
        ("style", "other", good, "model", "unknown model"),
    ]
    for name, model, data, field, message in cases:
        with pytest.raises(InvalidInput, match=message) as refused:
            asyncio.run(catalog.add(name, model, io.BytesIO(data)))
        assert refused.value.field == field, message
    monkeypatch.setattr(catalog_module, "MAX_LORA_BYTES", len(good) - 1)
    with pytest.raises(InvalidInput, match="MiB a LoRA file may have") as refused:
        asyncio.run(catalog.add("style", None, io.BytesIO(good)))
    assert refused.value.field == "file"
    folder = catalog.targets(None).folder
    assert [e["name"] for e in catalog.listing()["data"]] == ["house"]
    assert list((folder / "files").iterdir()) == [] and not list(folder.glob("*.safetensors"))
    monkeypatch.undo()
    asyncio.run(catalog.add("style", None, io.BytesIO(good)))
    with pytest.raises(InvalidInput, match="named 'style' already") as refused:
        asyncio.run(catalog.add("style", None, io.BytesIO(good)))
    with pytest.raises(Conflict, match="--loras folder"):
        asyncio.run(catalog.replace("house", io.BytesIO(good)))
    with pytest.raises(NotFound):
        asyncio.run(catalog.replace("absent", io.BytesIO(good)))


def test_a_restart_on_engines_built_anew_prepares_the_kept_uploads_again(catalog, default_model, tmp_path):
    asyncio.run(catalog.add("style", None, io.BytesIO(_lora(default_model, tmp_path, seed=1))))
    ((old, _),) = _resolved(catalog, "style")
    catalog.refresh()  # the same engines: nothing to do
    assert _resolved(catalog, "style")[0][0] == old
    target = catalog.targets(None)
    rebuilt = LoraTarget(target.model, target.adapters, "engines-built-again", target.pipeline_class, target.slots)
    LoraCatalog(lambda model: rebuilt, lambda: [rebuilt.adapters]).refresh()
    ((new, _),) = _resolved(catalog, "style")
    entry = target.adapters.store().lora("style")
    assert new != old and entry.engines == "engines-built-again" and entry.status == "ready"
    assert (
        load_file(target.folder / f"{new}.safetensors").keys() == load_file(target.folder / f"{old}.safetensors").keys()
    )


def test_each_model_serves_and_lists_its_own_loras_from_one_store(catalog, stack_folder, default_model, tmp_path):
    """A second model's registry folder beside the default's: an upload is its model's alone, listed with it."""
    default = catalog.targets(None)
    other_folder = stack_folder.with_name("loras-other")
    shutil.copytree(stack_folder / MODEL_CONFIGS, other_folder / MODEL_CONFIGS)
    other_adapters = StackAdapters(str(other_folder), False, default.adapters.store_url, "other")
    other = LoraTarget("other", other_adapters, "other-engines", SD, default.slots)
    targets = {None: default, "easel-default": default, "other": other}
    both = LoraCatalog(targets.__getitem__, lambda: [default.adapters, other_adapters])
    asyncio.run(both.add("style", "other", io.BytesIO(_lora(default_model, tmp_path, seed=1))))
    asyncio.run(both.add("house", "other", io.BytesIO(_lora(default_model, tmp_path, seed=2))))  # the default's name
    request = GenerationRequest(prompt="x", loras=[{"name": "style"}])
    assert [weight for _, weight in other_adapters.resolve(request)] == [1.0]
    with pytest.raises(InvalidInput, match="unknown LoRA adapter 'style' for model easel-default") as refused:
        default.adapters.resolve(request)
    assert refused.value.field == "loras.0.name"
    listed = sorted((entry["name"], entry["model"]) for entry in both.listing()["data"])
    assert listed == [("house", "easel-default"), ("house", "other"), ("style", "other")]  # the folder's: the default's
    assert (other_folder / "files").is_dir() and not (stack_folder / "files").exists()
    replaced = asyncio.run(both.replace("house", io.BytesIO(_lora(default_model, tmp_path, seed=3))))
    assert replaced["model"] == "other"  # the upload, not the default's folder file of that name
    asyncio.run(both.remove("style"))
    with pytest.raises(InvalidInput, match="unknown LoRA adapter 'style' for model other"):
        other_adapters.resolve(request)
    requests_module._STORES.pop(other_adapters.store_url).close()  # a restart: the store opened afresh
    restarted = StackAdapters(str(other_folder), False, other_adapters.store_url, "other").registry()
    assert [(e.name, e.model) for e in restarted.entries.values()] == [("house", "other")]
    rebuilt = LoraTarget("other", other_adapters, "other-engines-again", SD, default.slots)
    again = {"easel-default": default, "other": rebuilt}
    LoraCatalog(again.__getitem__, lambda: [default.adapters, other_adapters]).refresh()
    assert other_adapters.store().lora("house").engines == "other-engines-again"  # prepared again for its engines


def test_changing_loras_needs_the_adapters_scope_and_takes_the_upload_limit_on_every_path():
    from serve.routes import BODY_LIMITS, LORA_UPLOAD_BYTES, Scope, required_scope
    from serve.wire import BodyLimits

    assert required_scope("/v1/loras", "GET") is Scope.GENERATE
    for method, path in (("POST", "/v1/loras"), ("PUT", "/v1/loras/ink"), ("DELETE", "/v1/loras/ink")):
        assert required_scope(path, method) is Scope.ADAPTERS, (method, path)
    limits = BodyLimits(None, BODY_LIMITS)
    assert limits.limit_for("/v1/loras") == limits.limit_for("/v1/loras/ink") == LORA_UPLOAD_BYTES
    assert limits.limit_for("/v1/loras/ink/more") == limits.default_limit


ANN, BEN, BOSS = Caller("ann"), Caller("ben"), Caller("boss", admin=True)


def test_a_lora_is_its_key_s_and_another_key_gets_what_an_unknown_name_gets(catalog, default_model, tmp_path):
    ann_file, ben_file = (io.BytesIO(_lora(default_model, tmp_path, seed=seed)) for seed in (1, 2))
    added = asyncio.run(catalog.add("style", None, ann_file, ANN))
    assert added["visibility"] == "private" and "owner" not in added
    adapters = catalog.targets(None).adapters
    request = GenerationRequest(prompt="x", loras=[{"name": "style"}])
    assert adapters.resolve(request, "ann")[0][0] == adapters.store().lora("style", "ann").key
    for name in ("style", "never"):  # ann's, and a name never uploaded: the same answer to ben, for every verb
        unknown = GenerationRequest(prompt="x", loras=[{"name": name}])
        with pytest.raises(InvalidInput, match=f"unknown LoRA adapter {name!r}"):
            adapters.resolve(unknown, "ben")
        with pytest.raises(NotFound, match=f"no LoRA adapter {name!r}"):
            asyncio.run(catalog.replace(name, io.BytesIO(b"x"), BEN))
        with pytest.raises(NotFound, match=f"no LoRA adapter {name!r}"):
            asyncio.run(catalog.remove(name, BEN))
    assert [e["name"] for e in catalog.listing(BEN)["data"]] == ["house"]
    with pytest.raises(InvalidInput, match="unknown LoRA adapter"):  # an open API: the shared set alone
        adapters.resolve(request)
    asyncio.run(catalog.add("style", None, ben_file, BEN))  # names are per key
    assert adapters.resolve(request, "ben") != adapters.resolve(request, "ann")
    everyone = {(e["name"], e.get("owner")) for e in catalog.listing(BOSS)["data"]}
    assert everyone == {("house", None), ("style", "ann"), ("style", "ben")}
    with pytest.raises(Forbidden) as refused:
        asyncio.run(catalog.add("ours", None, io.BytesIO(b"x"), BEN, "shared"))
    assert refused.value.field == "visibility"
    with pytest.raises(Forbidden):
        asyncio.run(catalog.remove("style", BEN, owner="ann"))
    shared = asyncio.run(catalog.replace("style", None, BOSS, "shared", owner="ann"))  # an admin shares ann's
    assert shared["visibility"] == "shared" and adapters.store().lora("style", "ann") is None
    assert adapters.resolve(request, "eve") == adapters.resolve(request, "ann")  # every key's now; ben keeps his own
    assert adapters.resolve(request, "ben") != adapters.resolve(request, "ann")
    with pytest.raises(Forbidden, match="the shared set's"):
        asyncio.run(catalog.remove("style", Caller("eve")))
    with pytest.raises(Conflict):
        asyncio.run(catalog.remove("house", BOSS))
    assert asyncio.run(catalog.remove("style", BOSS))["deleted"] is True
    with pytest.raises(InvalidInput, match="a visibility, or both"):
        asyncio.run(catalog.replace("style", None, BEN))


def test_replaced_and_removed_files_go_once_no_entry_names_them(catalog, default_model, tmp_path):
    base = catalog.targets(None)
    adapters = dataclasses.replace(base.adapters, limits=LoraLimits(files_kept_s=60))
    target = dataclasses.replace(base, adapters=adapters)
    catalog, folder = LoraCatalog(lambda model: target, lambda: [adapters]), target.folder

    def files() -> set[str]:
        return {p.name for p in [*folder.glob("*.safetensors"), *(folder / "files").glob("*")]}

    house = files()
    for cycle in range(3):  # upload, replace and remove cycles: the disk holds what the store names, no more
        asyncio.run(catalog.add("style", None, io.BytesIO(_lora(default_model, tmp_path, seed=10 + cycle)), ANN))
        asyncio.run(catalog.replace("style", io.BytesIO(_lora(default_model, tmp_path, seed=20 + cycle)), ANN))
        ((kept, _),) = target.adapters.resolve(GenerationRequest(prompt="x", loras=[{"name": "style"}]), "ann")
        for path in [*folder.glob("*.safetensors"), *(folder / "files").glob("*")]:
            os.utime(path, (0, 0))  # long unused
        assert catalog.sweep(target)  # the replaced weights' files: gone
        assert files() == house | {
            f"{kept}.safetensors",
            f"{target.adapters.store().lora('style', 'ann').sha256}.safetensors",
        }
        asyncio.run(catalog.remove("style", ANN))
        assert f"{kept}.safetensors" in files()  # removed just now: kept for the requests that resolved it
    for path in [*folder.glob("*.safetensors"), *(folder / "files").glob("*")]:
        os.utime(path, (0, 0))
    catalog.sweep(target)
    assert files() == house


def test_a_request_s_lora_rows_are_priced_by_rank_for_every_row_of_the_batch_they_slow(catalog, engine_dir):
    from serve.models.admission import LORA_RANK_PER_PASS
    from serve.models.served import ServedModel
    from serve.text_to_image.engine_folder import EngineFolder

    model = ServedModel("easel-default", EngineFolder(engine_dir))
    request = GenerationRequest(prompt="x", num_inference_steps=10, size="64x64")
    plain, ranked = model.work(request), model.work(request, lora_rank=64)
    batch = model.folder.specs["unet"].max_batch_size
    extra = 10 * (64 * 64 / 1e6) * 64 * batch / LORA_RANK_PER_PASS
    assert ranked.cost == pytest.approx(plain.cost + extra) and ranked.cost > plain.cost
    assert "LoRAs' rank" in ranked.explained() and "LoRAs' rank" not in plain.explained()
