"""The KubeRay manifests: valid against RayService's CRD (KubeRay v1.7.0), and their Serve config is the project's own.

Two: rayservice.yaml (NGC's Triton, ONNX Runtime engines) and rayservice-gpu.yaml (the torch runtime's engines on
each worker pod's GPU, built there and served by the tritonserver the image carries).
"""

import copy
import hashlib
import importlib.util
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve.cli.main import main as easel
from serve.gateway import AppArgs
from serve.paths import PROJECT_ROOT, SERVE_CONFIG
from serve.stack import MODEL_DEPLOYMENTS, load_serve_config
from serve.triton.node import NODE_RESOURCE, NODE_RESOURCE_PER_REPLICA, THIS_NODE

KUBERAY = PROJECT_ROOT / "deployments" / "kuberay"
SIDECAR = KUBERAY / "triton_sidecar.py"
MANIFESTS = ("rayservice.yaml", "rayservice-gpu.yaml")
GPU = "nvidia.com/gpu"
CRD = KUBERAY / "crd" / "ray.io_rayservices.v1.7.0.yaml"
CRD_SHA256 = "0a8fc325e6e22b9231c1f282b309555e2ecf94227ca20a03df3d1d9a403907ab"
"""ray-project/kuberay tag v1.7.0 (59d663a), ray-operator/config/crd/bases/ray.io_rayservices.yaml, unchanged."""


def strict(schema: dict) -> dict:
    """The CRD's schema as the API server applies it, with unknown fields refused instead of silently pruned."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.pop("x-kubernetes-int-or-string", False):
                node.pop("type", None)
                node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    assert hashlib.sha256(CRD.read_bytes()).hexdigest() == CRD_SHA256, "the committed CRD is not KubeRay v1.7.0's"
    crd = yaml.safe_load(CRD.read_text())
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(strict(v1["schema"]["openAPIV3Schema"]))


def _load(name: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((KUBERAY / name).read_text())}


@pytest.fixture(scope="module", params=MANIFESTS)
def manifest(request) -> dict[str, dict]:
    return _load(request.param)


@pytest.fixture(scope="module")
def gpu_pod() -> dict:
    """The GPU manifest's worker pod spec."""
    return _load("rayservice-gpu.yaml")["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"][
        "spec"
    ]


def test_the_rayservice_validates_against_the_crd(validator, manifest):
    errors = validator.iter_errors(manifest["RayService"])
    assert [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors] == []


def test_the_validator_refuses_what_the_api_server_would_drop(validator, manifest):
    typo = copy.deepcopy(manifest["RayService"])
    typo["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 4
    assert any("maxReplica" in e.message for e in validator.iter_errors(typo))


def test_the_serve_config_is_the_project_s_own_with_the_cluster_s_values(manifest):
    embedded = yaml.safe_load(manifest["RayService"]["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    project = yaml.safe_load(SERVE_CONFIG.read_text())
    assert embedded["grpc_options"]["grpc_servicer_functions"] == project["grpc_options"]["grpc_servicer_functions"]
    (app,), (ours,) = embedded["applications"], project["applications"]
    assert {k: v for k, v in app.items() if k not in ("args", "deployments")} == {
        k: v for k, v in ours.items() if k not in ("args", "deployments")
    }
    AppArgs.model_validate(app["args"])  # the builder's own argument model
    for deployment, own in zip(app["deployments"], ours["deployments"], strict=True):
        resources = deployment["ray_actor_options"].pop("resources", {})
        assert deployment == own  # the same knobs; only where replicas may run differs
        assert resources == ({NODE_RESOURCE: NODE_RESOURCE_PER_REPLICA} if own["name"] in MODEL_DEPLOYMENTS else {})


def test_on_a_ray_cluster_the_same_config_puts_model_replicas_beside_a_triton():
    config = load_serve_config(SERVE_CONFIG, "127.0.0.1", 8000, 9000, on_cluster=True, triton_grpc_url=THIS_NODE)
    (app,) = config.applications
    for deployment in app.deployments:
        resources = deployment.ray_actor_options.resources or {}
        assert resources == ({NODE_RESOURCE: NODE_RESOURCE_PER_REPLICA} if deployment.name in MODEL_DEPLOYMENTS else {})
    assert AppArgs.model_validate(app.args).triton_grpc_url == THIS_NODE
    local = load_serve_config(SERVE_CONFIG, "127.0.0.1", 8000, 9000)
    assert all(not d.ray_actor_options.resources for d in local.applications[0].deployments)


def test_replicas_reach_their_pod_s_triton_and_the_store_is_the_redis_service(manifest):
    app = yaml.safe_load(manifest["RayService"]["spec"]["serveConfigV2"])["applications"][0]
    workers = manifest["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert "triton" in workers["rayStartParams"]["resources"]
    triton = next(c for c in workers["template"]["spec"]["containers"] if c["name"] == "triton")
    assert app["args"]["triton_grpc_url"] == f"127.0.0.1:{_flag(triton['args'], '--grpc-port')}"
    assert "nvidia.com/gpu" in triton["resources"]["limits"]
    redis = manifest["Service"]["metadata"]["name"], manifest["Service"]["spec"]["ports"][0]["port"]
    assert app["args"]["store_url"].startswith(f"redis://{redis[0]}:{redis[1]}/")


def _flag(args: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith(f"{name}="))


def _container(pod: dict, name: str) -> dict:
    return next(c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == name)


def _build_args(container: dict) -> list[str]:
    """The ``easel build`` arguments of an init container's shell line."""
    (line,) = container["args"]
    return shlex.split(re.search(r"easel build ([^|)]*)", line).group(1))


def test_the_gpu_manifest_builds_the_torch_runtime_holding_the_pod_s_gpu(gpu_pod):
    build = _container(gpu_pod, "build-engines")
    args = _build_args(build)
    parsed = easel.commands["build"].make_context("build", list(args)).params  # as `easel build` reads them
    assert (parsed["runtime"], parsed["precision"], parsed["backend"]) == ("torch", "fp16", "python")
    assert build["resources"]["limits"][GPU] == build["resources"]["requests"][GPU] == "1"  # PyTorch sees it: KIND_GPU
    head = _load("rayservice-gpu.yaml")["RayService"]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert _build_args(_container(head, "build-engines")) == args  # the same folder: the head reads its configs


def test_the_gpu_manifest_s_triton_is_the_image_s_own_on_the_pod_s_gpu(gpu_pod):
    triton, worker = _container(gpu_pod, "triton"), _container(gpu_pod, "ray-worker")
    assert triton["image"] == worker["image"] == _container(gpu_pod, "build-engines")["image"]
    python, script = triton["command"]
    assert python == "python" and Path(script) == Path("/home/ray/easel") / SIDECAR.relative_to(PROJECT_ROOT)
    assert "COPY --chown=ray:users . /home/ray/easel" in (KUBERAY / "Dockerfile.gpu").read_text()
    assert triton["resources"]["limits"][GPU] == triton["resources"]["requests"][GPU] == "1"
    assert GPU not in worker["resources"]["limits"]  # the replicas need none
    assert {"name": "EASEL_HOME", "value": "/models"} in triton["env"]  # the stub's backend folder, on the volume
    shm = next(v for v in gpu_pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory" and {"name": "dshm", "mountPath": "/dev/shm"} in triton["volumeMounts"]


def test_the_sidecar_runs_the_bundled_tritonserver_with_this_python_s_stub(gpu_pod, tmp_path, monkeypatch):
    monkeypatch.setenv("EASEL_HOME", str(tmp_path))
    spec = importlib.util.spec_from_file_location("triton_sidecar", SIDECAR)
    sidecar = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sidecar)
    args = _container(gpu_pod, "triton")["args"]
    binary, backends, *rest = sidecar.command(args)
    assert Path(binary).name == "tritonserver" and Path(binary).is_file() and rest == args
    assert (Path(backends.removeprefix("--backend-directory=")) / "python" / "triton_python_backend_stub").is_file()


def test_the_gpu_image_has_ray_s_version_and_the_project_s_torch_built_for_cuda():
    dockerfile = (KUBERAY / "Dockerfile.gpu").read_text()
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_version = _load("rayservice-gpu.yaml")["RayService"]["spec"]["rayClusterConfig"]["rayVersion"]
    assert f"FROM rayproject/ray:{ray_version}-py311-gpu" in dockerfile
    assert f"ray[serve]=={ray_version}" in project
    (torch_pin,) = re.findall(r"torch==[\d.]+", dockerfile)
    assert torch_pin in project  # the index's wheel, where one is named, is the project's version
    assert "assert torch.version.cuda" in dockerfile
