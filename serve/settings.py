"""A stack's settings, declared once: what ``easel up`` takes, and the part the Serve application is given too.

:class:`StackOptions` is everything ``easel up`` takes; :class:`AppSettings`, its base, is what the Serve
application's arguments (:class:`AppArgs`) share with it.

``easel up``'s options are these fields (:mod:`serve.cli.options`); a field whose command-line spelling is not
``--field-name`` says so in its :class:`~serve.cli.options.Cli` marker. The README's table of them is generated:
``python -m serve.settings`` rewrites it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
from pydantic import ConfigDict, Field, field_validator, model_validator

from serve.adapters.registry import DEFAULT_RESIDENT
from serve.cache import DEFAULT_CACHE_BYTES
from serve.cli.options import (
    EXISTING_FILE,
    EXISTING_FOLDER,
    FOLDER,
    NAMED_FILE,
    NAMED_FOLDER,
    NAMED_JSON,
    NOT_ON_CLI,
    PORTS,
    SIZE,
    Cli,
    ForModel,
    ModelFolder,
    ModelLoras,
    markdown_table,
    model_options,
    one_line_errors,
    per_model,
)
from serve.errors import InvalidInput, UnsupportedModel
from serve.experiments.policy import Experiment, ExperimentSpec
from serve.latent_cache import DEFAULT_SIMILARITY
from serve.moderation import Policy
from serve.moderation.text import Blocklist
from serve.paths import PROJECT_ROOT, SERVE_CONFIG, live_repository, run_dir
from serve.processes.ports import GRPC_PORT, TRITON_PORTS
from serve.results.settings import ResultSettings
from serve.stores import default_url
from serve.text_to_image.admission import DEFAULT_MAX_COST
from serve.text_to_image.generation import StackDefaults
from serve.text_to_image.guidance import NO_CUTOFF
from serve.triton.memory import DEFAULT_BUDGET_SHARE
from serve.triton.runtimes import (
    AUTO,
    DEFAULT_PRECISION,
    DEFAULT_RUNTIME,
    FITTING_PRECISION,
    PRECISION_CHOICES,
    PRECISIONS,
    RUNTIME_CHOICES,
    check_choice,
)
from serve.webhooks.settings import WebhookSettings

Port = Annotated[int, Field(ge=0, le=65535)]
DEFAULT_MODEL = "easel-default"
"""The name the embedded default model is served under."""


class AppSettings(WebhookSettings, ResultSettings):
    """What the Serve application is told besides where its engines and Triton are: its budgets, its stores."""

    memory_budget_bytes: Annotated[int | None, Cli("--memory-budget", SIZE)] = Field(
        None,
        gt=0,
        description="Memory the text-to-image engines may use (default: their weights plus "
        f"{DEFAULT_BUDGET_SHARE:.0%} of the memory the weights leave).",
    )
    max_cost: float = Field(
        DEFAULT_MAX_COST,
        gt=0,
        description="Largest cost one generation may have: images x megapixels x engine passes (steps that run x "
        "(1 + ControlNets), the VAE's) + input megapixels.",
    )
    store_url: Annotated[str | None, Cli("--store", metavar="URL", deprecated=("--jobs",))] = Field(
        None,
        description="The stack's store, where jobs, the result cache and API keys live: sqlite:///PATH (default: "
        "easel.db in the run folder, $EASEL_HOME/run) or redis://HOST:PORT/DB (a stack across machines).",
    )
    cache_bytes: Annotated[
        int, Cli(type=SIZE, off="--no-cache", off_help="No result cache: every generation runs.")
    ] = Field(DEFAULT_CACHE_BYTES, ge=0, description="Result cache bound (0: no cache).")
    experiments: Annotated[
        dict[str, ExperimentSpec], Cli("--experiment", NAMED_JSON, metavar="NAME=JSON", multiple=True)
    ] = Field(
        {},
        description="An experiment: model alias NAME split among served models by weight, sticky per user "
        '({"variants": {"v1": 0.9, "v2": 0.1}}), or a Thompson-sampling bandit ({"policy": "bandit", "variants": '
        '["v1", "v2"]}) learning from POST /v1/feedback (repeatable; it seeds the store: '
        "one the store holds already, maybe edited through the API, stays as it is).",
    )
    model_weights_bytes: Annotated[int | None, Cli("--model-weights", SIZE)] = Field(
        None,
        gt=0,
        description="Memory the loaded models' weights may use together, out of the memory budget (default: every "
        "model's: all stay loaded). A request for a model that does not fit waits while the least recently used "
        "models with no request in flight are unloaded and it is loaded; the rest of the budget is one activation "
        "pool for all models.",
    )
    pin: Annotated[tuple[str, ...], Cli(type=click.STRING, metavar="NAME", multiple=True)] = Field(
        (), description="A model that stays loaded whatever else is asked (repeatable)."
    )
    vectorize_record_rate: Annotated[float, Cli(metavar="SHARE")] = Field(
        0.0,
        ge=0,
        le=1,
        description="The share of vectorize answers recorded in the store with their predicted and measured SSIM, "
        "features, tier and parameters, for `easel vectorize export-feedback` (a recorded answer's SSIM is measured: "
        "a render more; 0: none).",
    )
    vectorize_record_images: bool = Field(
        False, description="Keep the uploaded image with each recorded vectorize answer (what retraining needs)."
    )
    vectorize_record_rows: int = Field(10_000, ge=1, description="The most vectorize answers the store keeps.")
    guidance_cutoff: float = Field(
        NO_CUTOFF,
        gt=0,
        le=1,
        description="Adaptive guidance for requests that do not set guidance_cutoff: the share of a generation's "
        "steps that run guided (1: all of them, today's images).",
    )

    approximate_cache: Annotated[float, Cli(metavar="SHARE")] = Field(
        0.0,
        ge=0,
        lt=1,
        description="Approximate caching across requests: keep each generation's latents this share of its steps "
        "in, and start a later one whose prompt is similar (same model, size, sampler, steps, guidance, adapters) "
        "from them, skipping those steps (0: off). Requests without a seed use it unless they say "
        "approximate_cache false; requests with one only when they say true.",
    )
    approximate_similarity: float = Field(
        DEFAULT_SIMILARITY,
        gt=0,
        le=1,
        description="The similarity (cosine of the prompts' mean-pooled text embeddings) at which a kept prompt's "
        "latents are reused.",
    )
    share_caches: bool = Field(
        False,
        description="Share the result cache and the approximate cache across API keys (a single-tenant stack). "
        "It reveals to every key what the others asked: a hit (Easel-Cache: hit, and its speed) says another key "
        "sent that prompt and seed, and Easel-Steps-Skipped an image started from another key's similar prompt. "
        "Default: each key has its own entries.",
    )

    moderation: Annotated[
        Policy, Cli(type=click.Choice([str(policy) for policy in Policy]), default=Policy.OFF.value)
    ] = Field(
        Policy.OFF,
        description="What a flagged prompt or image does: off (nothing is checked), flag (each image carries "
        "`moderation` marks), block (a flagged prompt is a 400 content_policy_violation, a flagged image is blacked "
        "out); a key's own (`easel keys create --moderation`) overrides it. Turn it on for any public deployment.",
    )
    prompt_blocklist: Annotated[Path | None, Cli(type=EXISTING_FILE, metavar="FILE")] = Field(
        None,
        description="A prompt blocklist: one entry a line (a word or phrase matched as whole words, `re:PATTERN`, "
        "either as `CATEGORY: ENTRY`; `#` comments), checked on prompts (and by POST /v1/moderations).",
    )

    @field_validator("prompt_blocklist")
    @classmethod
    def _blocklist_reads(cls, path: Path | None) -> Path | None:
        """A blocklist file that does not read as one is refused now, naming its line."""
        Blocklist.read(path)
        return path

    @property
    def defaults(self) -> StackDefaults:
        """What the stack gives requests that leave a technique unset."""
        return StackDefaults(self.guidance_cutoff, self.approximate_cache, self.approximate_similarity)

    @property
    def store(self) -> str:
        """The store's URL: ``store_url``, or the embedded default."""
        return self.store_url or default_url()


class AppArgs(AppSettings):
    """Arguments of the Easel Serve application (``args:`` in the Serve config); its budgets and store: the base's."""

    models: dict[str, str] = Field(
        min_length=1,
        description="The models served: NAME -> engine folder from `easel build` (tokenizer, scheduler, "
        "pipeline.json), installed in Triton's repository under the names `easel up` gives them; the first is the "
        "default (its engines keep their bare names, e.g. `unet`; another's are `NAME.unet`).",
    )
    triton_grpc_url: str = Field(
        description="host:port of Triton's gRPC endpoint, or `this-node`: each replica's own node's Triton (a cluster)."
    )
    loras_dir: dict[str, str] = Field(
        {},
        description="The LoRA registry folder (registry.json) `easel up --loras` wrote for each model with "
        "LoRA-ready engines, by model name; a model not named takes no LoRAs.",
    )
    triton_http_url: str | None = Field(
        None,
        description="Triton's HTTP endpoint, for loading and unloading models (its control key in the workers' "
        "environment); None: every model stays loaded.",
    )
    parked_path: str | None = Field(
        None, description="The file naming the Triton models not loaded now, which Triton's supervisor reads."
    )
    model_table_path: str | None = Field(
        None,
        description="The file naming the models served now (`models.json`), which models added, replaced or removed "
        "while the stack runs change; None: `models`, unchangeable.",
    )
    repository: str | None = Field(
        None, description="Triton's model repository, where a model added or replaced while the stack runs goes."
    )
    upscalers_dir: str | None = Field(
        None,
        description="The finishing engines' folder `easel up --upscaler` and `--face-restorer` built (upscalers.json, "
        "restorers.json); None: none.",
    )
    vectorize_table_path: str | None = Field(None, description="The file naming the vectorize versions; None: v1.")
    url_secret_path: str | None = Field(
        None, description="The stack's secret that signs image URLs, a file in the run folder; None: this process's."
    )
    webhook_secret_path: str | None = Field(
        None, description="The stack's secret that signs job webhooks, a file in the run folder; None: no webhooks."
    )
    safety_checker_dir: str | None = Field(
        None,
        description="The image safety checker's engine folder the stack built (its CLIP processor's settings beside "
        "the engine; serve.moderation.images.ImageChecker.on_triton); None: no image checker.",
    )
    text_moderator_dir: str | None = Field(
        None,
        description="The text moderator's engine folder the stack built (its tokenizer and labels beside the engine; "
        "serve.moderation.text_model.TextModerator.on_triton); None: prompts are checked by the blocklist alone.",
    )


class StackOptions(AppSettings):
    """What ``easel up`` starts, and where."""

    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not the default silently

    host: str = Field("127.0.0.1", description="Address of the public API.")
    port: Port = Field(8000, description="Port of the public API (0: a free port).")
    models: Annotated[
        dict[str, Path | None], Cli("--model", ModelFolder((DEFAULT_MODEL,)), metavar="[NAME=]DIR", multiple=True)
    ] = Field(
        {},
        description="A local diffusers model folder (an SD 1.x/2.x, SDXL, SD3 or Flux pipeline) served as model NAME "
        "(repeatable: a request's `model` picks one, the first is the default; DIR alone: named after its folder; "
        f"`{DEFAULT_MODEL}` alone: the embedded model). Default: the embedded model, as `{DEFAULT_MODEL}`.",
    )
    repository: Annotated[Path | None, Cli(type=FOLDER)] = Field(
        None,
        description="Triton model repository (default: model_repository in the run folder, $EASEL_HOME/run; the "
        "checkout's model_repository/ is a template, never written).",
    )
    serve_config: Annotated[Path, Cli(type=EXISTING_FILE)] = Field(SERVE_CONFIG, description="Ray Serve config YAML.")
    dashboard: Annotated[bool, NOT_ON_CLI] = Field(True, description="Start the Ray dashboard.")
    dashboard_port: Port = Field(8265, description="Ray dashboard port (0: a free port).")
    run_dir: Annotated[Path, NOT_ON_CLI] = Field(default_factory=run_dir, description="Logs and state.")
    prometheus: bool = Field(False, description="Also start /usr/bin/prometheus (Debian) scraping Triton and Ray.")
    prometheus_port: Port = Field(9090, description="Prometheus port on 127.0.0.1 (0: a free port).")
    scrape_interval_s: Annotated[float, NOT_ON_CLI] = Field(5.0, ge=1, le=60, description="Prometheus scrape interval.")
    canary_interval_s: Annotated[float, NOT_ON_CLI] = Field(
        10.0, gt=0, description="Seconds between canary inferences on every model."
    )
    insecure: bool = Field(False, description="Serve on a non-loopback host even with no API key (anyone may call it).")
    triton_ports: Annotated[
        tuple[int, int, int], Cli(type=PORTS, default=TRITON_PORTS, metavar="HTTP,GRPC,METRICS")
    ] = Field((0, 0, 0), description="Triton's HTTP, gRPC and metrics ports on 127.0.0.1 (0: a free port).")
    grpc_port: Annotated[Port, Cli(default=GRPC_PORT)] = Field(
        0, description="Port of the public gRPC API, on the API's host (0: a free port)."
    )
    address: Annotated[str | None, Cli(metavar="HOST:PORT")] = Field(
        None,
        description="Deploy onto a running Ray cluster (its GCS host:port) instead of starting Ray: every node "
        "started with the `triton` resource (ray start --resources='{\"triton\": 1}') gets its own Triton and the "
        "model replicas.",
    )
    loras_dir: Annotated[dict[str, Path], Cli("--loras", ModelLoras(), metavar="[MODEL=]DIR", multiple=True)] = Field(
        {},
        description="Folder of LoRA adapters of served model MODEL (DIR alone: the default model's; repeatable, one "
        "per model): each NAME.safetensors (diffusers/PEFT or kohya format) is adapter NAME, chosen per request of "
        "that model (its engines are built LoRA-ready, and take uploads: POST /v1/loras).",
    )
    lora_resident: int = Field(
        DEFAULT_RESIDENT,
        ge=1,
        description="LoRA adapters each engine instance keeps loaded (least recently used go first).",
    )
    ip_adapters: Annotated[
        dict[str, dict[str, Path]],
        Cli("--ip-adapter", ForModel(ModelFolder(())), metavar="[MODEL:][NAME=]DIR", multiple=True),
    ] = Field(
        {},
        description="An IP-Adapter folder: its weights (as load_ip_adapter reads them) and image_encoder/, served as "
        "IP-Adapter NAME of served model MODEL (DIR alone: named after its folder; no MODEL: the default model's); "
        "repeatable: several at once, as load_ip_adapter with lists (the first's image encoder encodes references "
        "for all). References per request.",
    )
    controlnets: Annotated[
        dict[str, dict[str, Path]],
        Cli("--controlnet", ForModel(NAMED_FOLDER), metavar="[MODEL:]NAME=DIR", multiple=True),
    ] = Field(
        {},
        description="A diffusers ControlNetModel folder, served as ControlNet NAME of served model MODEL (no MODEL: "
        "the default model's; repeatable; several may guide one request). One made for another model is listed with "
        "why (GET /v1/controlnets) and not served.",
    )
    motion_adapters: Annotated[
        dict[str, Path], Cli("--motion-adapter", NAMED_FOLDER, metavar="NAME=DIR", multiple=True)
    ] = Field(
        {},
        description="A diffusers MotionAdapter folder (AnimateDiff), served as motion adapter NAME for videos "
        "(POST /v1/videos) of the default model, an SD 1.x one (repeatable; one that does not fit is refused).",
    )
    upscalers: Annotated[dict[str, Path], Cli("--upscaler", NAMED_FILE, metavar="NAME=FILE", multiple=True)] = Field(
        {},
        description="An upscaler weights file (.pth, .safetensors: RRDBNet ESRGAN/Real-ESRGAN x4plus/x2plus, "
        "SRVGGNetCompact realesr-general; or .onnx), served as upscaler NAME by tiles (repeatable). One not "
        "recognised is listed with why (GET /v1/upscalers) and not served.",
    )
    face_restorers: Annotated[
        dict[str, Path], Cli("--face-restorer", NAMED_FILE, metavar="NAME=FILE", multiple=True)
    ] = Field(
        {},
        description="A face restorer weights file (.pth, .safetensors: GFPGAN v1 clean, as GFPGANv1.4.pth), served "
        "as face restorer NAME for `restore_faces` (repeatable). One not recognised is listed with why (GET "
        "/v1/upscalers, `face_restorers`) and not served.",
    )
    safety_checker: Annotated[Path | None, Cli(type=EXISTING_FOLDER)] = Field(
        None,
        description="An image safety checker: a folder with diffusers' safety_checker/ (StableDiffusionSafetyChecker) "
        "and feature_extractor/ (as SD 1.x folders have), served as the Triton model safety_checker. Default: the "
        "default model's own, when its folder has them.",
    )
    text_moderator: Annotated[Path | None, Cli(type=EXISTING_FOLDER)] = Field(
        None,
        description="A text classifier checking prompts (and POST /v1/moderations' texts) beside the blocklist: a "
        "transformers sequence-classification folder (model, fast tokenizer) whose id2label are the categories it "
        "flags, served as the Triton model text_moderator. A label is flagged at the probability its config's "
        "moderation_thresholds names (default 0.5); a long text is read in overlapping 128-token windows.",
    )

    step_cache: bool = Field(
        False,
        description="Also build step caching's engines (a UNet that returns its deep features, and a shallow one), "
        "so requests may ask cache_interval (UNet models).",
    )
    runtime: Annotated[str, Cli(type=click.Choice(RUNTIME_CHOICES))] = Field(
        DEFAULT_RUNTIME,
        description="What runs the engines on the CPU: onnxruntime, openvino (the ONNX graph converted to OpenVINO IR "
        "at build), or auto (each engine measured both ways at build, the faster kept; one whose ONNX Runtime call is "
        "too small for OpenVINO to pay stays there).",
    )
    vae_decoder_dir: Annotated[Path | None, Cli("--vae-decoder", EXISTING_FOLDER)] = Field(
        None,
        description="A tiny VAE decoder (a diffusers AutoencoderTiny folder, TAESD's layout) served as the default "
        "model's vae_decoder, for previews and final images: a faster decode at a cost in detail.",
    )
    precision: Annotated[str, Cli(type=click.Choice(PRECISION_CHOICES))] = Field(
        DEFAULT_PRECISION,
        description="The engines' precision: "
        + "; ".join(f"{name}: {p.meaning}" for name, p in PRECISIONS.items())
        + f"; {AUTO}: fp32, or {FITTING_PRECISION} where this machine's memory cannot serve the model's fp32 engines "
        "(decided at build from their measured weights). bf16 and int8 run on OpenVINO.",
    )

    @property
    def store(self) -> str:
        """The store's URL: ``store_url``, or the embedded default in ``run_dir``."""
        return self.store_url or default_url(self.run_dir)

    @model_validator(mode="after")
    def _repository_in_the_run_folder(self) -> StackOptions:
        """The repository, when not given: the run folder's (:func:`serve.paths.live_repository`)."""
        if self.repository is None:
            self.repository = live_repository(self.run_dir)
        return self

    @model_validator(mode="after")
    def _runtime_runs_precision(self) -> StackOptions:
        """A runtime or precision that is not declared, or a pair that cannot run, is refused (one line)."""
        check_choice(self.runtime, self.precision)
        return self

    @model_validator(mode="after")
    def _experiments_name_served_models(self) -> StackOptions:
        """An ``--experiment`` whose variants are not all served models, or whose name is one, is refused now."""
        for name, spec in self.experiments.items():
            try:
                Experiment(name, spec).check(self.served)
            except InvalidInput as error:
                raise ValueError(f"experiment {name!r}: {error.message}") from None
        return self

    @field_validator("loras_dir", mode="before")
    @classmethod
    def _loras_by_model(cls, given):
        """A folder alone (``--loras DIR``, ``loras_dir=DIR``): the default model's."""
        return {"": given} if isinstance(given, str | Path) else given or {}

    @field_validator("ip_adapters", "controlnets", mode="before")
    @classmethod
    def _adapters_by_model(cls, given):
        """``MODEL:NAME`` keys (or ``NAME`` alone: the default model's) nested by model."""
        return per_model(given, (str, Path))

    @model_validator(mode="after")
    def _adapters_of_served_models(self) -> StackOptions:
        """Adapters given without a model become the default model's; those of a model not served are refused."""
        default = next(iter(self.served))
        for field, flag in (("loras_dir", "--loras"), ("ip_adapters", "--ip-adapter"), ("controlnets", "--controlnet")):
            by_model = dict(getattr(self, field))
            if "" in by_model:
                by_model[default] = _joined(flag, by_model.pop(""), by_model.get(default))
            for model in by_model:
                if model not in self.served:
                    raise ValueError(f"{flag}: no model {model!r} is served (served: {', '.join(self.served)})")
            setattr(self, field, by_model)
        return self

    @property
    def served(self) -> dict[str, Path | None]:
        """The models to serve by name, the default first (a folder None: the embedded model)."""
        return dict(self.models) or {DEFAULT_MODEL: None}

    @property
    def model_dir(self) -> Path | None:
        """The default model's folder (None: the embedded model)."""
        return next(iter(self.served.values()))


def _joined(flag: str, bare, named):
    """The default model's adapters given both without a model and by its name, or why they cannot be."""
    if named is None:
        return bare
    if not isinstance(bare, dict):
        raise ValueError(f"{flag}: two folders for the default model")
    if twice := sorted(set(bare) & set(named)):
        raise ValueError(f"{flag}: {', '.join(twice)} given twice for the default model")
    return bare | named


README = PROJECT_ROOT / "README.md"
TABLE_START = "<!-- `easel up` options: generated from serve.settings.StackOptions by `python -m serve.settings` -->"
TABLE_END = "<!-- end of the generated options -->"


def options_table() -> str:
    """``easel up``'s options from :class:`StackOptions`, as a markdown table."""
    return markdown_table(click.command("up")(model_options(StackOptions)(lambda **_: None)))


def readme_table(readme: str) -> str:
    """The table between :data:`TABLE_START` and :data:`TABLE_END` in ``readme``."""
    return readme.split(TABLE_START + "\n", 1)[1].split(TABLE_END, 1)[0]


def write_readme_table(path: Path = README) -> None:
    """Rewrite the README's table of ``easel up``'s options from :class:`StackOptions`."""
    head, rest = path.read_text().split(TABLE_START + "\n", 1)
    path.write_text(f"{head}{TABLE_START}\n{options_table()}{TABLE_END}{rest.split(TABLE_END, 1)[1]}")


if __name__ == "__main__":
    write_readme_table()


MODEL_OPTION = click.option(
    "--model", "model_dir", type=EXISTING_FOLDER, help="Local diffusers model folder. Default: the embedded model."
)
"""The one model folder of a command that takes one (``easel build``, the benchmarks)."""


def check_model(model_dir: Path | None) -> None:
    """Refuse a folder that is not a supported pipeline with a one-line error, before anything starts."""
    from serve.text_to_image.families import family_of_folder  # here: `easel --help` loads no torch

    if model_dir is not None:
        with one_line_errors(UnsupportedModel):
            family_of_folder(model_dir)
