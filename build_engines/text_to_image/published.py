"""Full-size models with random weights, made locally from the published component configs committed beside this file.

``published/`` holds the configs (no weights) of Stable Diffusion 1.5 (``sd15``), SDXL base 1.0 (``sdxl``), SD3 medium
(``sd3``), FLUX.1 dev (``flux``) and Stable Video Diffusion img2vid (``svd``: 14 frames at 1024x576).
:func:`create_random_model` builds every component from them with freshly initialised weights and saves a diffusers
folder, so the full-size engines can be exported, served and timed without any download. The CLIP tokenizers are CLIP's
real BPE, rebuilt from the merges file that the ``openai-clip`` package ships. No installed package ships T5's
SentencePiece vocabulary: the T5 tokenizers are unigram tokenizers of T5's size (32000 pieces and 100 sentinels) whose
pieces are CLIP's BPE tokens, words opening with SentencePiece's ``▁``, so prompts split into word pieces as T5's do
(with other ids: the weights are random anyway).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import logging
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)

PUBLISHED_DIR = Path(__file__).parent / "published"
PUBLISHED = ("sd15", "sdxl", "sd3", "flux", "svd")
COPIED = ("scheduler", "feature_extractor")
"""Components whose published folder is their whole self (configs, no weights): copied as they are."""
T5_PIECES = 32000
"""T5's SentencePiece vocabulary size (its tokenizer adds 100 sentinel ids)."""
OPTIONAL_T5 = ("text_encoder_3", "tokenizer_3")
"""SD3's T5 and its tokenizer, which ``--without-t5`` leaves out (``[null, null]``, as diffusers allows)."""
SEED = 0
# Shards keep the extra memory of saving (safetensors serialises a shard at a time) to this size.
SHARD_SIZE = "2GB"
# CLIP's vocabulary: 256 bytes, the same with the end-of-word marker, 48894 merges, 2 special tokens = 49408.
_CLIP_MERGES = 49152 - 256 - 2


def clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's BPE vocabulary and merges, built as OpenAI's ``simple_tokenizer`` builds them."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    files = importlib.metadata.files("openai-clip") or []
    source = next((f for f in files if f.name == "bpe_simple_vocab_16e6.txt.gz"), None)
    if source is None:
        raise FileNotFoundError("CLIP's BPE merges come from the openai-clip package: pip install openai-clip==1.0.1")
    lines = gzip.decompress(source.locate().read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _CLIP_MERGES + 1]]
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [f"{c}</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def write_clip_tokenizer(config_dir: Path, out_dir: Path) -> None:
    """Save a CLIP tokenizer with the settings of ``config_dir/tokenizer_config.json`` and CLIP's real BPE."""
    from transformers import CLIPTokenizer

    config = json.loads((config_dir / "tokenizer_config.json").read_text())
    vocab, merges = clip_bpe()
    special = {key: _token_text(config[key]) for key in ("bos_token", "eos_token", "unk_token", "pad_token")}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=config["model_max_length"], **special)
    tokenizer.save_pretrained(out_dir)


def write_t5_tokenizer(config_dir: Path, out_dir: Path) -> None:
    """Save a T5 tokenizer with ``config_dir``'s settings over a unigram vocabulary of T5's size from CLIP's BPE."""
    from transformers import T5Tokenizer

    config = json.loads((config_dir / "tokenizer_config.json").read_text())
    vocab, _ = clip_bpe()  # in id order: single characters, then merges by rank
    ends = [f"\u2581{token.removesuffix('</w>')}" if token.endswith("</w>") else token for token in vocab]
    pieces = list(dict.fromkeys(ends))
    special = [config["pad_token"], config["eos_token"], config["unk_token"]]
    pieces = [p for p in pieces if p not in special][: T5_PIECES - len(special)]
    scored = [(token, 0.0) for token in special] + [(piece, -1.0 - rank * 1e-6) for rank, piece in enumerate(pieces)]
    tokenizer = T5Tokenizer(vocab=scored, extra_ids=config.get("extra_ids", 100))
    tokenizer.model_max_length = config["model_max_length"]
    tokenizer.save_pretrained(out_dir)


def _token_text(token: str | dict) -> str:
    return token["content"] if isinstance(token, dict) else token


def _create_component(library: str, class_name: str, config_dir: Path, out_dir: Path, device: str = "cpu") -> None:
    """Build one model component from its config with random weights (initialised on ``device``) and save it."""
    import diffusers
    import torch
    import transformers

    started = time.perf_counter()
    with torch.device(device):
        if library == "diffusers":
            cls = getattr(diffusers, class_name)
            model = cls.from_config(cls.load_config(config_dir))
        else:
            cls = getattr(transformers, class_name)
            config = transformers.AutoConfig.from_pretrained(config_dir)
            config.dtype = torch.float32
            model = cls(config)
    parameters = sum(p.numel() for p in model.parameters())
    model.to("cpu").save_pretrained(out_dir, max_shard_size=SHARD_SIZE)
    del model
    if device != "cpu":
        torch.cuda.empty_cache()
    logger.info(
        "  %s: %s, %.0f M parameters, %.1f GB in fp32, %.0f s",
        out_dir.name,
        class_name,
        parameters / 1e6,
        parameters * 4 / 1e9,
        time.perf_counter() - started,
    )


def create_random_model(
    name: str,
    out_dir: Path,
    seed: int = SEED,
    without_t5: bool = False,
    device: str = "cpu",
    source: Path | None = None,
) -> Path:
    """Create the published model ``name`` (:data:`PUBLISHED`) with random weights as a diffusers folder ``out_dir``.

    Components are made and saved one at a time, so the peak memory is about the largest one plus a shard.
    ``without_t5``: SD3 without its T5 encoder (4.8 G parameters), as diffusers runs it with ``text_encoder_3=None``.
    ``device``: where the weights are initialised (a GPU makes SDXL's in seconds, not minutes); ``source``: another
    diffusers folder whose configs to use instead of the published model's.
    """
    import torch

    if source is None and name not in PUBLISHED:
        raise ValueError(f"unknown published model {name!r}; choose one of {', '.join(PUBLISHED)}")
    if without_t5 and name != "sd3":
        raise ValueError(f"only SD3 runs without T5, not {name}")
    source = source or PUBLISHED_DIR / name
    index = json.loads((source / "model_index.json").read_text())
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    torch.manual_seed(seed)
    logger.info("creating %s with random weights in %s", name, out_dir)
    for component, value in sorted(index.items()):
        if component.startswith("_") or not isinstance(value, list) or None in value:
            continue
        library, class_name = value
        config_dir = source / component
        if not config_dir.is_dir() or (without_t5 and component in OPTIONAL_T5):  # published, not served
            index[component] = [None, None]
        elif class_name == "CLIPTokenizer":
            write_clip_tokenizer(config_dir, partial / component)
        elif class_name in ("T5Tokenizer", "T5TokenizerFast"):
            write_t5_tokenizer(config_dir, partial / component)
        elif component in COPIED:
            shutil.copytree(config_dir, partial / component)
        else:
            _create_component(library, class_name, config_dir, partial / component, device)
    (partial / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir
