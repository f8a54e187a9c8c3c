"""The KubeRay manifest: valid against RayService's CRD (KubeRay v1.7.0), and its Serve config is the project's own."""

import copy
import hashlib

import jsonschema
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve.gateway import AppArgs
from serve.paths import PROJECT_ROOT, SERVE_CONFIG
from serve.stack import MODEL_DEPLOYMENTS, load_serve_config
from serve.triton.node import NODE_RESOURCE, NODE_RESOURCE_PER_REPLICA, THIS_NODE

KUBERAY = PROJECT_ROOT / "deployments" / "kuberay"
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


@pytest.fixture(scope="module")
def manifest() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((KUBERAY / "rayservice.yaml").read_text())}


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
