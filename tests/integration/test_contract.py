"""Schemathesis against the running stack: what the OpenAPI document says is what the API does.

The stack's cost ceiling is tiny, so most schema-valid generations are refused (400 naming the cost) and those that
run take a second; ``positive_data_acceptance`` is off for that reason: the cost limit (n x steps x megapixels) is a
documented 400 that no JSON schema can express.
"""

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import (
    ChecksConfig,
    GenerationConfig,
    PositiveDataAcceptanceConfig,
    ProjectConfig,
    ProjectsConfig,
    SchemathesisConfig,
)

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
            projects=ProjectsConfig(
                default=ProjectConfig(
                    generation=GenerationConfig(allow_x00=False),
                    checks=ChecksConfig(positive_data_acceptance=PositiveDataAcceptanceConfig(enabled=False)),
                )
            )
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
    case.validate_response(response, transport_kwargs=sent)
