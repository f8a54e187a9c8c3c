"""The trained default: its data split, tokenizer, a seconds-long training smoke that resumes exactly, the judges."""

import numpy as np
import pytest
import torch

from build_engines.text_to_image import train_default
from build_engines.text_to_image.build import default_model_dir, engine_dir_for
from build_engines.text_to_image.default_model import TRAINED
from build_engines.text_to_image.evaluate import dominant_colour
from build_engines.text_to_image.icons import COLOURS, FONT_AWESOME, ICONS, caption_words, held_out, render
from build_engines.text_to_image.icons import training_pairings as all_training_pairings
from serve.files import content_hash
from serve.text_to_image.families import family_of_folder


def test_held_out_pairings_are_never_trained_on():
    held, trained = held_out(), all_training_pairings()
    assert len(COLOURS) >= 8 and len(FONT_AWESOME) >= 50
    assert not set(held) & set(trained)
    assert sorted(p.icon for p in held) == sorted(ICONS)  # one held-out colour per icon
    assert len(held) + len(trained) == len(ICONS) * len(COLOURS)
    per_colour = [sum(p.colour == c for p in held) for c in COLOURS]
    assert max(per_colour) - min(per_colour) <= 1


def test_every_caption_word_is_one_token_and_other_text_falls_back_to_bytes(tmp_path):
    from transformers import CLIPTokenizer

    train_default.write_tokenizer(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    for word in caption_words():
        assert tokenizer.tokenize(word) == [f"{word}</w>"]
    assert tokenizer.tokenize("a red heart icon") == ["a</w>", "red</w>", "heart</w>", "icon</w>"]
    ids = tokenizer("zebra crossing Ω").input_ids  # no unknown token (it would be <|endoftext|>) inside
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id not in ids[1:-1] and len(ids) > 4
    assert tokenizer.model_max_length == train_default.TEXT_LENGTH


def test_committed_default_is_the_embedded_tiny_model_and_its_cache_key_follows_the_weights(tmp_path):
    model_dir = default_model_dir("tiny")
    assert model_dir == TRAINED["tiny"]
    dims = family_of_folder(model_dir).dims
    assert (dims.native_size, dims.vae_scale_factor, dims.text_length) == (64, 4, train_default.TEXT_LENGTH)
    weights = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    assert weights <= 25 * 1024 * 1024
    import shutil

    copy = shutil.copytree(model_dir, tmp_path / "copy")
    assert engine_dir_for(copy) == engine_dir_for(model_dir)
    unet = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(unet.read_bytes())
    data[-1] ^= 1
    unet.write_bytes(bytes(data))
    assert content_hash(copy) != content_hash(model_dir)
    assert engine_dir_for(copy) != engine_dir_for(model_dir)


@pytest.mark.slow
def test_quick_training_saves_a_diffusers_model_and_resumes_to_the_same_weights(tmp_path, monkeypatch):
    settings = train_default.TrainSettings.quick()
    straight = train_default.train(tmp_path / "straight", tmp_path / "work-straight", settings)

    original_step = train_default._Progress.step

    class Stopped(Exception):
        pass

    def interrupt(self, step, loss):
        if self.stage != "vae" and step == 2:
            raise Stopped  # after the step-2 checkpoint, before the step-3 one
        original_step(self, step, loss)

    monkeypatch.setattr(train_default._Progress, "step", interrupt)
    with pytest.raises(Stopped):
        train_default.train(tmp_path / "resumed", tmp_path / "work-resumed", settings)
    monkeypatch.setattr(train_default._Progress, "step", original_step)
    resumed = train_default.train(tmp_path / "resumed", tmp_path / "work-resumed", settings)

    assert family_of_folder(straight).dims.native_size == 64
    from safetensors.torch import load_file

    for part in ("unet/diffusion_pytorch_model", "text_encoder/model", "vae/diffusion_pytorch_model"):
        a, b = load_file(straight / f"{part}.safetensors"), load_file(resumed / f"{part}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


@pytest.mark.parametrize("icon", ["heart", "star", "rocket", "umbrella"])
def test_dominant_colour_names_each_palette_colour_of_a_real_icon(icon):
    for name, rgb in COLOURS.items():
        assert dominant_colour(render(icon, rgb)) == name
    assert dominant_colour(np.full((64, 64, 3), 255, np.uint8)) is None
