"""A key's stored quota (serve/serving/adapters.py) over a real SQLite adapter store: no server."""

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from serve.access.keys import ApiKey, KeyLimits
from serve.adapters import open_adapter_store
from serve.adapters.store import StoredReference
from serve.errors import QuotaExceeded
from serve.serving.adapters import Adapters


def _adapters(tmp_path, *owners: str) -> Adapters:
    store = open_adapter_store(f"sqlite:///{tmp_path / 'easel.db'}")
    for i, owner in enumerate(owners):
        store.add_reference(StoredReference(f"ref_{i}", owner, "m", np.zeros((1, 4), np.float32)))
    adapters = Adapters.__new__(Adapters)
    adapters.references = SimpleNamespace(store=lambda: store)
    return adapters


def _key(**limits) -> ApiKey:
    return ApiKey("k1", "k", frozenset(), KeyLimits(**limits), 0.0)


def test_a_key_under_its_quotas_may_store_one_more(tmp_path):
    adapters = _adapters(tmp_path, "k1", "other", "other")
    asyncio.run(adapters.check_quota(_key(stored_items=2, stored_bytes=32), 16))  # 1 item of 16 bytes + 16
    assert adapters.stored_by("k1") == (1, 16)


@pytest.mark.parametrize(
    ("limits", "adding", "param"),
    [({"stored_items": 1}, 0, "stored_items"), ({"stored_bytes": 31}, 16, "stored_bytes")],
)
def test_a_key_at_its_quota_is_refused_naming_the_limit_whatever_other_keys_keep(tmp_path, limits, adding, param):
    adapters = _adapters(tmp_path, "k1")
    with pytest.raises(QuotaExceeded) as refused:
        asyncio.run(adapters.check_quota(_key(**limits), adding))
    assert refused.value.status == 403 and refused.value.field == param


def test_no_key_or_no_quota_checks_nothing(tmp_path):
    adapters = _adapters(tmp_path, "k1")
    asyncio.run(adapters.check_quota(None, 10**9))
    asyncio.run(adapters.check_quota(_key(), 10**9))
