"""One default stack for every module here: their tests leave it as they found it (a start and stop cost ~45 s).

It serves tiny random-weight upscalers too, saved in the community files' layouts (:data:`UPSCALERS`; a file that
is no upscaler is listed with why), a tiny random GFPGAN face restorer (``--face-restorer face=...``) and a random
CodeFormer (``cf``), so the finishing routes are tested on the same stack, a tiny random image safety checker
(``--safety-checker``) made to flag one chosen picture, a tiny random text classifier (``--text-moderator``) made to
flag one chosen prompt, a tiny random motion adapter and a RIFE interpolator of random weights (videos), a tiny random
CLIP and aesthetic head as its scorer (``--scorer``), and face models of random weights in ``buffalo_l``'s layout
(``--faces``).

It names three remote models on ports chosen now (:func:`remote_ports`), whose services ``test_remote`` starts while
it runs (a second stack, ``b``; a service that hangs, ``hang``; one that floods, ``huge``): elsewhere they are
unreachable, and the default model's chain (``spare``, then ``b``) ends in a 503.
"""

import grpc
import pytest

from build_engines.faces.random_pack import random_face_pack
from build_engines.finishing.ifnet import random_flownet
from build_engines.finishing.random_weights import random_codeformer, random_restorer, random_upscaler, save_upscaler
from build_engines.moderation.safety_checker import chosen_pictures, random_safety_checker
from build_engines.moderation.text_moderator import random_text_moderator
from build_engines.scoring import random_aesthetic, random_clip
from build_engines.text_to_image.motion import random_motion_adapter
from serve.grpc_api import easel_pb2_grpc
from serve.names import DEFAULT_MODEL
from serve.processes import free_ports
from serve.stack import Stack, StackOptions

UPSCALERS = {"x4": ("RRDBNet", 4, "RealESRGAN_x4plus.pth"), "general": ("SRVGGNetCompact", 4, "general.pth")}


@pytest.fixture(scope="package")
def upscaler_files(tmp_path_factory) -> dict:
    """NAME -> file of each upscaler the stack serves, and ``broken``: a file that is not one."""
    folder = tmp_path_factory.mktemp("upscalers")
    files = {
        name: save_upscaler(random_upscaler(kind, scale), folder / file)
        for name, (kind, scale, file) in UPSCALERS.items()
    }
    (folder / "broken.safetensors").write_bytes(b"not weights")
    return files | {"broken": folder / "broken.safetensors"}


@pytest.fixture(scope="package")
def restorer_file(tmp_path_factory):
    """A tiny random GFPGAN v1 clean file, in ``GFPGANv1.4.pth``'s layout: the stack's face restorer ``face``."""
    return save_upscaler(random_restorer(seed=1), tmp_path_factory.mktemp("restorers") / "GFPGANv1.4.pth")


@pytest.fixture(scope="package")
def codeformer_file(tmp_path_factory):
    """A random CodeFormer in ``codeformer.pth``'s layout (its VQGAN full size): the stack's face restorer ``cf``."""
    return save_upscaler(random_codeformer(seed=4), tmp_path_factory.mktemp("restorers") / "codeformer.pth")


@pytest.fixture(scope="package")
def safety_checker(tmp_path_factory):
    """A tiny random safety checker folder that flags the first of :func:`chosen_pictures` and passes the second."""
    return random_safety_checker(tmp_path_factory.mktemp("safety_checker"), *chosen_pictures())


@pytest.fixture(scope="package")
def text_moderator(tmp_path_factory):
    """A tiny random text moderator folder that flags ``FLAGGED_PROMPT`` for ``violence`` and passes the other."""
    return random_text_moderator(tmp_path_factory.mktemp("text_moderator"))


@pytest.fixture(scope="package")
def motion_adapter(default_model, tmp_path_factory):
    """A tiny random AnimateDiff ``MotionAdapter`` for the embedded default's UNet (served as ``wave``)."""
    return random_motion_adapter(default_model, tmp_path_factory.mktemp("motion") / "wave")


@pytest.fixture(scope="package")
def flownet(tmp_path_factory):
    """A RIFE ``flownet.pkl`` of random weights in Practical-RIFE v4.25's layout: the stack's interpolator ``rife``."""
    return random_flownet(tmp_path_factory.mktemp("rife") / "flownet.pkl", seed=2)


@pytest.fixture(scope="package")
def scorers(tmp_path_factory) -> dict:
    """A tiny random CLIP folder and aesthetic head (LAION's layout) over it: the stack's ``--scorer``."""
    folder = tmp_path_factory.mktemp("scorer")
    return {"clip": random_clip(folder / "clip"), "aesthetic": random_aesthetic(folder / "aesthetic.pth")}


@pytest.fixture(scope="package")
def face_models(tmp_path_factory):
    """An SCRFD detector and an ArcFace recognizer of random weights in a ``buffalo_l`` folder: ``--faces``."""
    return random_face_pack(tmp_path_factory.mktemp("faces") / "buffalo_l")


@pytest.fixture(scope="package")
def remote_ports() -> dict[str, int]:
    """The loopback ports of the remote models' services: ``b`` (a second stack), ``hang`` and ``huge``.

    Reserved for the package's whole run: test_remote binds them only when it runs (the other test worker's Triton
    was once handed one in between, and could not start)."""
    return dict(zip(("b", "hang", "huge"), free_ports(3, lease_s=3600), strict=True))


@pytest.fixture(scope="package")
def stack(
    tmp_path_factory,
    upscaler_files,
    restorer_file,
    codeformer_file,
    safety_checker,
    text_moderator,
    motion_adapter,
    flownet,
    scorers,
    face_models,
    remote_ports,
):
    """The embedded default's stack, shared by this package's modules (no result cache), with the upscalers, the face
    restorer, the safety checker, the text moderator, a motion adapter and an interpolator (videos), a scorer, face
    models, remote models (a hanging one cut at 2 s, a flooding one at 1 MB) and a fallback chain."""
    remotes = {name: {"url": f"http://127.0.0.1:{port}"} for name, port in remote_ports.items()}
    remotes["hang"] |= {"timeout_s": 2}
    remotes["huge"] |= {"max_mb": 1}
    options = StackOptions(
        port=0,
        dashboard=False,
        run_dir=tmp_path_factory.mktemp("run"),
        cache_bytes=0,
        upscalers=upscaler_files,
        face_restorers={"face": restorer_file, "cf": codeformer_file},
        safety_checker=safety_checker,
        text_moderator=text_moderator,
        motion_adapters={"wave": motion_adapter},
        interpolators={"rife": flownet},
        scorers=scorers,
        faces=face_models,
        remotes=remotes,
        fallbacks={DEFAULT_MODEL: ("spare", "b")},  # spare: served only while test_text_to_image's fallback test runs
    )
    with Stack(options) as stack:
        yield stack


@pytest.fixture(scope="module")
def easel(stack):
    """A stub of the stack's gRPC API."""
    with grpc.insecure_channel(stack.info.grpc_address) as channel:
        yield easel_pb2_grpc.EaselStub(channel)
