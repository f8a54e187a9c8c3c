"""Schemathesis hooks for ``easel contract check``, and the check the project's own contract test runs too.

Loaded by ``SCHEMATHESIS_HOOKS=loadtests.contract_hooks``. Every check of schemathesis runs, with one changed:
positive-data acceptance is not asked of a refusal for a limit the document lists as one no schema states
(:data:`serve.contract.limits.UNSTATED_LIMITS`); every other refusal of a schema-valid request fails it.
"""

from __future__ import annotations

import schemathesis
from schemathesis.checks import positive_data_acceptance
from schemathesis.transport import requests as transport

from serve.contract.limits import refuses_for_an_unstated_limit


@schemathesis.check
def positive_data_acceptance_as_documented(ctx, response, case) -> bool | None:
    """Positive-data acceptance, but for a refusal the document lists under the status it answers."""
    if refuses_for_an_unstated_limit(case.method, case.operation.path, response.status_code, _json(response)):
        return None
    return positive_data_acceptance(ctx, response, case)


def _json(response) -> dict:
    """The answer's JSON body ({} for one that is not JSON: never an unstated limit)."""
    try:
        return response.json()
    except ValueError:
        return {}


_count_opened_connections = transport._count_opened_connections


def _opened_connections(session) -> int:
    """Schemathesis' count of a session's open connections; 0 where its pool container has no ``keys()``.

    That is urllib3-future's (grafana-client's niquests brings it). Only a dropped request's one resend reads it.
    """
    try:
        return _count_opened_connections(session)
    except AttributeError:
        return 0


transport._count_opened_connections = _opened_connections
