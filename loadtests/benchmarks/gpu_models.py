"""The models ``easel bench gpu`` measures, made and built fast enough for a lent GPU machine's few minutes.

A published model with random weights (:mod:`build_engines.text_to_image.published`) is made on the CPU by
:func:`~build_engines.text_to_image.published.create_random_model`: SDXL's 3.5 G parameters take minutes there, most
of it initialising the modules. On a GPU, :func:`create_on_device` makes each component under ``torch.device``
instead (the same configs and initialisers, so the same kind of weights: random, fp32, from another generator) and
saves it as the CPU path does; the CPU path itself is unchanged. :func:`build_unmeasured` builds the torch engines
without measuring each engine's memory in a fresh process (what admission and activation pools read, which the bench
uses neither of): a process per engine, tens of seconds per model on that machine.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def model_dir(name: str, device: str) -> Path:
    """The model's diffusers folder: the embedded default, or a published model with random weights (made once)."""
    from build_engines.text_to_image.build import default_model_dir
    from build_engines.text_to_image.published import create_random_model
    from serve.paths import easel_home

    if name == "tiny":
        return default_model_dir("tiny")
    folder = easel_home() / "models" / f"random-{name}"
    if (folder / "model_index.json").exists():
        return folder
    if device == "cuda":
        return create_on_device(name, folder, device)
    return create_random_model(name, folder)


def create_on_device(name: str, out_dir: Path, device: str, source: Path | None = None, seed: int = 0) -> Path:
    """The published model ``name`` (or the configs in ``source``) with random fp32 weights initialised on ``device``.

    Each component is made on ``device``, saved from the CPU and freed before the next; tokenizers and the scheduler
    as :func:`~build_engines.text_to_image.published.create_random_model` writes them.
    """
    import torch

    from build_engines.text_to_image.published import PUBLISHED_DIR, write_clip_tokenizer, write_t5_tokenizer

    source = source or PUBLISHED_DIR / name
    index = json.loads((source / "model_index.json").read_text())
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    torch.manual_seed(seed)
    logger.info("creating %s with random weights on %s in %s", name, device, out_dir)
    for component, value in sorted(index.items()):
        if component.startswith("_") or not isinstance(value, list) or None in value:
            continue
        library, class_name = value
        config_dir = source / component
        if not config_dir.is_dir():
            index[component] = [None, None]
        elif class_name == "CLIPTokenizer":
            write_clip_tokenizer(config_dir, partial / component)
        elif class_name in ("T5Tokenizer", "T5TokenizerFast"):
            write_t5_tokenizer(config_dir, partial / component)
        elif component == "scheduler":
            shutil.copytree(config_dir, partial / component)
        else:
            _create_component(library, class_name, config_dir, partial / component, device)
    (partial / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir


def _create_component(library: str, class_name: str, config_dir: Path, out_dir: Path, device: str) -> None:
    import diffusers
    import torch
    import transformers

    from build_engines.text_to_image.published import SHARD_SIZE

    started = time.perf_counter()
    with torch.device(device):
        if library == "diffusers":
            cls = getattr(diffusers, class_name)
            model = cls.from_config(cls.load_config(config_dir))
        else:
            config = transformers.AutoConfig.from_pretrained(config_dir)
            config.dtype = torch.float32
            model = getattr(transformers, class_name)(config)
    made = time.perf_counter()
    model.to("cpu").save_pretrained(out_dir, max_shard_size=SHARD_SIZE)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    logger.info(
        "  %s: %s, %.0f M parameters, made in %.1f s, saved in %.1f s",
        out_dir.name,
        class_name,
        parameters / 1e6,
        made - started,
        time.perf_counter() - made,
    )


def build_unmeasured(model: Path, repository: Path, prefix: str, precision: str, device: str):
    """The torch engines of ``model`` at ``precision`` on ``device``, installed in ``repository``: the engine folder."""
    from build_engines.text_to_image.build import build

    how = {"runtime": "torch", "precision": precision, "device": device, "measure_memory": False}
    return build(model, repository, prefix=prefix, **how)
