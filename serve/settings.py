"""A stack's settings, declared once: what ``easel up`` takes, and the part the Serve application is given too.

:class:`StackOptions` is everything ``easel up`` takes; :class:`AppSettings`, its base, is what the Serve
application's arguments (:class:`serve.gateway.AppArgs`) share with it.

``easel up``'s options are these fields (:mod:`serve.cli.fields`); a field whose command-line spelling is not
``--field-name`` says so in its :class:`~serve.spelling.Cli` marker (no command-line library here). docs/CLI.md lists
them, generated from the ``easel`` command (``python -m serve.cli.reference``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import ConfigDict, Field, field_validator, model_validator

from serve.adapters.by_model import joined, per_model
from serve.adapters.limits import LoraSettings
from serve.adapters.registry import DEFAULT_RESIDENT
from serve.cache import DEFAULT_CACHE_BYTES
from serve.errors import InvalidInput
from serve.experiments.policy import Experiment, ExperimentSpec
from serve.finishing.settings import FinishingSettings
from serve.models.admission import DEFAULT_MAX_COST
from serve.moderation import Policy
from serve.moderation.text import Blocklist
from serve.names import DEFAULT_MODEL
from serve.paths import SERVE_CONFIG, live_repository, run_dir
from serve.processes.ports import GRPC_PORT, TRITON_PORTS
from serve.processes.tls import TlsSettings
from serve.remote.settings import RemoteSettings
from serve.resilience.settings import ResilienceSettings
from serve.results.settings import ResultSettings
from serve.spelling import NOT_ON_CLI, Cli
from serve.stores import QuotaSettings, default_url
from serve.text_to_image.prompt_chunks import MAX_PROMPT_CHUNKS
from serve.text_to_image.settings import DrawingSettings
from serve.triton.graph_shapes import GraphShapes, parse_size
from serve.triton.memory import DEFAULT_BUDGET_SHARE
from serve.triton.runtimes import (
    AUTO,
    DEFAULT_PRECISION,
    DEFAULT_RUNTIME,
    DEVICES,
    FITTING_PRECISION,
    PRECISION_CHOICES,
    PRECISIONS,
    RUNTIME_CHOICES,
    check_choice,
)
from serve.webhooks.settings import WebhookSettings

Port = Annotated[int, Field(ge=0, le=65535)]


class AppSettings(
    DrawingSettings, RemoteSettings, ResilienceSettings, WebhookSettings, ResultSettings, LoraSettings, QuotaSettings
):
    """What the Serve application is told besides where its engines and Triton are: its budgets and its stores.

    Its bases declare the rest beside their features: the LoRA limits, the kept images', the webhooks', the circuit
    breakers' and fallback chains', the remote models', the quotas per key.
    """

    memory_budget_bytes: Annotated[int | None, Cli("--memory-budget", "SIZE")] = Field(
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
        int, Cli(type="SIZE", off="--no-cache", off_help="No result cache: every generation runs.")
    ] = Field(DEFAULT_CACHE_BYTES, ge=0, description="Result cache bound (0: no cache).")
    experiments: Annotated[
        dict[str, ExperimentSpec], Cli("--experiment", "NAMED_JSON", metavar="NAME=JSON", multiple=True)
    ] = Field(
        {},
        description="An experiment: model alias NAME split among served models by weight, sticky per user "
        '({"variants": {"v1": 0.9, "v2": 0.1}}), or a Thompson-sampling bandit ({"policy": "bandit", "variants": '
        '["v1", "v2"]}) learning from POST /v1/feedback (repeatable; it seeds the store: '
        "one the store holds already, maybe edited through the API, stays as it is).",
    )
    model_weights_bytes: Annotated[int | None, Cli("--model-weights", "SIZE")] = Field(
        None,
        gt=0,
        description="Memory the loaded models' weights may use together, out of the memory budget (default: every "
        "model's: all stay loaded). A request for a model that does not fit waits while the least recently used "
        "models with no request in flight are unloaded and it is loaded; the rest of the budget is one activation "
        "pool for all models.",
    )
    pin: Annotated[tuple[str, ...], Cli(type="STRING", metavar="NAME", multiple=True)] = Field(
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
    share_caches: bool = Field(
        False,
        description="Share the result cache and the approximate cache across API keys (a single-tenant stack). "
        "It reveals to every key what the others asked: a hit (Easel-Cache: hit, and its speed) says another key "
        "sent that prompt and seed, and Easel-Steps-Skipped an image started from another key's similar prompt. "
        "Default: each key has its own entries.",
    )

    moderation: Annotated[Policy, Cli(choices=tuple(map(str, Policy)), default=Policy.OFF.value)] = Field(
        Policy.OFF,
        description="What a flagged prompt or image does: off (nothing is checked), flag (each image carries "
        "`moderation` marks), block (a flagged prompt is a 400 content_policy_violation, a flagged image is blacked "
        "out); a key's own (`easel keys create --moderation`) overrides it. Turn it on for any public deployment.",
    )
    prompt_blocklist: Annotated[Path | None, Cli(type="EXISTING_FILE", metavar="FILE")] = Field(
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
    def store(self) -> str:
        """The store's URL: ``store_url``, or the embedded default."""
        return self.store_url or default_url()


class StackOptions(AppSettings, TlsSettings, FinishingSettings):
    """What ``easel up`` starts and where; the certificate (TlsSettings), finishing engines (FinishingSettings)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not the default silently

    host: str = Field("127.0.0.1", description="Address of the public API.")
    port: Port = Field(8000, description="Port of the public API (0: a free port).")
    models: Annotated[
        dict[str, Path | None], Cli("--model", "DEFAULT_MODEL_FOLDERS", metavar="[NAME=]DIR", multiple=True)
    ] = Field(
        {},
        description="A local diffusers model folder (an SD 1.x/2.x, SDXL, SD3, Flux or Stable Video Diffusion "
        "pipeline) served as model NAME "
        "(repeatable: a request's `model` picks one, the first is the default; DIR alone: named after its folder; "
        f"`{DEFAULT_MODEL}` alone: the embedded model). Default: the embedded model, as `{DEFAULT_MODEL}`. On a "
        "run folder that served before, the models named win (the first is the default, each serves this build); "
        "the others the API left stay.",
    )
    reset_models: bool = Field(
        False, description="Forget the run folder's model table: serve only this command line's models."
    )
    repository: Annotated[Path | None, Cli(type="FOLDER")] = Field(
        None,
        description="Triton model repository (default: model_repository in the run folder, $EASEL_HOME/run; the "
        "checkout's model_repository/ is a template, never written).",
    )
    serve_config: Annotated[Path, Cli(type="EXISTING_FILE")] = Field(SERVE_CONFIG, description="Ray Serve config YAML.")
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
        tuple[int, int, int], Cli(type="PORTS", default=TRITON_PORTS, metavar="HTTP,GRPC,METRICS")
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
    loras_dir: Annotated[dict[str, Path], Cli("--loras", "MODEL_LORAS", metavar="[MODEL=]DIR", multiple=True)] = Field(
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
        Cli("--ip-adapter", "ADAPTER_FOLDERS", metavar="[MODEL:][NAME=]DIR", multiple=True),
    ] = Field(
        {},
        description="An IP-Adapter folder: its weights (as load_ip_adapter reads them) and image_encoder/, served as "
        "IP-Adapter NAME of served model MODEL (DIR alone: named after its folder; no MODEL: the default model's); "
        "repeatable: several at once, as load_ip_adapter with lists (the first's image encoder encodes references "
        "for all). References per request. An IP-Adapter FaceID (h94's layout; a FaceID Plus with image_encoder/) "
        "draws a generation's identity, with its LoRA (the model must be LoRA-ready).",
    )
    controlnets: Annotated[
        dict[str, dict[str, Path]],
        Cli("--controlnet", "CONTROL_FOLDERS", metavar="[MODEL:]NAME=DIR", multiple=True),
    ] = Field(
        {},
        description="A diffusers ControlNetModel folder, served as ControlNet NAME of served model MODEL (no MODEL: "
        "the default model's; repeatable; several may guide one request). One made for another model is listed with "
        "why (GET /v1/controlnets) and not served.",
    )
    motion_adapters: Annotated[
        dict[str, Path], Cli("--motion-adapter", "NAMED_FOLDER", metavar="NAME=DIR", multiple=True)
    ] = Field(
        {},
        description="A diffusers MotionAdapter folder (AnimateDiff), served as motion adapter NAME for videos "
        "(POST /v1/videos) of the default model, an SD 1.x one (repeatable; one that does not fit is refused).",
    )
    safety_checker: Annotated[Path | None, Cli(type="EXISTING_FOLDER")] = Field(
        None,
        description="An image safety checker: a folder with diffusers' safety_checker/ (StableDiffusionSafetyChecker) "
        "and feature_extractor/ (as SD 1.x folders have), served as the Triton model safety_checker. Default: the "
        "default model's own, when its folder has them.",
    )
    scorers: Annotated[dict[str, Path], Cli("--scorer", "NAMED_PATH", metavar="NAME=PATH", multiple=True)] = Field(
        {},
        description="Image scores as served engines: clip=DIR (a transformers CLIPModel folder with its tokenizer "
        "and image processor: clip_score, the prompt-image cosine) and aesthetic=FILE (LAION's aesthetic predictor "
        "over that CLIP's image embedding, .pth or .safetensors), for POST /v1/images/score and a generation's scores.",
    )
    text_moderator: Annotated[Path | None, Cli(type="EXISTING_FOLDER")] = Field(
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
    runtime: Annotated[str, Cli(choices=tuple(RUNTIME_CHOICES))] = Field(
        DEFAULT_RUNTIME,
        description="What runs the engines: onnxruntime, openvino (the ONNX graph converted to OpenVINO IR at build), "
        "torch (the PyTorch modules, on a GPU with CUDA graphs), or auto (on a GPU: torch; on a CPU, each engine "
        "measured both ways at build, the faster kept; one whose ONNX Runtime call is too small for OpenVINO to pay "
        "stays there).",
    )
    device: Annotated[str, Cli(choices=tuple(DEVICES))] = Field(
        "auto",
        description="Where the engines run: cuda (the torch runtime, fp16 unless --precision says otherwise, one "
        "Triton instance per engine on the GPU), cpu, or auto (cuda where PyTorch sees a GPU).",
    )
    graph_sizes: Annotated[tuple[str, ...], Cli("--graph-size", "STRING", metavar="HxW", multiple=True)] = Field(
        (),
        description="An image size in pixels (HEIGHTxWIDTH) whose CUDA graphs every torch-runtime engine captures "
        "beside its native size (repeatable). A call at a shape not captured runs eager: logged once per shape and "
        "counted (Triton's easel_engine_eager_calls_total).",
    )
    graph_chunks: int = Field(
        1,
        ge=1,
        le=MAX_PROMPT_CHUNKS,
        description="Prompt chunks (77 tokens each) up to which the torch-runtime engines capture their graphs, at "
        "each captured size (1: prompts up to 75 tokens).",
    )
    vae_decoder_dir: Annotated[Path | None, Cli("--vae-decoder", "EXISTING_FOLDER")] = Field(
        None,
        description="A tiny VAE decoder (a diffusers AutoencoderTiny folder, TAESD's layout) served as the default "
        "model's vae_decoder, for previews and final images: a faster decode at a cost in detail.",
    )
    precision: Annotated[str, Cli(choices=tuple(PRECISION_CHOICES))] = Field(
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

    @field_validator("graph_sizes")
    @classmethod
    def _graph_sizes_are_sizes(cls, sizes: tuple[str, ...]) -> tuple[str, ...]:
        for size in sizes:
            parse_size(size)
        return sizes

    @property
    def graphs(self) -> GraphShapes:
        """The shapes every torch-runtime engine captures (:mod:`serve.triton.graph_shapes`)."""
        return GraphShapes(tuple(parse_size(size) for size in self.graph_sizes), self.graph_chunks)

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
                Experiment(name, spec).check({**self.served, **self.remotes})
            except InvalidInput as error:
                raise ValueError(f"experiment {name!r}: {error.message}") from None
        return self

    @model_validator(mode="after")
    def _models_named_once(self) -> StackOptions:
        """A remote model named as a served one is refused now."""
        for name in set(self.remotes) & set(self.served):
            raise ValueError(f"--remote: {name!r} is a served model's name")
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
                by_model[default] = joined(flag, by_model.pop(""), by_model.get(default))
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
