"""The Gateway: the one ingress deployment, in front of the pipeline deployments, and the Serve app's builder.

It builds the plain serving classes (:mod:`serve.serving`) once per replica and hands them both transports: the HTTP
app (:mod:`serve.http.app`, its routes reaching them through the app's state) and the gRPC servicer
(:mod:`serve.grpc_api.servicer`, each RPC a method of this class by its name, as Ray Serve's gRPC proxy calls it).
No ``from __future__ import annotations`` here: Ray Serve reads the builder's ``AppArgs`` annotation at run time.
"""

from contextlib import aclosing

from fastapi import FastAPI
from pydantic import Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve.access import open_access
from serve.adapters.requests import StackAdapters
from serve.cache import open_cache
from serve.experiments import open_experiment_store
from serve.experiments.traffic import Experiments
from serve.finishing.upscalers import Upscalers
from serve.grpc_api.servicer import Servicer
from serve.http.app import api
from serve.jobs import open_job_store
from serve.models.served import ServedModels
from serve.moderation.text import Blocklist
from serve.resilience.circuits import Circuits
from serve.service_engines import ServiceEngines
from serve.serving.adapters import Adapters
from serve.serving.admission import Admission
from serve.serving.characters import Characters
from serve.serving.current_models import CurrentModels
from serve.serving.experiments import ExperimentsAndFeedback
from serve.serving.generations import Generations
from serve.serving.health import Health
from serve.serving.jobs import BackgroundJobs
from serve.serving.models import ModelAdmin
from serve.serving.moderation import Moderation
from serve.serving.ray_errors import against_model
from serve.serving.results import Results
from serve.serving.upscale import Upscaling
from serve.serving.vectorize import Vectorizing
from serve.serving.videos import Videos
from serve.settings import AppSettings
from serve.stores import stack_quotas
from serve.text_to_image.engine_folder import EngineFolder
from serve.vectorize.deployment import Vectorizer
from serve.vectorize.recording import Recording
from serve.vectorize.versions import TableReader
from serve.webhooks import sender_of


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
    vectorize_table_path: str | None = Field(None, description="The file naming the vectorize versions; None: v1.")
    service_engines: ServiceEngines = Field(
        default_factory=ServiceEngines,
        description="The folders of the engines the stack built beside its models: finishing, moderation, scoring.",
    )
    url_secret_path: str | None = Field(
        None, description="The stack's secret that signs image URLs, a file in the run folder; None: this process's."
    )
    webhook_secret_path: str | None = Field(
        None, description="The stack's secret that signs job webhooks, a file in the run folder; None: no webhooks."
    )
    audit_folder: str | None = Field(
        None, description="Where the audit log is kept (the run folder's `audit.jsonl`); None: no audit log."
    )


@serve.deployment(name="Gateway")
@serve.ingress()
class Gateway:
    """The ingress: builds the serving classes (serve/serving/) and hands them every HTTP route and gRPC method.

    Every generation, synchronous or a job's, is admitted by :class:`Admission` and answered by
    :class:`Generations`; each replica runs a job runner over the shared job store (:class:`BackgroundJobs`).
    """

    def __init__(
        self,
        text_to_image: DeploymentHandle,
        vectorizer: DeploymentHandle,
        residency: DeploymentHandle,
        models: ServedModels,
        args: AppArgs,
        upscalers: Upscalers,
        moderation: Moderation,
    ) -> None:
        """The pipelines' handles, the models served and the app's settings, each part read by what owns it.

        ``upscalers`` and ``moderation``: as the builder read them from their files, once, where the app starts.
        """
        store_url, triton_grpc_url = args.store, args.triton_grpc_url
        current = CurrentModels(models, key_envs=args.remote_key_envs)  # served and remote models, fallback chains
        cache = open_cache(store_url, args.cache_bytes) if args.cache_bytes > 0 else None
        vectorize_versions = TableReader(args.vectorize_table_path)  # an experiment's variants may be vectorize's
        variants = lambda: current.names() | set(vectorize_versions.now().variant_names())  # noqa: E731
        scores = args.service_engines.score_names()  # what the stack's scorer gives (none: no scorer)
        identity = ("identity",) if upscalers.faces.ready else ()  # a character's face kept, with face models
        traffic = Experiments(open_experiment_store(store_url), variants, scores=(*scores, *identity))
        for name, spec in args.experiments.items():  # declared at start-up (easel up --experiment): seeds them
            if not traffic.exists(name):  # one the store holds (the API may have edited it) stays as it is
                traffic.define(name, spec)
        quotas = stack_quotas(args)  # the stack's quotas per key (serve.stores.Quotas)
        self.upscaling = Upscaling.on_triton(upscalers, triton_grpc_url)
        self.adapters = Adapters(current, text_to_image, quotas)  # quotas: the stack's per key (None: the defaults)
        self.characters = Characters(self.adapters, self.upscaling)  # their pictures' faces: the face engines
        circuits = Circuits(args, failed=against_model)  # this replica's breakers, one per model
        self.generations = Generations(
            current,
            text_to_image,
            vectorizer,
            residency,
            cache,
            traffic,
            references=self.adapters.references,  # a generation naming a stored reference is checked against them
            share_caches=args.share_caches,
            upscaling=self.upscaling,
            circuits=circuits,
            fallback_queue_wait_s=args.fallback_queue_wait_s,
            scores=scores,  # a generation's scores and candidates are checked against them at admission
            characters=self.characters,  # a generation naming one is drawn with it
            results=Results.of(args, store_url, args.url_secret_path, quotas),  # images kept, their URLs
            moderation=moderation.checking(
                args.service_engines.image_checker(triton_grpc_url),
                args.service_engines.text_checker(triton_grpc_url),
            ),
        )
        self.moderation = self.generations.moderation
        open_access(store_url, args.audit_folder)  # keys checked, admin actions audited
        sender = sender_of(args, store_url, args.webhook_secret_path)  # this replica's webhook deliveries
        self.jobs = BackgroundJobs(open_job_store(store_url), self.generations, traffic, args, sender, quotas)
        self.videos = Videos(self.jobs)
        self.models = ModelAdmin(current, text_to_image, residency, traffic, circuits)
        self.experiments = ExperimentsAndFeedback(traffic)
        self.vectorizing = Vectorizing(vectorizer, residency, traffic, vectorize_versions)
        self.admission = Admission(
            self.generations, self.upscaling, self.jobs, self.vectorizing, self.adapters, self.characters
        )
        self.health = Health(text_to_image, vectorizer, self.models, self.moderation.triton_models)
        self.rpcs = Servicer(self.admission, self.generations, self.experiments, self.vectorizing, self.videos)

    async def check_health(self) -> None:
        """Ray Serve's health check: the event loop answers; each served model's circuit state is exported again."""
        self.models.circuits.export(self.models.models.names())

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The HTTP app, its routes answered by this replica's serving classes."""
        api.state.gateway = self
        return api

    # The gRPC methods (easel.v1.Easel), each its servicer's: Ray Serve's gRPC proxy calls them by name.

    async def Generate(self, message, grpc_context):  # noqa: N802 - the RPC's name
        """``Generate``: its progress events, then its images (:meth:`Servicer.Generate`)."""
        async with aclosing(self.rpcs.Generate(message, grpc_context)) as events:  # a client gone closes it all
            async for event in events:
                yield event

    async def Feedback(self, message, grpc_context):  # noqa: N802
        """``Feedback`` (:meth:`Servicer.Feedback`)."""
        return await self.rpcs.Feedback(message, grpc_context)

    async def Vectorize(self, message, grpc_context):  # noqa: N802
        """``Vectorize`` (:meth:`Servicer.Vectorize`)."""
        return await self.rpcs.Vectorize(message, grpc_context)

    async def Analyze(self, message, grpc_context):  # noqa: N802
        """``Analyze`` (:meth:`Servicer.Analyze`)."""
        return await self.rpcs.Analyze(message, grpc_context)

    async def CreateVideo(self, message, grpc_context):  # noqa: N802
        """``CreateVideo`` (:meth:`Servicer.CreateVideo`)."""
        return await self.rpcs.CreateVideo(message, grpc_context)

    async def InterpolateVideo(self, message, grpc_context):  # noqa: N802
        """``InterpolateVideo`` (:meth:`Servicer.InterpolateVideo`)."""
        return await self.rpcs.InterpolateVideo(message, grpc_context)

    async def GetVideo(self, message, grpc_context):  # noqa: N802
        """``GetVideo`` (:meth:`Servicer.GetVideo`)."""
        return await self.rpcs.GetVideo(message, grpc_context)

    async def GetVideoContent(self, message, grpc_context):  # noqa: N802
        """``GetVideoContent`` (:meth:`Servicer.GetVideoContent`)."""
        return await self.rpcs.GetVideoContent(message, grpc_context)

    async def CancelVideo(self, message, grpc_context):  # noqa: N802
        """``CancelVideo`` (:meth:`Servicer.CancelVideo`)."""
        return await self.rpcs.CancelVideo(message, grpc_context)


def build_app(args: AppArgs) -> serve.Application:
    """Typed Serve application builder (``serve.gateway:build_app``); a Gateway replica does not import the loop's."""
    from serve.models.residency import ModelResidency
    from serve.models.text_to_image import TextToImage

    ip = {name: EngineFolder(path).adapters.ip_adapter is not None for name, path in args.models.items()}
    adapters = {n: StackAdapters(args.loras_dir.get(n), ip[n], args.store, n, args.lora_limits) for n in args.models}
    models = ServedModels.open(
        args.models,
        adapters,
        args.memory_budget_bytes,
        args.max_cost,
        args.model_weights_bytes,
        args.model_table_path,
        args.remote_declarations(),
        args.fallbacks,
        args.loop,
    )
    residency = ModelResidency.bind(
        models, args.pin, args.triton_http_url, args.parked_path, args.repository, args.vectorize_table_path
    )
    engines = args.service_engines
    upscalers = engines.finishing()  # the face models among them: scores.identity's
    return Gateway.bind(
        TextToImage.bind(models, args.triton_grpc_url, args.defaults, args.store, engines, upscalers.faces),
        Vectorizer.bind(args.triton_grpc_url, args.vectorize_table_path, Recording.of(args)),
        residency,
        models,
        args,
        upscalers,
        Moderation(args.moderation, Blocklist.read(args.prompt_blocklist)),
    )
