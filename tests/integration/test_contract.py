"""Schemathesis against the running stack: what the OpenAPI document says is what the API does.

Every check runs on every operation, positive-data acceptance included: a schema-valid request may be refused only for
a limit of :data:`serve.contract.limits.UNSTATED_LIMITS` (the document lists them under the status they answer). Then
the stateful phase: sequences of calls linked by what one answer gives the next (a job's id, an experiment's name),
every check on each step. Both run with an ``admin`` key, which may call every operation, and with a key that may only
``generate``: on the operations it may not call (403s, which the document declares; on the others it is answered as
the admin key is). One stack for all. The stack's cost ceiling is tiny, so most schema-valid generations are refused
for it (400 naming ``num_inference_steps``) and those that run take a second.
"""

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.config import (
    GenerationConfig,
    OperationConfig,
    OperationsConfig,
    ProjectConfig,
    ProjectsConfig,
    SchemathesisConfig,
)
from schemathesis.core.transport import Response
from schemathesis.filters import FilterSet

from serve.access import open_key_store
from serve.access.keys import KeyLimits
from serve.contract.limits import refuses_for_an_unstated_limit
from serve.routes import Scope, required_scope
from serve.stack import scratch_stack

pytestmark = pytest.mark.integration

MAX_COST = 0.05  # e.g. 64x64 (0.004 MP) x 12 steps; anything larger is a 400
KEYS = {"admin": {Scope.ADMIN}, "generate": {Scope.GENERATE}}
SETTINGS = settings(
    max_examples=10,  # per operation and key (CI's time: 15 took 100 s more)
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
STATEFUL = settings(SETTINGS, max_examples=10, stateful_step_count=5)


@pytest.fixture(scope="module")
def contract_stack(tmp_path_factory):
    """A stack with a tiny cost ceiling and no result cache."""
    with scratch_stack(folder=tmp_path_factory.mktemp("run"), max_cost=MAX_COST) as stack:
        yield stack


@pytest.fixture(scope="module")
def keys(contract_stack) -> dict[str, str]:
    """A key of each kind in :data:`KEYS`, by kind (with keys in the store, every route but the probes needs one)."""
    store = open_key_store(contract_stack.options.store)
    return {kind: store.create(f"contract-{kind}", scopes, KeyLimits())[1] for kind, scopes in KEYS.items()}


@pytest.fixture(scope="module", params=sorted(KEYS))
def kind(request) -> str:
    """One kind of key of :data:`KEYS`."""
    return request.param


@pytest.fixture(scope="module")
def auth(kind, keys) -> dict[str, str]:
    """The ``Authorization`` header of the kind's key."""
    return {"Authorization": f"Bearer {keys[kind]}"}


@pytest.fixture(scope="module")
def api_schema(contract_stack, kind, auth):
    """The stack's document; for a key short of ``admin``, tested only on the operations its scopes do not reach (the
    others answer it as they answer the admin key). Turned off in the config: the pytest loader drops a schema's
    filters, and a document cut short would advertise fewer methods than a 405's ``Allow``."""
    operations = OperationsConfig()
    if Scope.ADMIN not in KEYS[kind]:
        reached, answered_alike = {None, *KEYS[kind]}, FilterSet()  # None: an open route, answered alike to every key
        answered_alike.include(lambda ctx: required_scope(ctx.operation.path, ctx.operation.method) in reached)
        operations = OperationsConfig(operations=[OperationConfig(filter_set=answered_alike, enabled=False)])
    generation = GenerationConfig(allow_x00=False)
    project = ProjectConfig(headers=auth, generation=generation, operations=operations)
    return schemathesis.openapi.from_url(
        f"{contract_stack.info.api_url}/openapi.json",
        headers=auth,
        config=SchemathesisConfig(projects=ProjectsConfig(default=project)),
    )


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@SETTINGS
def test_the_api_is_what_its_schema_says(case, auth):
    sent, response = _sent(case, auth)
    case.validate_response(response, transport_kwargs=sent, excluded_checks=_excluded(case, response))


def test_sequences_of_calls_are_what_the_schema_says(api_schema, auth):
    """The stateful phase: links inferred from the document (ids in one answer, used by the next call)."""

    class Workflow(api_schema.as_state_machine()):
        def call(self, case, **kwargs):
            sent, response = _sent(case, auth)
            return Response.from_requests(response, verify=True)

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(
                response,
                additional_checks=additional_checks,
                excluded_checks=_excluded(case, response),
                recorder=getattr(self, "recorder", None),  # what the stateful checks look back at
            )

    Workflow.run(settings=STATEFUL)


def _sent(case, auth: dict[str, str]) -> tuple[dict, requests.Response]:
    """``case`` sent with the key. Sent with requests here: schemathesis' own sender counts urllib3's pools, and the
    urllib3 that grafana-client brings (urllib3-future, through niquests) keeps them in another container."""
    sent = case.as_transport_kwargs(headers=auth)
    return sent, requests.request(**sent, timeout=120)


def _excluded(case, response) -> list:
    """Positive-data acceptance is not asked of a refusal for a limit the document lists as one no schema states."""
    body = response.json() if response.status_code in (400, 413) else {}
    refused = refuses_for_an_unstated_limit(case.method, case.operation.path, response.status_code, body)
    return [positive_data_acceptance] if refused else []
