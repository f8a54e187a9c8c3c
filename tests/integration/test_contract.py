"""Schemathesis against the running stack: what the OpenAPI document says is what the API does.

Every check runs on every operation, positive-data acceptance included: a schema-valid request may be refused only
for a limit of :data:`serve.contract.UNSTATED_LIMITS` (the document lists them under the status they answer). The
stack's cost ceiling is tiny, so most schema-valid generations are refused for it (400 naming
``num_inference_steps``) and those that run take a second.
"""

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.config import GenerationConfig, ProjectConfig, ProjectsConfig, SchemathesisConfig

from serve.contract import unstated_limit
from serve.stack import scratch_stack

pytestmark = pytest.mark.integration

MAX_COST = 0.05  # e.g. 64x64 (0.004 MP) x 12 steps; anything larger is a 400


@pytest.fixture(scope="module")
def contract_stack(tmp_path_factory):
    """A stack with a tiny cost ceiling and no result cache."""
    with scratch_stack(folder=tmp_path_factory.mktemp("run"), max_cost=MAX_COST) as stack:
        yield stack


@pytest.fixture(scope="module")
def api_schema(contract_stack):
    return schemathesis.openapi.from_url(
        f"{contract_stack.info.api_url}/openapi.json",
        config=SchemathesisConfig(
            projects=ProjectsConfig(default=ProjectConfig(generation=GenerationConfig(allow_x00=False)))
        ),
    )


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_the_api_is_what_its_schema_says(case):
    # Sent with requests here: schemathesis' own sender counts urllib3's pools, and the urllib3 that grafana-client
    # brings (urllib3-future, through niquests) keeps them in another container.
    sent = case.as_transport_kwargs()
    response = requests.request(**sent, timeout=120)
    unstated = _refused_for_an_unstated_limit(case, response)
    case.validate_response(
        response, transport_kwargs=sent, excluded_checks=[positive_data_acceptance] if unstated else []
    )


def _refused_for_an_unstated_limit(case, response: requests.Response) -> bool:
    """Whether ``response`` refuses the request for a limit the document lists as one no schema states."""
    if response.status_code not in (400, 413):
        return False
    return unstated_limit(case.method, case.operation.path, response.status_code, response.json()["error"]) is not None
