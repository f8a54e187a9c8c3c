"""Model families: recognised from model_index.json, bad folders refused by name, SDXL's conditioning (no servers)."""

import asyncio
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from build_engines.text_to_image import build as build_module
from build_engines.text_to_image.published import PUBLISHED_DIR, clip_bpe
from serve.cli.main import main
from serve.errors import UnsupportedModel
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.families import family_of_folder
from serve.text_to_image.generation import Generation, SamplingParams
from serve.text_to_image.spec import MAX_PROMPT_CHUNKS, TEXT_ENCODER, TEXT_ENCODER_2, UNET


def test_each_embedded_model_is_recognised_with_its_engines(default_model, tiny_xl_model):
    assert family_of_folder(default_model).name == "sd"
    xl = family_of_folder(tiny_xl_model)
    assert xl.name == "sdxl"
    assert list(xl.specs) == ["text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder"]
    unet = {t.name: t.dims for t in xl.specs[UNET].inputs}
    assert unet == {
        "sample": (4, -1, -1),
        "timestep": (),
        "encoder_hidden_states": (-1, 32 + 48),  # a prompt's chunks of 77 tokens side by side
        "text_embeds": (40,),
        "time_ids": (6,),
    }
    assert xl.specs[UNET].input("encoder_hidden_states").chunks == (77, MAX_PROMPT_CHUNKS)


def test_transformer_models_are_recognised_with_their_engines(transformer_models):
    sd3 = family_of_folder(transformer_models["tiny-sd3"])
    assert sd3.name == "sd3" and list(sd3.specs) == [
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "transformer",
        "vae_decoder",
    ]
    # Both CLIPs' 77 tokens, then T5's 256, at T5's width; both pooled projections (32 + 40) side by side.
    assert {t.name: t.dims for t in sd3.specs["transformer"].inputs} == {
        "sample": (16, -1, -1),
        "timestep": (),
        "encoder_hidden_states": (77 + 256, 96),
        "pooled_projections": (72,),
    }
    dev, schnell = (family_of_folder(transformer_models[name]) for name in ("tiny-flux", "tiny-flux-schnell"))
    assert dev.name == schnell.name == "flux" and list(dev.specs) == [
        "text_encoder",
        "text_encoder_2",
        "transformer",
        "vae_decoder",
    ]
    inputs = [t.name for t in dev.specs["transformer"].inputs]
    assert inputs == ["sample", "timestep", "encoder_hidden_states", "pooled_projections", "guidance"]
    assert "guidance" not in [t.name for t in schnell.specs["transformer"].inputs]
    assert dev.side_multiple == sd3.side_multiple == 16  # 2x2 patches of 8x8-pixel latents


def test_an_unknown_pipeline_class_names_every_supported_one(tiny_xl_model, tmp_path):
    folder = shutil.copytree(tiny_xl_model, tmp_path / "kandinsky", ignore=shutil.ignore_patterns("*.safetensors"))
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    with pytest.raises(UnsupportedModel) as error:
        family_of_folder(folder)
    supported = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline", "FluxPipeline")
    assert len(str(error.value).splitlines()) == 1 and all(name in str(error.value) for name in supported)


def _copy(model_dir, tmp_path):
    return shutil.copytree(model_dir, tmp_path / "model", ignore=shutil.ignore_patterns("*.safetensors"))


def _bad_folders(tmp_path, tiny_xl_model):
    """(folder, words the error must name) for each way a folder can fail."""
    cases = []
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append((empty, "model_index.json"))

    unknown = shutil.copytree(tiny_xl_model, tmp_path / "unknown")
    index = json.loads((unknown / "model_index.json").read_text())
    (unknown / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    cases.append((unknown, "'KandinskyPipeline' is not supported"))

    missing = shutil.copytree(tiny_xl_model, tmp_path / "missing")
    shutil.rmtree(missing / "text_encoder_2")
    cases.append((missing, "'text_encoder_2'"))

    no_weights = shutil.copytree(tiny_xl_model, tmp_path / "no_weights")
    for path in (no_weights / "unet").glob("*.safetensors"):
        path.unlink()
    cases.append((no_weights, "'unet' has no weights"))

    broken = shutil.copytree(tiny_xl_model, tmp_path / "broken")
    (broken / "model_index.json").write_text("{not json")
    cases.append((broken, "not valid JSON"))
    return cases


def test_bad_folders_are_one_line_errors_and_leave_the_engine_cache_empty(tiny_xl_model, tmp_path, monkeypatch):
    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    for folder, words in _bad_folders(tmp_path, tiny_xl_model):
        with pytest.raises(UnsupportedModel, match=words.replace("(", r"\(")):
            family_of_folder(folder)
        for command in ("build", "up"):
            result = runner.invoke(main, [command, "--model", str(folder), "--repository", str(tmp_path / "repo")])
            assert result.exit_code == 1, (command, folder, result.output)
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], result.output
    assert not (tmp_path / "home" / "engines").exists() or not any((tmp_path / "home" / "engines").iterdir())
    assert not (tmp_path / "repo").exists()


def test_a_build_that_fails_halfway_leaves_nothing_in_the_cache(default_model, tmp_path, monkeypatch):
    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "home"))

    def half_then_fail(family, model_dir, engine_dir, precision, adapters, **runtime_options):
        (engine_dir / "unet").mkdir(parents=True)
        (engine_dir / "unet" / "model.onnx").write_bytes(b"half")
        raise RuntimeError("export crashed")

    monkeypatch.setattr(build_module, "export_all", half_then_fail)
    with pytest.raises(RuntimeError, match="export crashed"):
        build_module.build(default_model, tmp_path / "repository")
    assert list((tmp_path / "home" / "engines").iterdir()) == []


class FakeEncoders:
    """Text encoders answering with the token ids as features, recording what each was asked."""

    def __init__(self, family) -> None:
        self.family = family
        self.calls = []

    async def infer(self, spec, inputs, priority=0):
        ids = inputs["input_ids"].astype(np.float32)
        self.calls.append((spec.name, inputs["input_ids"]))
        hidden = next(t for t in spec.outputs if t.name == "hidden_states")
        out = {"hidden_states": np.repeat(ids[:, :, None], hidden.dims[1], axis=2) + (spec.name == TEXT_ENCODER_2)}
        if spec.name == TEXT_ENCODER_2:
            out["text_embeds"] = np.repeat(ids[:, :1] + 1, 40, axis=1)
        return out


def _condition(family, tokenizers, negative: str, guidance: float = 6.0):
    job = Generation(SamplingParams("a fox", negative, 1, 192, 128, 2, guidance, 0, "euler"))
    encoders = FakeEncoders(family)
    conditioning, dropped = asyncio.run(family.condition(encoders, tokenizers, job, guidance > 1))
    return conditioning, encoders.calls


def test_sdxl_conditioning_follows_the_diffusers_pipeline(tiny_xl_engine_dir):
    from transformers import CLIPTokenizer

    family = EngineFolder(tiny_xl_engine_dir).family
    tokenizers = {name: CLIPTokenizer.from_pretrained(tiny_xl_engine_dir / name) for name in family.tokenizers()}
    conditioning, calls = _condition(family, tokenizers, "")
    # An empty negative prompt is zeros (force_zeros_for_empty_prompt) and is not encoded.
    assert [len(ids) for _, ids in calls] == [1, 1]
    assert not conditioning["encoder_hidden_states"][0].any() and not conditioning["text_embeds"][0].any()
    # Both encoders' hidden states side by side, text_encoder's first.
    ids = dict(calls)
    hidden = conditioning["encoder_hidden_states"][1]
    assert hidden.shape == (77, 80)
    np.testing.assert_array_equal(hidden[:, :32], np.repeat(ids[TEXT_ENCODER][0][:, None], 32, axis=1))
    np.testing.assert_array_equal(hidden[:, 32:], np.repeat(ids[TEXT_ENCODER_2][0][:, None], 48, axis=1) + 1)
    # original size + crop top-left + target size, each (height, width), on every row.
    np.testing.assert_array_equal(conditioning["time_ids"], [[128, 192, 0, 0, 128, 192]] * 2)
    # tokenizer_2 pads with "!" (id 0 in CLIP's byte alphabet), tokenizer with <|endoftext|>.
    assert ids[TEXT_ENCODER][0, -1] == tokenizers["tokenizer"].eos_token_id and ids[TEXT_ENCODER_2][0, -1] == 0

    conditioning, calls = _condition(family, tokenizers, "blurry")
    assert [len(ids) for _, ids in calls] == [2, 2] and conditioning["encoder_hidden_states"][0].any()
    conditioning, calls = _condition(family, tokenizers, "", guidance=1.0)
    assert len(conditioning["time_ids"]) == 1


def test_clip_bpe_from_the_openai_clip_package_tokenizes_as_clip():
    vocab, merges = clip_bpe()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["a</w>"] == 320 and vocab["photo</w>"] == 1125


@pytest.mark.parametrize(
    ("name", "parameters_m"),
    [
        ("sd15/unet", 859.5),
        ("sd15/text_encoder", 123.1),
        ("sdxl/unet", 2567.5),
        ("sdxl/text_encoder_2", 694.7),
        ("sdxl/vae", 83.7),
        ("sd3/transformer", 2028.3),
        ("sd3/text_encoder_3", 4762.3),
        ("flux/transformer", 11901.4),
        ("flux/vae", 83.8),
        ("svd/unet", 1524.6),
        ("svd/vae", 97.7),
        ("svd/image_encoder", 632.1),
    ],
)
def test_committed_published_configs_are_the_full_size_architectures(name, parameters_m):
    import diffusers
    import transformers

    folder = PUBLISHED_DIR / name
    config = json.loads((folder / "config.json").read_text())
    with torch.device("meta"):
        if "_class_name" in config:
            cls = getattr(diffusers, config["_class_name"])
            model = cls.from_config(cls.load_config(folder))
        else:
            model = getattr(transformers, config["architectures"][0])(transformers.AutoConfig.from_pretrained(folder))
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(parameters_m, abs=0.1)


_SHRUNK = {  # the published configs at toy sizes: the same files and classes, seconds to create
    "unet/config.json": {"block_out_channels": [32, 32, 64, 64], "attention_head_dim": 2, "cross_attention_dim": 64},
    "text_encoder/config.json": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    },
    "text_encoder_2/config.json": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    },
    "vae/config.json": {"block_out_channels": [32, 32, 32, 32]},
}
_SHRUNK_XL_UNET = {
    "block_out_channels": [32, 64, 64],
    "attention_head_dim": [2, 2, 2],
    "transformer_layers_per_block": [1, 1, 2],
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + 32,
}


_T5 = {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_heads": 2, "d_kv": 8}
_SHRUNK_TRANSFORMERS = {
    "sd3": {
        "transformer/config.json": {
            "num_layers": 1,
            "attention_head_dim": 8,
            "num_attention_heads": 2,
            "caption_projection_dim": 16,
            "joint_attention_dim": 32,
            "pooled_projection_dim": 64,
            "pos_embed_max_size": 16,
            "sample_size": 16,
        },
        "text_encoder_3/config.json": _T5,
    },
    "flux": {
        "transformer/config.json": {
            "num_layers": 1,
            "num_single_layers": 1,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "joint_attention_dim": 32,
            "pooled_projection_dim": 32,
            "axes_dims_rope": [4, 6, 6],
        },
        "text_encoder_2/config.json": _T5,
    },
}


@pytest.mark.parametrize("name", ["sd15", "sdxl", "sd3", "flux"])
def test_random_model_from_published_configs_is_a_servable_folder(name, tmp_path, monkeypatch):
    from build_engines.text_to_image import published

    configs = shutil.copytree(PUBLISHED_DIR, tmp_path / "published")
    for path, overrides in _SHRUNK.items():
        file = configs / name / path
        if file.exists():
            config = json.loads(file.read_text())
            config.update(overrides)
            if name == "sdxl" and path.startswith("unet"):
                config.update(_SHRUNK_XL_UNET, cross_attention_dim=64)
            if "projection_dim" in config:
                config["projection_dim"] = 32
            file.write_text(json.dumps(config))
    for path, overrides in _SHRUNK_TRANSFORMERS.get(name, {}).items():
        file = configs / name / path
        file.write_text(json.dumps(json.loads(file.read_text()) | overrides))
    monkeypatch.setattr(published, "PUBLISHED_DIR", configs)
    model_dir = published.create_random_model(name, tmp_path / name)
    family = family_of_folder(model_dir)
    assert family.name == {"sd15": "sd", "sdxl": "sdxl", "sd3": "sd3", "flux": "flux"}[name]
    index = json.loads((model_dir / "model_index.json").read_text())
    assert index.get("safety_checker", [None, None]) == [None, None]
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


_SHRUNK_SVD = {
    "unet/config.json": {
        "block_out_channels": [32, 64],
        "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
        "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
        "num_attention_heads": [2, 4],
        "cross_attention_dim": 32,
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 24,
        "layers_per_block": 1,
        "sample_size": 16,
    },
    "vae/config.json": {"block_out_channels": [32, 32, 32, 32]},
    "image_encoder/config.json": _SHRUNK["text_encoder/config.json"] | {"projection_dim": 32, "patch_size": 32},
}


def test_a_random_svd_from_published_configs_is_a_servable_image_to_video_folder(tmp_path, monkeypatch):
    from build_engines.text_to_image import published

    configs = shutil.copytree(PUBLISHED_DIR, tmp_path / "published")
    for path, overrides in _SHRUNK_SVD.items():
        file = configs / "svd" / path
        file.write_text(json.dumps(json.loads(file.read_text()) | overrides))
    monkeypatch.setattr(published, "PUBLISHED_DIR", configs)
    family = family_of_folder(published.create_random_model("svd", tmp_path / "svd"))
    assert (family.name, family.animates_images, family.default_frames) == ("svd", True, 14)
    assert family.default_size == "168x96"  # SVD's 1024x576 for its 768 px UNet, here 128 px (16 latents, 8x)
    assert list(family.specs) == ["image_encoder", "unet", "vae_encoder", "vae_decoder"]


def test_installing_a_family_removes_the_other_familys_engines(engine_dir, tiny_xl_engine_dir, tmp_path):
    repository = tmp_path / "repository"
    build_module.install(EngineFolder(tiny_xl_engine_dir), repository)
    (repository / "unet" / "1" / "model.onnx.data").symlink_to(tmp_path / "gone")  # an earlier engine's weights
    assert (repository / "text_encoder_2" / "config.pbtxt").exists()
    build_module.install(EngineFolder(engine_dir), repository)
    installed = sorted(p.name for p in repository.iterdir())
    assert installed == ["text_encoder", "unet", "unet_lcm", "vae_decoder", "vae_encoder"]
    version = sorted(p.name for p in (repository / "unet" / "1").iterdir() if p.name != "runtime.json")  # if built
    assert version == ["memory.json", "model.onnx", "model.py"]


def test_sd3_without_t5_from_published_configs(tmp_path, monkeypatch):
    from build_engines.text_to_image import published

    configs = shutil.copytree(PUBLISHED_DIR, tmp_path / "published")
    for path, overrides in {**_SHRUNK, **_SHRUNK_TRANSFORMERS["sd3"]}.items():
        file = configs / "sd3" / path
        if not file.exists():  # the UNet's
            continue
        config = json.loads(file.read_text()) | overrides
        if "projection_dim" in config:
            config["projection_dim"] = 32
        file.write_text(json.dumps(config))
    monkeypatch.setattr(published, "PUBLISHED_DIR", configs)
    family = family_of_folder(published.create_random_model("sd3", tmp_path / "sd3", without_t5=True))
    assert (
        not family.dims.t5
        and "text_encoder_3" not in family.specs
        and family.tokenizers()
        == (
            "tokenizer",
            "tokenizer_2",
        )
    )
    with pytest.raises(ValueError, match="only SD3"):
        published.create_random_model("flux", tmp_path / "flux", without_t5=True)
