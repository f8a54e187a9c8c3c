"""Stored IP-Adapter references (:class:`References`) without servers: owned per key, one 404 for unknown and others'.

The embeddings here are a plain function of the image (the image encoder runs in the integration tests, which
compare a stored reference's image with the inline one and count the encoder's executions in Triton).
"""

import asyncio
import base64
import functools
import hashlib

import numpy as np
import pytest

from serve.access import may_see
from serve.access.keys import ApiKey, KeyLimits
from serve.adapters import requests as requests_module
from serve.adapters.requests import StackAdapters
from serve.errors import InvalidInput, NotFound
from serve.models.served import ServedModels
from serve.protocol.reference_request import NewReference
from serve.protocol.schema import GenerationRequest
from serve.routes import Scope
from serve.serving.references import References


def _key(key_id: str, *scopes: Scope) -> ApiKey:
    return ApiKey(key_id, key_id, frozenset(scopes or (Scope.GENERATE,)), KeyLimits(), 0.0)


@pytest.fixture
def references(engine_dir, tmp_path):
    requests_module._STORES.clear()
    adapters = StackAdapters(None, True, f"sqlite:///{tmp_path / 'easel.db'}")
    models = ServedModels.open({"easel-default": str(engine_dir)}, {"easel-default": adapters})
    encoded = []

    async def encode(model, image: str) -> np.ndarray:
        encoded.append(model.name)
        seed = int.from_bytes(hashlib.sha256(image.encode()).digest()[:4], "little")
        return np.random.default_rng(seed).random((1, 1, 8), dtype=np.float32)

    yield References(lambda: models, encode), models, encoded
    for store in requests_module._STORES.values():
        store.close()
    requests_module._STORES.clear()


def test_a_reference_is_its_key_s_alone(references):
    refs, models, encoded = references
    alice, bob, admin = _key("alice"), _key("bob"), _key("root", Scope.ADMIN)
    image = base64.b64encode(b"\x89PNG pretend").decode()
    stored = asyncio.run(refs.add(NewReference(image=image, name="face"), alice.id))
    assert stored["id"].startswith("ref_") and stored["name"] == "face" and encoded == ["easel-default"]
    model = models.default
    request = GenerationRequest(prompt="x", ip_adapter_reference=stored["id"])
    for key in (alice, admin, None):  # its key, an admin key, an open API
        asyncio.run(refs.check(request, model, functools.partial(may_see, key)))
        assert asyncio.run(refs.get(stored["id"], functools.partial(may_see, key)))["id"] == stored["id"]
    with pytest.raises(InvalidInput) as other:
        asyncio.run(refs.check(request, model, functools.partial(may_see, bob)))
    unknown = GenerationRequest(prompt="x", ip_adapter_reference="ref_" + "0" * 24)
    with pytest.raises(InvalidInput) as missing:
        asyncio.run(refs.check(unknown, model, functools.partial(may_see, alice)))
    assert other.value.field == missing.value.field == "ip_adapter_reference"
    assert other.value.message.replace(stored["id"], "ID") == missing.value.message.replace("ref_" + "0" * 24, "ID")
    with pytest.raises(NotFound):
        asyncio.run(refs.get(stored["id"], functools.partial(may_see, bob)))
    with pytest.raises(NotFound):
        asyncio.run(refs.remove(stored["id"], functools.partial(may_see, bob)))
    assert asyncio.run(refs.listing(bob.id))["data"] == []
    assert [r["id"] for r in asyncio.run(refs.listing(alice.id))["data"]] == [stored["id"]]
    embeds = model.adapters.stored_embeds(stored["id"], "ip_adapters.0.references.1")
    assert embeds.shape == (1, 1, 8) and embeds.dtype == np.float32
    listed = GenerationRequest(prompt="x", ip_adapters=[{"references": ["ref_" + "0" * 24, stored["id"]]}])
    with pytest.raises(InvalidInput) as first:  # each of the list's references is checked, naming its place
        asyncio.run(refs.check(listed, model, functools.partial(may_see, alice)))
    assert first.value.field == "ip_adapters.0.references.0"
    assert asyncio.run(refs.remove(stored["id"], functools.partial(may_see, alice)))["deleted"] is True
    with pytest.raises(InvalidInput, match="no stored reference") as gone:
        model.adapters.stored_embeds(stored["id"], "ip_adapters.0.references.1")
    assert gone.value.field == "ip_adapters.0.references.1"


def test_a_reference_needs_an_ip_adapter_and_a_served_model(references, engine_dir, tmp_path):
    refs, models, _ = references
    image = base64.b64encode(b"pretend").decode()
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(refs.add(NewReference(image=image, model="nope"), None))
    assert refused.value.field == "model"
    plain = ServedModels.open({"easel-default": str(engine_dir)}, {"easel-default": StackAdapters(None, False, None)})
    with pytest.raises(InvalidInput, match="has no IP-Adapter") as refused:
        asyncio.run(References(lambda: plain, refs.encode).add(NewReference(image=image), None))
    assert refused.value.field == "model"
