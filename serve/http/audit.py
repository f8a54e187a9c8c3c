"""The HTTP API's audit route: ``GET /v1/audit``, the audit log of admin actions and scope refusals (admin).

It reads this machine's log (:mod:`serve.access.audit`) in a worker thread; its
scope is :mod:`serve.routes`'.
"""

import asyncio
from typing import Annotated

from fastapi import Query

from serve.access.audit import AUDIT, MAX_AUDIT_PAGE
from serve.http.operations import answers


@answers("GET", "/v1/audit")
async def audit_log(after: str | None = None, limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_PAGE)] = 50) -> dict:
    """Admin actions and refusals for a missing scope, newest first (admin).

    Admin actions: changes to models, remotes, chains, experiments, vectorize versions, LoRAs and their shares. Each
    entry: who (the key's id and name, never the key), what, when, the status and the outcome. ``after``: the
    previous page's last id. The log is the run folder's ``audit.jsonl`` on the machine that answers.
    """
    if AUDIT.log is None:
        return {"object": "list", "data": [], "has_more": False}
    return await asyncio.to_thread(AUDIT.log.page, after, limit)
