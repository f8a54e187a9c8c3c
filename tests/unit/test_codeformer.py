"""CodeFormer: the project's module against spandrel-extra-arches' on the same file, its engine, its aligned faces.

spandrel's loader needs torchvision, which the pinned CPU torch here has not (MACHINE.md): its CodeFormer module is
loaded from its own file, its one import of spandrel (a decorator that records the constructor's arguments) stood
in. Random weights in ``codeformer.pth``'s layout (:func:`~build_engines.finishing.random_weights.random_codeformer`).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from build_engines.faces.random_pack import drawn_faces
from build_engines.finishing.random_weights import random_codeformer, save_upscaler
from build_engines.finishing.restorers import build_restorer
from serve.errors import InvalidInput
from serve.finishing import aligned_faces
from serve.finishing.recognise import read_state, recognise
from serve.finishing.restorers import FACE_SIDE, FIDELITY, Restorers
from serve.listing import READY
from serve.triton.engine_files import ONNX
from serve.triton.onnx_backend import make_session
from tests.conftest import psnr


def _spandrel_codeformer() -> type:
    """spandrel-extra-arches' ``CodeFormer`` class, read from its file."""
    found = importlib.util.find_spec("spandrel_extra_arches")
    if found is None:
        pytest.skip("spandrel-extra-arches is not installed (pip install --no-deps spandrel-extra-arches==0.2.0)")
    path = Path(found.origin).parent / "architectures" / "CodeFormer" / "__arch" / "codeformer.py"
    util = types.ModuleType("spandrel.util")
    util.store_hyperparameters = lambda: lambda cls: cls
    saved = {name: sys.modules.get(name) for name in ("spandrel", "spandrel.util")}
    sys.modules.update({"spandrel": types.ModuleType("spandrel"), "spandrel.util": util})
    try:
        spec = importlib.util.spec_from_file_location("spandrel_codeformer", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
    return module.CodeFormer


@pytest.fixture(scope="module")
def codeformer_file(tmp_path_factory) -> Path:
    return save_upscaler(random_codeformer(seed=4), tmp_path_factory.mktemp("codeformer") / "codeformer.pth")


def _to_unit(image: torch.Tensor) -> np.ndarray:
    return ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


FIDELITIES = (0.0, 0.7)  # 0: the original skips the fusion, which here adds nothing


@pytest.fixture(scope="module")
def face() -> torch.Tensor:
    """One random face at the restorer's side, in ``[-1, 1]``."""
    return torch.rand(1, 3, FACE_SIDE, FACE_SIDE, generator=torch.Generator().manual_seed(5)) * 2 - 1


@pytest.fixture(scope="module")
def restored(codeformer_file, face) -> dict[float, torch.Tensor]:
    """The project's module's restoration of ``face`` at each of :data:`FIDELITIES` (a 512-pixel CodeFormer run takes
    seconds here: both tests compare against these)."""
    state = read_state(codeformer_file)
    module = recognise(state).module(state)
    with torch.no_grad():
        return {fidelity: module(face, torch.tensor([fidelity])) for fidelity in FIDELITIES}


def test_the_module_is_spandrel_s_on_the_same_file(codeformer_file, face, restored):
    state = read_state(codeformer_file)
    recognised = recognise(state)
    assert (recognised.kind, recognised.restores_faces) == ("CodeFormer", True)
    assert recognised.arguments == {"width": 64, "layers": 1, "codebook_size": 64, "fused": ("32", "64")}
    theirs = _spandrel_codeformer()(dim_embd=64, n_layers=1, codebook_size=64, connect_list=["32", "64"]).eval()
    theirs.load_state_dict(state, strict=True)
    for fidelity, got in restored.items():
        with torch.no_grad():
            want = theirs(face, weight=fidelity)[0]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        assert psnr(_to_unit(got)[0], _to_unit(want)[0]) >= 40


def test_the_engine_takes_a_fidelity_per_face_and_matches_the_module(codeformer_file, face, restored, tmp_path):
    entry = build_restorer("cf", codeformer_file, tmp_path)
    assert (entry.status, entry.architecture, entry.takes_fidelity) == (READY, "CodeFormer", True)
    assert [t.name for t in entry.spec.inputs] == ["image", FIDELITY]
    crops = ((face + 1) / 2).repeat(len(FIDELITIES), 1, 1, 1).numpy()  # the same face in each row, in [0, 1]
    fidelity = np.array([[f] for f in FIDELITIES], np.float32)
    served = make_session(tmp_path / "restorer_cf" / ONNX).run(None, {"image": crops, FIDELITY: fidelity})[0]
    want = np.concatenate([((restored[f] + 1) / 2).numpy() for f in FIDELITIES])
    assert np.abs(served - want).max() < 1e-3
    assert np.abs(served[0] - served[1]).max() > 0.01  # one face, two fidelities: each row its own


def test_a_fidelity_for_a_restorer_without_one_is_a_400_naming_it():
    from serve.finishing.restorers import RestorerEntry

    restorers = Restorers((RestorerEntry("gf", "", architecture="GFPGANv1Clean"),))
    assert restorers.choose("gf").name == "gf"
    with pytest.raises(InvalidInput) as refused:
        restorers.choose("gf", fidelity=0.3)
    assert refused.value.field == "restore_faces.fidelity"


def test_an_aligned_face_goes_back_where_it_came_from_softly():
    pixels = drawn_faces([(160, 120, 60)], seed=1)
    landmarks = np.array([[140, 110], [180, 110], [160, 130], [145, 150], [175, 150]], np.float32)
    matrix = aligned_faces.alignment(landmarks, FACE_SIDE)
    np.testing.assert_allclose(
        np.c_[landmarks, np.ones(5)] @ matrix.T, aligned_faces.FFHQ_512, atol=12
    )  # a similarity: close to the template, not on it
    crop = aligned_faces.aligned_input(pixels, matrix, FACE_SIDE)
    same = aligned_faces.paste_back(pixels, matrix, crop, 1.0)  # the crop itself pasted back: the image again
    assert psnr(same, pixels) >= 30
    grey = aligned_faces.paste_back(pixels, matrix, np.full_like(crop, 0.5), 0.7)
    changed = np.abs(grey.astype(int) - pixels).max(axis=2) > 0
    assert changed[120, 160] and not changed[5, 5]  # the face's centre replaced, a far corner untouched
