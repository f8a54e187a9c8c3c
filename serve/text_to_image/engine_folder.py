"""A built engine folder, opened once: its layout, the model family it was built from, its specs and memory figures.

``easel build`` (:mod:`build_engines.text_to_image.build`) is the folder's only writer; everything that serves or
measures the model reads it through :class:`EngineFolder`. Its name is its content key (the model's hash, runtime and
precision, adapters and exporter versions), so two folders with the same name hold the same engines.

```
<key>/
  pipeline.json       the family, dims, step caching, motion adapters         manifest.json   the build's report (done)
  adapters.json       what adapters the engines take (absent: none)   unet_config.json  an IP-Adapter's UNet blocks
  controlnets.json    the ControlNets built (controlnet_<name>/) or refused, with why (absent: none)
  model_index.json, scheduler/, tokenizer*/, feature_extractor/       copied from the diffusers folder
  diffusers/          the torch runtime's: the diffusers folder, linked (its engines load their modules from it)
  linked/             the torch runtime's: each ready ControlNet's folder (controlnet_<name>/) and a tiny VAE
                      decoder's (vae_decoder/), linked, which those engines load from
  <engine>/           one folder per engine: serve.triton.engine_files (model.onnx, model.xml + model.bin: its
                      OpenVINO IR, torch.json: the torch runtime's, runtime.json: how it runs, memory.json,
                      lora_slots.json)
```
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from serve.adapters.lora import Slot, load_slots
from serve.adapters.support import AdapterSupport
from serve.errors import InvalidInput
from serve.text_to_image.controlnet import ControlNetSupport
from serve.text_to_image.families import FAMILIES, Family
from serve.text_to_image.families.folder import read_model_index
from serve.text_to_image.tiling import VaeTiling
from serve.triton.activations import PoolSpec
from serve.triton.engine_files import EngineFiles
from serve.triton.memory import MemoryModel, activation_pool, default_memory_budget
from serve.triton.runtimes import RuntimeChoice
from serve.triton.spec import ModelSpec

PIPELINE = "pipeline.json"
ADAPTERS = "adapters.json"
CONTROLNETS = "controlnets.json"
MANIFEST = "manifest.json"
UNET_CONFIG = "unet_config.json"
FACE_LORAS = "face_loras"
SCHEDULER = "scheduler"
FEATURE_EXTRACTOR = "feature_extractor"
DIFFUSERS = "diffusers"


class EngineFolder:
    """One built model's engines and what was saved beside them; read once, shared by whoever serves them."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        saved = json.loads((self.path / PIPELINE).read_text())
        adapters, controlnets = self._read(ADAPTERS, AdapterSupport), self._read(CONTROLNETS, ControlNetSupport)
        family = FAMILIES[saved["family"]]
        dims = family.dims_type(**saved["dims"])
        self.family: Family = family(
            dims, adapters, controlnets, saved.get("step_cache", False), saved.get("motion_adapters")
        )

    def _read(self, name: str, kind):
        """``kind`` read from the JSON file ``name`` (None when the folder has none)."""
        path = self.path / name
        return kind.from_json(json.loads(path.read_text())) if path.is_file() else None

    def __repr__(self) -> str:
        return f"EngineFolder({str(self.path)!r})"

    @staticmethod
    def built(path: Path) -> bool:
        """Whether ``path`` holds a complete build (its manifest is written last)."""
        return (path / MANIFEST).is_file()

    @property
    def key(self) -> str:
        """The content key the folder is named by (the result cache's key names it too)."""
        return self.path.name

    @property
    def specs(self) -> dict[str, ModelSpec]:
        """Every engine's spec, adapter inputs included, in the family's export order."""
        return self.family.specs

    @property
    def adapters(self) -> AdapterSupport:
        """What adapters the engines take."""
        return self.family.adapters

    @property
    def controlnets(self) -> ControlNetSupport:
        """The ControlNets the folder was built with (ready, or refused with why)."""
        return self.family.controlnets

    def engine(self, name: str) -> EngineFiles:
        """The files of engine ``name``."""
        return EngineFiles(self.path / name)

    def runtimes(self) -> dict[str, RuntimeChoice]:
        """How each engine runs (its runtime, precision and error against fp32), by engine."""
        return {name: RuntimeChoice.of(self.engine(name)) for name in self.specs}

    def runtimes_table(self) -> str:
        """One line per engine: its runtime, precision, error against fp32 and the seconds measured at build."""
        lines = [f"{'engine':<16} {'runtime':<12} {'precision':<9} {'error vs fp32':>13}  seconds per call at build"]
        for name, choice in self.runtimes().items():
            error = "-" if choice.error_vs_fp32 is None else f"{choice.error_vs_fp32:.1e}"
            seconds = ", ".join(f"{k} {v:.3f}" for k, v in (choice.seconds or {}).items())
            lines.append(f"{name:<16} {choice.runtime.value:<12} {choice.precision:<9} {error:>13}  {seconds}")
        return "\n".join(lines)

    # -- memory -------------------------------------------------------------------------------------------------------

    @cached_property
    def memory_models(self) -> dict[str, MemoryModel]:
        """Each engine's measured memory and time model (engines not measured are left out)."""
        files = {name: self.engine(name).memory for name in self.specs}
        return {name: MemoryModel.load(path) for name, path in files.items() if path.exists()}

    @property
    def weights_bytes(self) -> int:
        """The engines' resident weights, once per Triton instance."""
        return sum(m.weights_bytes * self.specs[name].instance_count for name, m in self.memory_models.items())

    def memory_budget(self, requested: int | None = None) -> int:
        """The engines' memory budget: ``requested``, or the default for these engines' weights."""
        return requested if requested is not None else default_memory_budget(self.weights_bytes)

    def activation_bytes(self, total_bytes: int) -> int:
        """The activation pool the engines share within ``total_bytes`` (Triton bounds it, admission decides by it)."""
        return activation_pool(self.memory_models, self.specs, total_bytes)

    def pool(self, total_bytes: int, prefix: str = "") -> PoolSpec:
        """The activation pool Triton's stubs of these engines reserve their runs from, within ``total_bytes``.

        ``prefix``: what the engines' Triton model names start with (a stack's second model's, ``NAME.``).
        """
        return PoolSpec(self.activation_bytes(total_bytes), tuple(f"{prefix}{name}" for name in self.memory_models))

    @cached_property
    def tiling(self) -> VaeTiling:
        """How this model's VAE decodes in tiles (diffusers' tile size)."""
        return VaeTiling(self.family.dims.vae_sample_size, self.family.dims.vae_scale_factor)

    # -- what the loop reads ------------------------------------------------------------------------------------------

    def tokenizers(self) -> dict:
        """The family's tokenizers by folder name, each of the class ``model_index.json`` names (as diffusers loads)."""
        import transformers

        index = read_model_index(self.path)
        return {
            name: getattr(transformers, index[name][1]).from_pretrained(self.path / name)
            for name in self.family.tokenizers()
        }

    def scheduler_config(self) -> dict:
        """The model's scheduler config (every sampler is built from it)."""
        return json.loads((self.path / SCHEDULER / "scheduler_config.json").read_text())

    def unet_config(self) -> dict | None:
        """The UNet's config, saved for IP-Adapter engines (None for others)."""
        path = self.path / UNET_CONFIG
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def feature_extractor(self) -> Path:
        """The image preprocessing of IP-Adapter references, if the model has one."""
        return self.path / FEATURE_EXTRACTOR

    def face_loras(self) -> dict[str, Path]:
        """The LoRAs its IP-Adapter FaceIDs ship with, by the name the registry lists them (``NAME.lora``)."""
        folder = self.path / FACE_LORAS
        return {path.stem: path for path in sorted(folder.glob("*.safetensors"))} if folder.is_dir() else {}

    def lora_slots(self) -> dict[str, list[Slot]]:
        """The slot tables of the LoRA-ready engines, by engine."""
        files = {name: self.engine(name) for name in self.family.lora_ready_engines if name in self.specs}
        return {name: load_slots(f.lora_slots) for name, f in files.items() if f.lora_ready}


def open_engine_folder(engine_dir: str) -> EngineFolder:
    """The built engine folder at ``engine_dir``, or a 400 naming ``engine_dir`` saying why it cannot be served."""
    path = Path(engine_dir)
    try:
        folder_there = path.is_absolute() and path.is_dir()
    except (OSError, ValueError):  # a name too long, a character no file name has
        folder_there = False
    if not folder_there:
        raise InvalidInput(f"engine_dir: {engine_dir!r} is not an absolute path to a folder", "engine_dir")
    if not EngineFolder.built(path):
        raise InvalidInput(
            f"engine_dir: {engine_dir} holds no finished build ({MANIFEST}): `easel build --model DIR` makes one",
            "engine_dir",
        )
    try:
        folder = EngineFolder(path)
        unmeasured = sorted(set(folder.specs) - set(folder.memory_models))
    except (OSError, ValueError, KeyError, TypeError) as error:
        why = f"engine_dir: {engine_dir} is not a readable engine folder ({type(error).__name__}: {error})"
        raise InvalidInput(why, "engine_dir") from None
    if unmeasured:
        raise InvalidInput(f"engine_dir: engines not measured in {engine_dir}: {', '.join(unmeasured)}", "engine_dir")
    return folder
