"""``easel backup`` and ``easel restore`` on the SQLite stores and the run folder's files, while writers go on."""

import json
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from serve.access import open_key_store
from serve.access.audit import AUDIT_FILE, AuditEntry, AuditLog
from serve.access.keys import KeyLimits
from serve.adapters import open_adapter_store
from serve.adapters.registry import READY, UPLOAD, LoraEntry
from serve.adapters.store import StoredReference
from serve.cli.main import main
from serve.jobs import open_job_store
from serve.models.table import MODEL_TABLE
from serve.priority import Priority
from serve.results import StoredImage, open_image_store
from serve.routes import Scope
from serve.stack.backup import MANIFEST, PARTS, BackupError, backup, restore
from serve.stores import default_url


def _image(store, i: int) -> None:
    data = np.random.default_rng(i).bytes(2000 + i)
    store.keep(StoredImage(f"img_{i}", "key1", "image/png", len(data), 1.0 + i, {"prompt": str(i)}), data)


def _lora(folder, name: str) -> LoraEntry:
    (folder / "loras" / "files").mkdir(parents=True, exist_ok=True)
    (folder / "loras" / "files" / f"{name}.safetensors").write_bytes(name.encode() * 100)
    prepared = folder / "loras" / f"{name}.safetensors"
    prepared.write_bytes(b"prepared " + name.encode())
    return LoraEntry(name, READY, None, 4, 900, {"unet": 3}, str(prepared), "easel-default", UPLOAD, name, 1.0)


@pytest.fixture
def run_folder(tmp_path):
    """A run folder with a key, jobs, images, a LoRA, a reference, the model table and the audit log."""
    folder = tmp_path / "run"
    url = default_url(folder)
    open_key_store(url).create("ops", {Scope.ADMIN}, KeyLimits())
    jobs, images, adapters = open_job_store(url), open_image_store(url, folder / "images"), open_adapter_store(url)
    for i in range(3):
        jobs.submit({"prompt": "a red heart icon", "seed": i}, Priority.NORMAL)
        _image(images, i)
    adapters.add_lora(_lora(folder, "ink"))
    embeds = np.ones((1, 1, 8), dtype=np.float32)
    adapters.add_reference(StoredReference("ref_a", "key1", "easel-default", embeds, "a", 1.0))
    table = {"models": {"m": {"loras_dir": str(folder / "loras-m"), "engines": "/engines/m"}}}
    (folder / MODEL_TABLE).write_text(json.dumps(table))
    AuditLog(folder).write(AuditEntry.now(None, "easel keys create", "key_1", 200, "cli"))
    return folder


def _contents(folder) -> dict:
    url = default_url(folder)
    images = open_image_store(url, folder / "images")
    rows = images.page(None, None, 1000)
    return {
        "keys": [k.id for k in open_key_store(url).list()],
        "jobs": sorted(j.id for j in open_job_store(url).list(limit=1000)),
        "images": {row.id: images.read(row) for row in rows},
        "loras": [entry.name for entry in open_adapter_store(url).loras()],
        "references": [r.id for r in open_adapter_store(url).references(None)],
    }


def test_a_backup_under_writes_restores_into_a_fresh_folder_with_nothing_lost(run_folder, tmp_path):
    before = _contents(run_folder)
    url, stop, written = default_url(run_folder), threading.Event(), []

    def load() -> None:  # images and jobs keep coming while the backup runs
        jobs, images = open_job_store(url), open_image_store(url, run_folder / "images")
        i = 100
        while not stop.is_set() or len(written) < 5:
            _image(images, i)
            jobs.submit({"prompt": "more", "seed": i}, Priority.NORMAL)
            written.append(i)
            i += 1

    writer = threading.Thread(target=load)
    writer.start()
    try:
        manifest = backup(run_folder, tmp_path / "backup")
    finally:
        stop.set()
        writer.join()
    assert manifest["store"]["kind"] == "sqlite" and {"images", "loras", MODEL_TABLE, AUDIT_FILE} <= set(
        manifest["parts"]
    )
    fresh = tmp_path / "fresh"
    restore(tmp_path / "backup", fresh)
    restored, after = _contents(fresh), _contents(run_folder)
    assert restored["keys"] == before["keys"] and restored["loras"] == ["ink"] and restored["references"] == ["ref_a"]
    assert set(before["jobs"]) <= set(restored["jobs"]) <= set(after["jobs"])
    assert set(before["images"]) <= set(restored["images"]) <= set(after["images"])
    for image_id, data in restored["images"].items():  # every row the copy holds has its bytes, byte-equal
        assert data == after["images"][image_id]
    assert (fresh / AUDIT_FILE).read_text() == (run_folder / AUDIT_FILE).read_text()


def test_a_restore_into_another_folder_moves_the_paths_it_names_there(run_folder, tmp_path):
    backup(run_folder, tmp_path / "backup")
    fresh = tmp_path / "elsewhere"
    restore(tmp_path / "backup", fresh)
    (entry,) = open_adapter_store(default_url(fresh)).loras()
    assert entry.prepared == str(fresh / "loras" / "ink.safetensors")
    assert (fresh / "loras" / "ink.safetensors").read_bytes() == b"prepared ink"
    assert (fresh / "loras" / "files" / "ink.safetensors").read_bytes() == b"ink" * 100
    table = json.loads((fresh / MODEL_TABLE).read_text())
    assert table["models"]["m"] == {"loras_dir": str(fresh / "loras-m"), "engines": "/engines/m"}


def test_a_backup_needs_an_empty_folder_and_a_restore_a_backup(run_folder, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(BackupError, match="not empty"):
        backup(run_folder, tmp_path / "full")
    with pytest.raises(BackupError, match="not an Easel backup"):
        restore(tmp_path / "full", tmp_path / "fresh")
    with pytest.raises(BackupError, match="no store"):
        backup(tmp_path / "no-run-folder", tmp_path / "out")
    assert not (tmp_path / "fresh" / "easel.db").exists()


def test_every_part_is_one_name_in_the_run_folder_declared_once():
    assert len({part.name for part in PARTS}) == len(PARTS)
    assert all("/" not in part.name for part in PARTS)  # the run folder's own files and folders


def test_easel_backup_and_easel_restore_on_the_command_line(run_folder, tmp_path):
    runner = CliRunner()
    made = runner.invoke(main, ["backup", str(tmp_path / "b"), "--run-folder", str(run_folder)])
    assert made.exit_code == 0, made.output
    assert "sqlite store" in made.output and (tmp_path / "b" / MANIFEST).exists()
    put = runner.invoke(main, ["restore", str(tmp_path / "b"), "--run-folder", str(tmp_path / "fresh")])
    assert put.exit_code == 0, put.output
    assert _contents(tmp_path / "fresh") == _contents(run_folder)
    again = runner.invoke(main, ["backup", str(tmp_path / "b"), "--run-folder", str(run_folder)])
    assert again.exit_code == 1 and "not empty" in again.output
