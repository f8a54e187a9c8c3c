"""A generation's ``identity``: the face an IP-Adapter FaceID or InstantID keeps, made an embedding at admission.

``identity.image`` is read by the stack's face models (its face found, aligned and embedded, as
``POST /v1/faces/analyze`` does); ``identity.character`` is the face a character keeps (the mean of its pictures');
``identity.embedding`` is taken as sent. Each becomes ``identity.embedding`` of a named FaceID before the request is
checked, priced and drawn, so that a job, a rerun and the cache key hold the face itself. The replica adds it as one
more IP-Adapter reference (:func:`serve.text_to_image.images.ip_references`) and draws its rows with the LoRA the
FaceID ships with (:func:`serve.adapters.ip_adapter.face_lora`), as diffusers' ``load_ip_adapter`` does. An
InstantID's face also brings its landmarks drawn (``identity.keypoints``, made from ``image`` here): its IdentityNet's
control image (:func:`serve.text_to_image.images.decode_images`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from serve.access.keys import ApiKey
from serve.adapters.ip_adapter import FACE_CROP
from serve.errors import InvalidInput
from serve.faces.analyze import analyze_faces
from serve.faces.geometry import aligned_face, keypoints_drawing
from serve.images import base64_bytes
from serve.images.raster import decode_image, png_base64
from serve.models.served import ServedModel
from serve.serving.characters import Characters, face_area
from serve.serving.prices import identity_cost


@dataclass(frozen=True)
class _Reads:
    """What the identity's adapter reads beside the face's embedding (``width`` values)."""

    name: str
    width: int
    aligned_face: bool  # a FaceID Plus: the face aligned at 224 px
    keypoints: bool  # an InstantID: the face's landmarks drawn


@dataclass(frozen=True)
class _Face:
    """An identity's face as the adapter reads it: its embedding, aligned face and landmarks drawn (base64 PNGs)."""

    embedding: Sequence[float] | None
    aligned_face: str | None = None
    keypoints: str | None = None


async def identified(request, model: ServedModel, key: ApiKey | None, characters: Characters) -> tuple:
    """``request`` with its identity as an embedding of the FaceID or InstantID it names, and the price of finding it.

    400s naming ``identity.*``; an image's price (:func:`serve.serving.prices.identity_cost`) is read from its header
    before its face is looked for.
    """
    identity = getattr(request, "identity", None)
    if identity is None:
        return request, 0.0
    reads = _adapter(identity, model)
    if identity.keypoints is not None and not reads.keypoints:
        why = f"{reads.name} is an IP-Adapter FaceID: only an InstantID reads the face's landmarks"
        raise InvalidInput(f"identity.keypoints: {why}", "identity.keypoints")
    face, cost = _Face(identity.embedding, identity.aligned_face, identity.keypoints), 0.0
    if identity.character is not None:
        face = await _character_face(identity, reads, key, characters)
    elif identity.image is not None:
        face, cost = await _image_face(identity, reads, characters)
    await _pictures_checked(identity, face, reads)
    vector = np.asarray(face.embedding, np.float64)
    if len(vector) != reads.width or not np.isfinite(vector).all() or not vector.any():
        why = f"{len(vector)} values; {reads.name} takes {reads.width} finite values, not all 0"
        raise InvalidInput(f"identity.embedding: {why}", "identity.embedding")
    update = {"image": None, "character": None, "embedding": [float(v) for v in vector], "adapter": reads.name}
    update |= {name: getattr(face, name) if getattr(reads, name) else None for name in ("aligned_face", "keypoints")}
    return request.model_copy(update={"identity": identity.model_copy(update=update)}), cost


def _adapter(identity, model: ServedModel) -> _Reads:
    """The model's FaceID or InstantID ``identity`` names (its first when it names none); a 400 if it has none."""
    info = getattr(getattr(model, "folder", None), "adapters", None)
    info = info and info.ip_adapter
    index = info and info.face_adapter(identity.adapter)
    if index is None:
        field = "identity.adapter" if identity.adapter else "identity"
        named = f" {identity.adapter!r}" if identity.adapter else ""
        how = f"easel up --ip-adapter {model.name}:NAME=DIR"
        raise InvalidInput(f"{field}: model {model.name} has no IP-Adapter FaceID or InstantID{named} ({how})", field)
    width = info.embeds_shapes[index][-1]
    return _Reads(info.names[index], width, info.reads_face_states(index), info.reads_landmarks(index))


async def _pictures_checked(identity, face: _Face, reads: _Reads) -> None:
    """400s for the pictures the adapter reads beside the embedding: missing, or sent and no image (uncharged)."""
    if reads.aligned_face and face.aligned_face is None:
        why = f"FaceID Plus {reads.name} reads the aligned face too: send identity.image, or it with the embedding"
        raise InvalidInput(f"identity.aligned_face: {why}", "identity.aligned_face")
    if reads.keypoints and face.keypoints is None:
        why = f"InstantID {reads.name} reads the face's landmarks too: send identity.image, or keypoints with the face"
        raise InvalidInput(f"identity.keypoints: {why}", "identity.keypoints")
    for name in ("aligned_face", "keypoints"):
        if getattr(reads, name) and getattr(identity, name) is not None:
            await asyncio.to_thread(picture, getattr(identity, name), f"identity.{name}")


async def _character_face(identity, reads: _Reads, key: ApiKey | None, characters: Characters) -> _Face:
    """The face character ``identity.character`` keeps (another key's is as unknown as a missing one), as read.

    Its pictures' mean embedding; its first picture's aligned face and landmarks (drawn unless ``identity.keypoints``
    brings another pose), where ``reads`` reads them.
    """
    field, name = "identity.character", identity.character
    character = await asyncio.to_thread(characters.visible, name, key and key.id)
    if character is None:
        raise InvalidInput(f"{field}: no character {name!r} (POST /v1/characters makes one)", field)
    if character.face is None:
        raise InvalidInput(f"{field}: {name!r} keeps no face (made where the stack served no face models)", field)
    first, drawn = character.first_face or {}, identity.keypoints
    if reads.keypoints and drawn is None and first:
        drawn = await _drawn(np.asarray(first["landmarks"], np.float32), first["width"], first["height"])
    return _Face(character.face, first.get("aligned_face"), drawn)


async def _image_face(identity, reads: _Reads, characters: Characters) -> tuple[_Face, float]:
    """The face of ``identity.image`` as ``reads`` reads it, and the price of finding it.

    Its only face, or with ``face: largest`` its largest. The aligned face at
    :data:`~serve.adapters.ip_adapter.FACE_CROP` for a FaceID Plus; for an InstantID its landmarks drawn on a canvas
    of the picture's size, unless ``identity.keypoints`` brings another pose.
    """
    field = "identity.image"
    entry = characters.faces()
    if entry is None:
        raise InvalidInput(f"{field}: the stack serves no face models (easel up --faces DIR)", field)
    cost = await asyncio.to_thread(identity_cost, identity.image, entry.face_side)
    pixels = await asyncio.to_thread(picture, identity.image, field)
    faces = await analyze_faces(pixels, entry, characters.upscaling.runner)
    if not faces:
        raise InvalidInput(f"{field}: no face found", field)
    if len(faces) > 1 and identity.face == "only":
        raise InvalidInput(f"{field}: {len(faces)} faces found: crop it to one, or send identity.face: largest", field)
    found = max(faces, key=face_area)
    crop, drawn = None, identity.keypoints
    if reads.aligned_face:
        crop = await asyncio.to_thread(png_base64, aligned_face(pixels, found.landmarks, FACE_CROP))
    if reads.keypoints and drawn is None:
        drawn = await _drawn(found.landmarks, pixels.shape[1], pixels.shape[0])
    return _Face(found.embedding, crop, drawn), cost


async def _drawn(landmarks: np.ndarray, width: int, height: int) -> str:
    """An InstantID's control image: a face's landmarks drawn on a ``width`` x ``height`` canvas, base64 PNG."""
    return await asyncio.to_thread(lambda: png_base64(keypoints_drawing(landmarks, width, height)))


def picture(image: str, field: str) -> np.ndarray:
    """An identity's picture (base64) decoded, RGB ``uint8``; one that is no image a 400 naming ``field``."""
    return decode_image(base64_bytes(image), field)
