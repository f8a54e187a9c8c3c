"""Vectorize versions: Triton names per version, the table of versions, a trained folder checked before install."""

import json
import shutil

import pytest

from build_engines.vectorize.runtime import TRAINED_DIR
from serve.errors import Conflict, InvalidInput
from serve.vectorize.spec import ENSEMBLE, FEATURES
from serve.vectorize.tiers import TIER1_FILE
from serve.vectorize.versions import (
    TableReader,
    VectorizeTable,
    check_trained_folder,
    ensemble_name,
    install_version,
    uninstall_stale_versions,
    uninstall_version,
    version_specs,
)


def test_version_1_keeps_the_bare_names_and_version_n_calls_its_own_steps():
    assert [spec.name for spec in version_specs(1)] == [
        FEATURES.name,
        "vectorize_quality",
        "vectorize_policy",
        "vectorize",
    ]
    features, quality, policy, ensemble = version_specs(3)
    assert ensemble.name == ensemble_name(3) == "vectorize.v3" and features.name == "vectorize_features.v3"
    assert [step.model for step in ensemble.ensemble] == [features.name, quality.name, policy.name]
    assert ensemble.outputs == ENSEMBLE.outputs and ensemble_name(1) == ENSEMBLE.name


def test_a_version_installs_beside_the_first_and_goes_without_touching_it(tmp_path):
    install_version(tmp_path, TRAINED_DIR, 1)
    names = install_version(tmp_path, TRAINED_DIR, 2)
    assert names == ("vectorize_features.v2", "vectorize_quality.v2", "vectorize_policy.v2", "vectorize.v2")
    assert (tmp_path / "vectorize_features.v2" / "1" / TIER1_FILE).resolve() == (TRAINED_DIR / TIER1_FILE).resolve()
    config = (tmp_path / "vectorize.v2" / "config.pbtxt").read_text()
    assert 'model_name: "vectorize_features.v2"' in config and 'model_name: "vectorize_features"' not in config
    uninstall_version(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(spec.name for spec in version_specs(1))


def test_the_committed_trained_set_passes_the_check():
    assert check_trained_folder(TRAINED_DIR) == TRAINED_DIR.resolve()


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda d: shutil.rmtree(d), "is not a folder"),
        (lambda d: (d / "vectorize_policy.onnx").unlink(), "vectorize_policy.onnx is missing or not an ONNX"),
        (lambda d: (d / "vectorize_quality.onnx").write_bytes(b"\x00garbage"), "vectorize_quality.onnx"),
        (lambda d: shutil.copy(d / "vectorize_quality.onnx", d / "vectorize_policy.onnx"), "must take"),
        (lambda d: (d / TIER1_FILE).write_text("{"), "tier1.json is missing or malformed"),
        (lambda d: (d / TIER1_FILE).write_text(json.dumps({"mean": [0]})), "tier1.json is missing or malformed"),
    ],
)
def test_a_malformed_trained_folder_is_a_400_naming_the_field_and_the_fault(tmp_path, spoil, says):
    folder = tmp_path / "trained"
    shutil.copytree(TRAINED_DIR, folder)
    spoil(folder)
    with pytest.raises(InvalidInput) as refused:
        check_trained_folder(folder)
    assert refused.value.field == "trained_dir" and says in refused.value.message
    assert refused.value.message.startswith("trained_dir: ")


@pytest.mark.parametrize("name", ["0" * 300, "~no-such-user/trained", "trained\x00dir"])
def test_a_name_no_folder_can_have_is_a_400_naming_trained_dir_never_a_503(name):
    """A contract run's 300-character trained_dir was a 503: ``is_dir`` raised "File name too long"."""
    with pytest.raises(InvalidInput) as refused:
        check_trained_folder(name)
    assert refused.value.field == "trained_dir" and "is not a folder" in refused.value.message


def test_the_table_adds_side_by_side_serves_one_and_never_reuses_a_number(tmp_path):
    table = VectorizeTable.start("/a")
    assert table.add("/b") == 2 and table.current == 1 and table.resolve(None) == 1 and table.resolve(2) == 2
    assert table.serve(2) == 1 and table.resolve(None) == 2
    with pytest.raises(Conflict) as refused:
        table.remove(2)
    assert refused.value.field == "version"
    assert table.remove(1) == "/a" and table.add("/a") == 3  # the rollback's version is a new number
    with pytest.raises(InvalidInput) as unknown:
        table.resolve(1)
    assert unknown.value.field == "model_version" and "installed: 2, 3" in unknown.value.message
    path = tmp_path / "vectorize_models.json"
    table.write(path)
    assert VectorizeTable.read(path) == table
    assert [(v["version"], v["current"], v["triton_model"]) for v in table.listing()] == [
        (2, True, "vectorize.v2"),
        (3, False, "vectorize.v3"),
    ]


def test_a_replica_reads_the_table_again_only_when_its_file_changed(tmp_path):
    path = tmp_path / "vectorize_models.json"
    VectorizeTable.start("/a").write(path)
    reader = TableReader(path)
    first = reader.now()
    assert reader.now() is first
    changed = VectorizeTable.start("/a")
    changed.serve(changed.add("/b"))
    changed.write(path)
    assert reader.now().current == 2
    assert TableReader(None).now().resolve(None) == 1


def test_a_start_removes_the_versions_an_earlier_run_left(tmp_path):
    install_version(tmp_path, TRAINED_DIR, 1)
    install_version(tmp_path, TRAINED_DIR, 4)
    uninstall_stale_versions(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(spec.name for spec in version_specs(1))


def test_a_restart_keeps_the_installed_versions_whose_folders_still_serve_and_the_current_one(tmp_path, caplog):
    kept, gone = (shutil.copytree(TRAINED_DIR, tmp_path / name) for name in ("kept", "gone"))
    table = VectorizeTable.start(TRAINED_DIR)
    table.serve(table.add(kept))
    table.add(gone)
    shutil.rmtree(gone)
    again = table.kept(tmp_path / "new-v1")
    assert again.versions == {1: str(tmp_path / "new-v1"), 2: str(kept.resolve())} and again.current == 2
    assert "vectorize version 3 is not served again" in caplog.text
    assert again.add(kept) == 4  # numbers are never reused
    table.serve(3)
    assert table.kept(TRAINED_DIR).current == 1  # the current one is gone: version 1 serves
