"""The adapter store's contract, run against SQLite (unit tests) and a real Redis server (integration tests).

A test module imports these and defines ``store_factory`` (opens another connection to one fresh, empty store) and
``store`` (one opened from it).
"""

import dataclasses
import json
import threading

import numpy as np
import pytest

from serve.adapters.registry import READY, UPLOAD, LoraEntry
from serve.adapters.store import Character, StoredReference
from serve.errors import InvalidInput


def _entry(name: str, key: str = "0" * 24, model: str = "easel-default") -> LoraEntry:
    return LoraEntry(name, READY, None, 4, 1024, {"unet": 3}, f"/run/loras/{key}.safetensors", model, UPLOAD, "ab", 1.0)


def test_loras_are_added_listed_replaced_and_removed(store):
    assert store.loras() == [] and store.lora("style") is None
    store.add_lora(_entry("style"))
    store.add_lora(_entry("line"))
    assert [e.name for e in store.loras()] == ["line", "style"] and store.lora("style") == _entry("style")
    new = _entry("style", "1" * 24)
    assert store.replace_lora(new) == _entry("style") and store.lora("style").key == "1" * 24
    assert store.replace_lora(_entry("absent")) is None and store.lora("absent") is None
    assert store.remove_lora("style") == new and store.remove_lora("style") is None
    assert [e.name for e in store.loras()] == ["line"]


def test_a_name_is_added_once(store):
    store.add_lora(_entry("style"))
    with pytest.raises(InvalidInput) as refused:
        store.add_lora(_entry("style", "1" * 24))
    assert refused.value.field == "name" and store.lora("style") == _entry("style")


def test_another_connection_sees_the_same_adapters_and_one_of_two_racing_adds_wins(store, store_factory):
    other = store_factory()
    try:
        store.add_lora(_entry("style"))
        assert other.lora("style") == _entry("style")
        won = []

        def add(opened, key):
            try:
                opened.add_lora(_entry("race", key))
                won.append(key)
            except InvalidInput:
                pass

        threads = [threading.Thread(target=add, args=(s, k)) for s, k in ((store, "2" * 24), (other, "3" * 24))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1 and store.lora("race").key == won[0]
    finally:
        other.close()


def _reference(reference_id: str, owner, created_at: float) -> StoredReference:
    embeds = np.arange(12, dtype=np.float32).reshape(1, 1, 12) + created_at
    return StoredReference(reference_id, owner, "easel-default", embeds, f"name-{reference_id}", created_at)


def _same(a: StoredReference, b: StoredReference) -> bool:
    return a.public() == b.public() and a.owner == b.owner and np.array_equal(a.embeds, b.embeds)


def test_references_are_kept_with_their_embeddings_listed_per_owner_and_removed(store, store_factory):
    kept = [_reference("ref_a", "key1", 1.0), _reference("ref_b", "key2", 2.0), _reference("ref_c", "key1", 3.0)]
    for reference in kept:
        store.add_reference(reference)
    other = store_factory()
    try:
        assert _same(other.reference("ref_b"), kept[1]) and other.reference("ref_x") is None
        assert [r.id for r in other.references("key1")] == ["ref_c", "ref_a"]
        assert [r.id for r in other.references(None)] == ["ref_c", "ref_b", "ref_a"]
        assert other.reference("ref_a").embeds.dtype == np.float32
    finally:
        other.close()
    assert store.remove_reference("ref_a") and not store.remove_reference("ref_a")
    assert [r.id for r in store.references("key1")] == ["ref_c"] and store.reference("ref_a") is None


def test_names_are_per_owner_and_rows_kept_before_owners_are_the_shared_set_s(store):
    shared, ann, ben = _entry("style"), _entry("style", "1" * 24), _entry("style", "2" * 24)
    ann, ben = (dataclasses.replace(entry, owner=owner) for entry, owner in ((ann, "ann"), (ben, "ben")))
    for entry in (shared, ann, ben):
        store.add_lora(entry)
    with pytest.raises(InvalidInput):
        store.add_lora(dataclasses.replace(ann, prepared="/run/loras/" + "3" * 24 + ".safetensors"))
    assert store.lora("style") == shared and store.lora("style", "ann") == ann and store.lora("style", "eve") is None
    assert sorted(e.owner or "" for e in store.loras()) == ["", "ann", "ben"]
    moved = dataclasses.replace(ann, prepared="/run/loras/" + "4" * 24 + ".safetensors")
    assert store.replace_lora(moved) == ann and store.lora("style", "ben") == ben
    assert store.remove_lora("style", "ann") == moved and store.lora("style", "ann") is None
    assert store.lora("style") == shared and store.remove_lora("style", "eve") is None
    old = json.loads(_entry("before").to_json())
    del old["owner"]  # a row kept before LoRAs had owners: the shared set's
    assert LoraEntry.from_json(json.dumps(old)).owner is None


def _character(name: str, owner, note: str = "") -> Character:
    face = tuple(float(v) for v in np.linspace(-1, 1, 8) / 2)
    lora = {"name": "style", "scale": 0.5}
    first = {"landmarks": [[1.5, 2.25]] * 5, "width": 64, "height": 48, "aligned_face": "iVBORw0KGgo="}
    return Character(name, owner, "easel-default", ("ref_a", "ref_b"), lora, "zed person", note, face, 2, 4.0, first)


def test_characters_are_per_owner_kept_replaced_listed_and_removed(store, store_factory):
    ann, ben = _character("zed", "ann"), _character("zed", "ben")
    assert store.put_character(ann, replace=False) is None and store.put_character(ben, replace=False) is None
    with pytest.raises(InvalidInput, match="name: a character is named 'zed' already"):
        store.put_character(_character("zed", "ann", "again"), replace=False)
    assert store.put_character(_character("nobody", "ann"), replace=True) is None
    other = store_factory()
    try:
        assert other.character("zed", "ann") == ann and other.character("zed", "eve") is None
        assert other.character("nobody", "ann") is None  # a replacement of none kept nothing
    finally:
        other.close()
    store.put_character(_character("amy", "ann"), replace=False)
    assert [(c.name, c.owner) for c in store.characters("ann")] == [("amy", "ann"), ("zed", "ann")]
    assert sorted((c.name, c.owner) for c in store.characters(None)) == [("amy", "ann"), ("zed", "ann"), ("zed", "ben")]
    newer = _character("zed", "ann", "newer")
    assert store.put_character(newer, replace=True) == ann and store.character("zed", "ann").note == "newer"
    assert store.remove_character("zed", "ann") == newer and store.remove_character("zed", "ann") is None
    assert store.character("zed", "ben") == ben and store.character("zed", "ann") is None
    old = json.loads(ben.to_json())
    del old["first_face"]  # kept before characters kept their first picture's face
    assert Character.from_json(json.dumps(old)).first_face is None


def test_a_character_s_reference_says_which_holds_it(store):
    held = dataclasses.replace(_reference("ref_h", "ann", 5.0), held_by="zed")
    store.add_reference(held)
    assert store.reference("ref_h").held_by == "zed" and store.reference("ref_h").public()["character"] == "zed"
