"""A key's quotas on what it stores (serve/serving/adapters.py) over a real SQLite adapter store: no server."""

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from serve.access.keys import ApiKey, KeyLimits
from serve.adapters import open_adapter_store
from serve.adapters.store import StoredReference
from serve.errors import QuotaExceeded
from serve.serving.adapters import Adapters
from serve.stores import Quotas


def _adapters(tmp_path, *owners: str, quotas=None) -> Adapters:
    store = open_adapter_store(f"sqlite:///{tmp_path / 'easel.db'}")
    for i, owner in enumerate(owners):
        store.add_reference(StoredReference(f"ref_{i}", owner, "m", np.zeros((1, 4), np.float32)))
    adapters = Adapters.__new__(Adapters)
    adapters.references, adapters.quotas = SimpleNamespace(store=lambda: store), quotas
    return adapters


def _key(**limits) -> ApiKey:
    return ApiKey("k1", "k", frozenset(), KeyLimits(**limits), 0.0)


def test_a_key_under_its_quotas_may_store_one_more(tmp_path):
    adapters = _adapters(tmp_path, "k1", "other", "other")
    asyncio.run(adapters.check_quota(_key(stored_items=2, stored_bytes=32, references=2), 16, "references"))
    assert adapters.stored_by("k1") == ({"references": 1, "loras": 0, "characters": 0}, 16)


@pytest.mark.parametrize(
    ("limits", "adding", "kind", "param"),
    [
        ({"stored_items": 1}, 0, "loras", "stored_items"),
        ({"stored_bytes": 31}, 16, "loras", "stored_bytes"),
        ({"references": 1}, 0, "references", "references"),
    ],
)
def test_a_key_at_its_quota_is_a_429_naming_it_whatever_other_keys_keep(tmp_path, limits, adding, kind, param):
    adapters = _adapters(tmp_path, "k1", "other", "other")
    with pytest.raises(QuotaExceeded) as refused:
        asyncio.run(adapters.check_quota(_key(**limits), adding, kind))
    error = refused.value
    assert error.status == 429 and error.field == param and error.retry_after_s is None
    assert error.message.startswith(f"quota: {param} ") and error.body()["error"]["code"] == "insufficient_quota"


def test_the_stack_s_quota_holds_a_key_without_its_own_and_a_key_s_own_overrides_it(tmp_path):
    adapters = _adapters(tmp_path, "k1", "k1", quotas=Quotas(references=2, loras=1, stored_items=0, stored_bytes=0))
    with pytest.raises(QuotaExceeded, match="quota: references 2 per key"):
        asyncio.run(adapters.check_quota(_key(), 0, "references"))
    asyncio.run(adapters.check_quota(_key(), 0, "loras"))  # its own kind's count: none yet
    asyncio.run(adapters.check_quota(_key(references=3), 0, "references"))  # its own quota, over the stack's
    asyncio.run(adapters.check_quota(_key(references=0), 0, "references"))  # 0: no bound


def test_no_key_checks_nothing(tmp_path):
    adapters = _adapters(tmp_path, "k1", quotas=Quotas(references=1, stored_bytes=1))
    asyncio.run(adapters.check_quota(None, 10**9, "references"))
