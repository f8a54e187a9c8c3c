"""The image store's contract, run on SQLite rows and a folder (unit tests), Redis rows and an S3 bucket (integration).

A test module imports these and defines ``records`` (fresh, empty image rows) and ``blobs`` (an empty blob store).
"""

import pytest

from serve.errors import NotFound
from serve.results import ImageQuota, ImageStore, StoredImage

NOW = 1_800_000_000.0


def _image(image_id: str, owner: str = "k1", size: int = 100, created_at: float = NOW) -> tuple[StoredImage, bytes]:
    data = image_id.encode().ljust(size, b".")
    return StoredImage(image_id, owner, "image/png", len(data), created_at, {"prompt": image_id}), data


def _clocked(records, now: float = NOW) -> list[float]:
    clock = [now]
    records.clock = lambda: clock[0]
    return clock


def test_an_image_is_kept_read_back_and_deleted_by_its_owner(records, blobs):
    store = ImageStore(records, blobs)
    image, data = _image("img_a")
    kept = store.keep(image, data)
    assert kept.seq > 0 and store.find("img_a", "k1") == kept and store.read(kept) == data
    assert store.find("img_a", None).record == {"prompt": "img_a"}  # no owner filter: an admin's or an open API's
    assert records.total() == len(data)
    with pytest.raises(NotFound) as other:
        store.find("img_a", "k2")  # another key's id: the same 404 as an unknown one
    with pytest.raises(NotFound) as unknown:
        store.find("img_missing", "k1")
    assert other.value.field == unknown.value.field == "image_id"
    with pytest.raises(NotFound):
        store.delete("img_a", "k2")
    assert store.delete("img_a", "k1").id == "img_a"
    assert records.get("img_a") is None and blobs.get("img_a") is None and records.total() == 0
    with pytest.raises(NotFound):
        store.delete("img_a", "k1")


def test_a_history_is_each_owners_newest_first_in_pages(records, blobs):
    store = ImageStore(records, blobs)
    for index in range(5):
        store.keep(*_image(f"img_{index}", owner="k1" if index % 2 == 0 else "k2"))
    assert [i.id for i in store.page("k1", None, 10)] == ["img_4", "img_2", "img_0"]
    assert [i.id for i in store.page("k1", None, 2)] == ["img_4", "img_2"]
    assert [i.id for i in store.page("k1", "img_2", 2)] == ["img_0"]
    assert [i.id for i in store.page(None, "img_3", 10)] == ["img_2", "img_1", "img_0"]
    assert store.page("k2", "img_unknown", 10) == []


def test_retention_by_bytes_keeps_the_store_under_its_bound_dropping_the_oldest_first(records, blobs):
    bound = 1000
    store = ImageStore(records, blobs, max_bytes=bound)
    kept = []
    for index in range(12):
        kept.append(store.keep(*_image(f"img_{index:02d}", size=150 + 10 * index)).id)
        assert records.total() <= bound
    remaining = [image.id for image in store.page(None, None, 100)][::-1]
    assert remaining == kept[-len(remaining) :] and 0 < len(remaining) < len(kept)  # the newest, in order
    assert records.total() == sum(len(blobs.get(i)) for i in remaining)
    assert all(blobs.get(i) is None for i in kept[: -len(remaining)])


def test_retention_by_age_drops_what_is_older_than_the_limit(records, blobs):
    clock = _clocked(records)
    store = ImageStore(records, blobs, max_age_s=60)
    store.keep(*_image("img_old", created_at=NOW - 120))
    store.keep(*_image("img_new", created_at=NOW - 30))
    assert [i.id for i in store.page(None, None, 10)] == ["img_new"] and blobs.get("img_old") is None
    clock[0] += 40
    assert [i.id for i in store.retain()] == ["img_new"] and records.total() == 0


def test_keeping_an_id_again_replaces_it_and_its_size(records, blobs):
    store = ImageStore(records, blobs)
    store.keep(*_image("img_a", size=100))
    store.keep(*_image("img_a", owner="k2", size=300))
    assert records.total() == 300 and store.find("img_a", "k2").size == 300
    assert store.page("k1", None, 10) == []


def _counted(monkeypatch) -> list[dict]:
    from serve import metrics

    seen = []
    monkeypatch.setattr(metrics, "count", lambda spec, value=1.0, **tags: seen.append({"metric": spec.name} | tags))
    return seen


def test_a_key_over_its_quota_loses_its_own_oldest_and_no_one_else_s(records, blobs, monkeypatch):
    seen = _counted(monkeypatch)
    store = ImageStore(records, blobs, max_bytes=100_000)
    store.keep(*_image("img_a1", owner="ka"))
    for index in range(6):  # B's traffic: six images, over its quota of 3 images
        store.keep(*_image(f"img_b{index}", owner="kb"), ImageQuota(images=3))
    assert [i.id for i in store.page("kb", None, 10)] == ["img_b5", "img_b4", "img_b3"]
    assert store.find("img_a1", "ka").owner == "ka" and blobs.get("img_b0") is None
    assert records.held("kb") == (3, 300) and records.held("ka") == (1, 100) and records.held("nobody") == (0, 0)
    assert {(s["reason"], s["whose"]) for s in seen} == {("key_quota", "own")} and len(seen) == 3
    store.keep(*_image("img_b6", owner="kb", size=250), ImageQuota(bytes=400))  # by bytes: 250 + 100, its newest
    assert [i.id for i in store.page("kb", None, 10)] == ["img_b6", "img_b5"] and records.held("kb") == (2, 350)
    store.keep(*_image("img_b7", owner="kb", size=500), ImageQuota(bytes=400))  # alone over it: kept, the rest go
    assert [i.id for i in store.page("kb", None, 10)] == ["img_b7"]
    assert [i.id for i in store.page("ka", None, 10)] == ["img_a1"]


def test_the_global_bound_is_the_last_resort_and_says_when_it_drops_another_key_s(records, blobs, monkeypatch, caplog):
    seen = _counted(monkeypatch)
    store = ImageStore(records, blobs, max_bytes=350)
    store.keep(*_image("img_a1", owner="ka"))
    store.keep(*_image("img_b1", owner="kb"), ImageQuota(images=10))
    store.keep(*_image("img_b2", owner="kb"), ImageQuota(images=10))
    assert seen == [] and not [r for r in caplog.records if r.name.startswith("serve.results")]
    with caplog.at_level("WARNING", logger="serve.results"):
        store.keep(*_image("img_b3", owner="kb"), ImageQuota(images=10))  # the store's bound: A's is the oldest
    assert records.get("img_a1") is None and records.total() == 300
    assert seen == [{"metric": "easel_image_store_evictions", "reason": "global", "whose": "other"}]
    assert any("'ka'" in r.getMessage() and "--image-store-bytes" in r.getMessage() for r in caplog.records)
    store.keep(*_image("img_b4", owner="kb"), ImageQuota(images=10))  # now its own oldest: counted, not warned
    warned = [r for r in caplog.records if r.name.startswith("serve.results") and r.levelname == "WARNING"]
    assert seen[-1]["whose"] == "own" and len(warned) == 1


def test_held_counts_an_id_kept_again_once(records, blobs):
    store = ImageStore(records, blobs)
    store.keep(*_image("img_a", owner="k1", size=100))
    store.keep(*_image("img_a", owner="k1", size=300))
    store.keep(*_image("img_b", owner="k1", size=50))
    assert records.held("k1") == (2, 350) and records.oldest("k1").id == "img_a"
    store.delete("img_a", "k1")
    assert records.held("k1") == (1, 50) and records.oldest("k1").id == "img_b" and records.oldest("k2") is None
