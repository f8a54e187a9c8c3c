"""What a start tells its parts: the Serve config and the app's settings, the Triton models served, the largest side."""

from __future__ import annotations

from pathlib import Path

import yaml

from serve.errors import InvalidInput
from serve.models.admission import Admission, Limits, Work
from serve.models.served import ServedModels
from serve.protocol.schema import MAX_IMAGES
from serve.protocol.sizes import MAX_SIDE, MIN_SIDE
from serve.results.tokens import SECRET_FILE
from serve.service_engines import ServiceEngines
from serve.settings import AppSettings, StackOptions
from serve.text_to_image.engine_folder import EngineFolder
from serve.triton.node import NODE_RESOURCE, NODE_RESOURCE_PER_REPLICA
from serve.vectorize.versions import VectorizeTable, version_specs
from serve.webhooks.signing import SECRET_FILE as WEBHOOK_SECRET_FILE

MODEL_DEPLOYMENTS = ("TextToImage", "Vectorizer")
"""The deployments that call Triton: on a cluster they run only on nodes with a Triton of their own."""


def load_serve_config(
    path: Path, host: str, port: int, grpc_port: int, on_cluster: bool = False, https: dict | None = None, **args
):
    """The Serve config at ``path`` with the HTTP and gRPC ports and the app's ``args`` (engine folder...) set.

    The gRPC API listens on ``host`` too (:mod:`serve.processes.loopback`). ``https``: the HTTP proxy's certificate
    options (:meth:`serve.processes.tls.TlsSettings.http_options`). ``on_cluster``: the model deployments ask
    for a sliver of the ``triton`` resource, so they land on nodes that have a Triton.
    """
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(path.read_text())
    raw.setdefault("http_options", {}).update(host=host, port=port, **(https or {}))
    raw.setdefault("grpc_options", {}).update(port=grpc_port)
    for app in raw["applications"]:
        app.setdefault("args", {}).update(args)
        for deployment in app.get("deployments", []) if on_cluster else []:
            if deployment["name"] in MODEL_DEPLOYMENTS:
                options = deployment.setdefault("ray_actor_options", {})
                options.setdefault("resources", {})[NODE_RESOURCE] = NODE_RESOURCE_PER_REPLICA
    return ServeDeploySchema.model_validate(raw)


def app_settings(opts: StackOptions, memory_budget_bytes: int, port: int) -> dict:
    """What the Serve app is told of ``easel up``'s settings (the API on ``port``).

    Every :class:`AppSettings` field as given (a new one reaches the app with no change here), the memory budget,
    the store, the image store (the run folder's ``images/``), the API's public address, the secrets' files and the
    audit log's folder resolved. The room for weights stays as given: None, every model's, grows with a model added.
    """
    given = opts.model_dump(mode="json", include=set(AppSettings.model_fields))
    return given | {
        "memory_budget_bytes": memory_budget_bytes,
        "store_url": opts.store,
        "image_store": opts.image_store or str(opts.run_dir / "images"),
        "public_url": opts.public_url or f"{opts.api_scheme}://{opts.host}:{port}",
        "url_secret_path": str(opts.run_dir / SECRET_FILE),
        "webhook_secret_path": str(opts.run_dir / WEBHOOK_SECRET_FILE),
        "audit_folder": str(opts.run_dir),
    }


def triton_models(
    models: ServedModels,
    vectorize: bool,
    vectorize_table: Path | None = None,
    service_engines: ServiceEngines | None = None,
) -> list:
    """The specs of every Triton model the stack serves (the ones readiness, supervision and canaries cover).

    With ``vectorize``, every vectorize version its table (``vectorize_table``) names, else version 1's; the
    ``service_engines`` built (finishing, moderation, scoring).
    """
    specs = [spec for model in models.values() for spec in model.triton_specs()]
    specs += (service_engines or ServiceEngines()).triton_specs()
    if not vectorize:
        return specs
    versions = VectorizeTable.read(vectorize_table).versions if vectorize_table else {1: ""}
    return specs + [spec for version in sorted(versions) for spec in version_specs(version)]


def largest_admitted_side(engines: EngineFolder, total_bytes: int, n: int = MAX_IMAGES, steps: int = 2) -> int:
    """The largest square side (a multiple of 64, up to the API's limit) that admission lets ``n`` images have.

    Decided as the ``TextToImage`` replicas decide (:class:`Admission`), for the budget ``total_bytes``.
    """
    admission = Admission.for_engines(engines, Limits(total_bytes))
    admitted = MIN_SIDE
    for side in range(64, MAX_SIDE + 1, 64):
        try:
            admission.check(Work(n, steps, side, side))
        except InvalidInput:
            break
        admitted = side
    return admitted
