"""Face models: an InsightFace model-zoo folder routed, installed as engines and run as InsightFace runs it.

No server: the installed engines run in ONNX Runtime in-process, and every face found is held to InsightFace's
``FaceAnalysis`` on the same files (boxes and landmarks within 1 pixel, embeddings at cosine >= 0.9999).
"""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import onnx
import pytest
import torch

from build_engines.faces.build import build_faces, normalisation
from build_engines.faces.random_pack import RECOGNIZER_FILE, drawn_faces, random_face_pack
from build_engines.onnx_export import OPSET
from serve.errors import InvalidInput
from serve.faces.analyze import analyze_faces
from serve.faces.pack import MAX_FACES, FaceEntry, Faces, detector_spec
from serve.listing import ERROR, READY
from serve.protocol.face_requests import MAX_ANALYZED_FACES
from serve.triton.engine_files import ONNX
from serve.triton.onnx_backend import make_session
from tests.faces import assert_same_faces, insightface_faces

TWO_FACES = [(80, 100, 40), (220, 120, 50)]


class InProcess:
    """The face engines of a built folder, run by ONNX Runtime in-process (as Triton's backend runs them)."""

    def __init__(self, folder) -> None:
        self.folder, self.sessions, self.calls = folder, {}, []

    async def infer(self, spec, inputs, priority=0):
        self.calls.append(spec.name)
        if spec.name not in self.sessions:
            self.sessions[spec.name] = make_session(self.folder / spec.name / ONNX)
        session = self.sessions[spec.name]
        names = [t.name for t in spec.outputs]
        return dict(zip(names, session.run(names, dict(inputs)), strict=True))


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return random_face_pack(tmp_path_factory.mktemp("faces") / "buffalo_l")


@pytest.fixture(scope="module")
def built(pack, tmp_path_factory):
    folder = tmp_path_factory.mktemp("built")
    return build_faces(pack, folder), folder


def _analyzed(built, pixels, max_faces=MAX_FACES) -> list[dict]:
    entry, folder = built
    return [face.public() for face in asyncio.run(analyze_faces(pixels, entry, InProcess(folder), max_faces))]


def test_the_folder_s_files_are_routed_as_insightface_routes_them_and_installed(built):
    entry, folder = built
    assert entry.status == READY and (entry.detector, entry.recognizer) == ("det_10g.onnx", "w600k_r50.onnx")
    assert (entry.face_side, entry.embedding_size, entry.input_mean, entry.input_std) == (112, 512, 127.5, 127.5)
    assert sorted(p.parent.name for p in folder.glob(f"*/{ONNX}")) == ["faces_detector", "faces_recognizer"]
    assert MAX_FACES == MAX_ANALYZED_FACES


@pytest.mark.parametrize(
    ("centres", "size"),
    [(TWO_FACES, (320, 240)), ([(60, 150, 45), (150, 60, 30)], (200, 300)), ([(300, 200, 120)], (640, 400))],
    ids=["wide", "tall", "one-large"],
)
def test_faces_match_insightface_s_face_analysis_on_the_same_files(pack, built, centres, size):
    pixels = drawn_faces(centres, size)
    assert_same_faces(_analyzed(built, pixels, max_faces=1000), insightface_faces(pack, pixels))


def test_past_max_faces_the_largest_and_most_central_are_kept_as_insightface_s_max_num_keeps_them(pack, built):
    pixels = drawn_faces(TWO_FACES)
    assert len(_analyzed(built, pixels, max_faces=1000)) > 2
    assert_same_faces(_analyzed(built, pixels, max_faces=2), insightface_faces(pack, pixels, max_num=2))


def test_an_image_without_a_face_gives_none_and_the_recognizer_is_not_called(built):
    entry, folder = built
    runner = InProcess(folder)
    dark = drawn_faces([])
    assert asyncio.run(analyze_faces(dark, entry, runner)) == [] and runner.calls == ["faces_detector"]


def test_a_folder_without_a_recognizer_is_listed_with_why_and_models_insightface_does_not_use_are_ignored(
    pack, tmp_path
):
    lone = tmp_path / "detector_only"
    lone.mkdir()
    shutil.copy(pack / "det_10g.onnx", lone / "det_10g.onnx")
    landmarks = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    torch.onnx.export(
        landmarks, (torch.zeros(1, 3, 192, 192),), str(lone / "2d106det.onnx"), opset_version=OPSET, dynamo=False
    )
    entry = build_faces(lone, tmp_path / "built")
    assert entry.status == ERROR and "no recognition model" in entry.error
    listed = Faces((entry,))
    with pytest.raises(InvalidInput, match="cannot be served: .*no recognition model") as refused:
        listed.served("image")
    assert refused.value.field == "image"
    with pytest.raises(InvalidInput, match=r"no face models are served \(start the stack with --faces DIR\)"):
        Faces().served("image")


def test_an_mxnet_recognizer_s_normalisation_is_read_from_its_first_nodes_as_insightface_reads_it(pack):
    model = onnx.load(str(pack / RECOGNIZER_FILE))
    assert normalisation(model) == (127.5, 127.5)
    model.graph.node[0].name, model.graph.node[1].name = "_minusscalar0", "_mulscalar0"
    assert normalisation(model) == (0.0, 1.0)


def test_the_listing_round_trips_through_its_file(built, tmp_path):
    entry, _ = built
    Faces((entry,)).write(tmp_path)
    read = Faces.read(tmp_path)
    assert read.entries == (entry,) and isinstance(read.entries[0], FaceEntry)
    assert [spec.name for spec in read.specs] == ["faces_detector", "faces_recognizer"]
    assert read.listing()[0] | {"status": READY} == entry.public()


def test_embeddings_are_unit_length(built):
    faces = _analyzed(built, drawn_faces(TWO_FACES))
    assert np.allclose([np.linalg.norm(face["embedding"]) for face in faces], 1.0, atol=1e-5)


def test_the_python_backend_answers_an_unbatched_engine_s_outputs_whole(built):
    """The detector's outputs have a row per anchor, not per request: the backend gave a lone request its first row."""
    from serve.triton.onnx_backend import run_batched

    _, folder = built

    class Session:
        output_names = [t.name for t in detector_spec().outputs]

        def __init__(self) -> None:
            self.session = make_session(folder / "faces_detector" / ONNX)

        def run(self, feeds, shared=None):
            return self.session.run(self.output_names, feeds)

    blob = np.zeros(detector_spec().inputs[0].dims, np.float32)
    (answer,) = run_batched(Session(), [{"image": blob}])
    assert {name: a.shape for name, a in answer.items()} == {t.name: t.dims for t in detector_spec().outputs}


def test_the_alignment_is_scikit_image_s_similarity_estimate_as_insightface_makes_it():
    from skimage.transform import SimilarityTransform

    from serve.faces.geometry import ARCFACE_LANDMARKS, similarity

    rng = np.random.default_rng(3)
    for _ in range(20):
        source = ARCFACE_LANDMARKS * rng.uniform(0.3, 4) + rng.uniform(-50, 200, 2) + rng.normal(0, 3, (5, 2))
        want = SimilarityTransform.from_estimate(source, ARCFACE_LANDMARKS).params[:2]
        assert np.allclose(similarity(source, ARCFACE_LANDMARKS), want, atol=1e-9)
    mirrored = ARCFACE_LANDMARKS * [-1, 1]  # a reflection is no similarity: the closest rotation, as scikit-image's
    want = SimilarityTransform.from_estimate(mirrored, ARCFACE_LANDMARKS).params[:2]
    assert np.allclose(similarity(mirrored, ARCFACE_LANDMARKS), want, atol=1e-9)


def test_identity_is_the_best_face_s_cosine_with_insightface_s_embeddings_and_none_without_a_face(pack, built):
    from serve.faces.identity import identity_scores

    entry, folder = built
    reference = insightface_faces(pack, drawn_faces([(160, 120, 60)]))[0]["embedding"]
    reference = reference / np.linalg.norm(reference)
    pictures = [drawn_faces(TWO_FACES, seed=3), drawn_faces([])]
    served = asyncio.run(identity_scores(pictures, reference, entry, InProcess(folder)))
    theirs = [f["embedding"] / np.linalg.norm(f["embedding"]) for f in insightface_faces(pack, pictures[0])]
    assert served[1] is None and len(theirs) > 1
    assert served[0] == pytest.approx(max(float(np.dot(e, reference)) for e in theirs), abs=1e-4)
