"""The audit log: its JSON lines, its bound, its pages, and the one door that writes it (no server)."""

import asyncio
import json

from serve.access.audit import AUDIT, AUDIT_FILE, OLDER_FILE, AuditEntry, AuditLog, audited, outcome, refused
from serve.access.keys import ApiKey, KeyLimits
from serve.routes import ROUTES, Scope

ADMIN = ApiKey("key_admin1", "ops", frozenset({Scope.ADMIN}), KeyLimits(), 1.0)


def test_an_entry_is_one_json_line_naming_the_key_by_id_never_its_secret(tmp_path):
    log = AuditLog(tmp_path)
    log.write(AuditEntry.now(ADMIN, "POST /v1/models", "/v1/models", 409))
    lines = (tmp_path / AUDIT_FILE).read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert set(entry) == {
        "id",
        "created_at",
        "key_id",
        "key_name",
        "action",
        "path",
        "status",
        "outcome",
        "via",
        "detail",
    }
    assert (entry["key_id"], entry["key_name"], entry["action"]) == ("key_admin1", "ops", "POST /v1/models")
    assert (entry["status"], entry["outcome"], entry["via"]) == (409, "failed", "http")
    assert [outcome(s) for s in (200, 204, 401, 403, 404, 500)] == [
        "ok",
        "ok",
        "refused",
        "refused",
        "failed",
        "failed",
    ]


def test_the_log_keeps_at_most_its_bound_on_disk_the_newest_entries_and_survives_a_reopen(tmp_path):
    bound = 4000
    log = AuditLog(tmp_path, max_bytes=bound)
    for i in range(200):
        log.write(AuditEntry.now(ADMIN, "DELETE /v1/models/{model_id}", f"/v1/models/m{i}", 200))
    on_disk = sum((tmp_path / name).stat().st_size for name in (AUDIT_FILE, OLDER_FILE))
    assert bound // 4 < on_disk <= bound  # the older half is whole, the two never more than the bound
    kept = AuditLog(tmp_path, max_bytes=bound).entries()  # a restart reads the same files
    assert 0 < len(kept) < 200 and kept[-1]["path"] == "/v1/models/m199"
    assert [e["path"] for e in kept] == [f"/v1/models/m{i}" for i in range(200 - len(kept), 200)]


def test_pages_go_newest_first_after_the_previous_page_s_last_id(tmp_path):
    log = AuditLog(tmp_path)
    for i in range(5):
        log.write(AuditEntry.now(ADMIN, "PUT /v1/experiments/{name}", f"/v1/experiments/e{i}", 200))
    first = log.page(None, 2)
    assert [e["path"][-2:] for e in first["data"]] == ["e4", "e3"] and first["has_more"]
    second = log.page(first["data"][-1]["id"], 3)
    assert [e["path"][-2:] for e in second["data"]] == ["e2", "e1", "e0"] and not second["has_more"]
    assert log.page("audit_unknown", 2) == {"object": "list", "data": [], "has_more": False}


def test_admin_changes_are_audited_reads_and_generations_are_not():
    audited_routes = {f"{r.method.upper()} {r.path}" for r in ROUTES if r.audited}
    assert {"POST /v1/models", "PUT /v1/models/{model_id}/fallback", "DELETE /v1/loras/{name}"} <= audited_routes
    assert {"GET /v1/models", "GET /v1/audit", "POST /v1/images/generations"}.isdisjoint(audited_routes)


def _answered(scope: dict, key, status: int) -> list[dict]:
    sent = []

    async def send(message):
        sent.append(message)

    async def answer():
        recording = audited(send, scope, key)
        await recording({"type": "http.response.start", "status": status, "headers": []})
        await recording({"type": "http.response.body", "body": b"{}"})

    asyncio.run(answer())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]  # passed on as they were
    return AUDIT.log.entries()


def test_the_door_records_an_admin_route_s_answer_and_a_scope_refusal_and_passes_others_by(tmp_path):
    AUDIT.open(tmp_path)
    try:
        entries = _answered({"method": "DELETE", "path": "/v1/models/gone"}, ADMIN, 404)
        assert [(e["action"], e["path"], e["key_id"], e["outcome"]) for e in entries] == [
            ("DELETE /v1/models/{model_id}", "/v1/models/gone", "key_admin1", "failed")
        ]
        assert len(_answered({"method": "GET", "path": "/v1/models/gone"}, ADMIN, 200)) == 1  # a read: not audited
        assert len(_answered({"method": "POST", "path": "/v1/models"}, None, 200)) == 2  # an open API's: no key
        painter = ApiKey("key_painter", "painter", frozenset({Scope.GENERATE}), KeyLimits(), 1.0)
        refused(painter, "PUT", "/v1/models/m/fallback", "needs 'admin'", "http")
        last = AUDIT.log.entries()[-1]
        assert (last["action"], last["key_id"], last["status"], last["outcome"]) == (
            "PUT /v1/models/{model_id}/fallback",
            "key_painter",
            403,
            "refused",
        )
        assert AUDIT.log.entries()[-2]["key_id"] is None
    finally:
        AUDIT.open(None)
