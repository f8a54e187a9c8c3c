"""A generation's ``identity``: the face an IP-Adapter FaceID keeps, made an embedding at admission.

``identity.image`` is read by the stack's face models (its face found, aligned and embedded, as
``POST /v1/faces/analyze`` does); ``identity.character`` is the face a character keeps (the mean of its pictures');
``identity.embedding`` is taken as sent. Each becomes ``identity.embedding`` of a named FaceID before the request is
checked, priced and drawn, so that a job, a rerun and the cache key hold the face itself. The replica adds it as one
more IP-Adapter reference (:func:`serve.text_to_image.images.ip_references`) and draws its rows with the LoRA the
FaceID ships with (:func:`serve.adapters.ip_adapter.face_lora`), as diffusers' ``load_ip_adapter`` does.
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np

from serve.access.keys import ApiKey
from serve.adapters.ip_adapter import FACE_CROP
from serve.errors import InvalidInput
from serve.faces.analyze import analyze_faces
from serve.faces.geometry import aligned_face
from serve.faces.pack import FaceEntry
from serve.images import base64_bytes
from serve.images.raster import decode_image, encode_image
from serve.models.served import ServedModel
from serve.serving.characters import Characters, face_area
from serve.serving.prices import identity_cost


async def identified(request, model: ServedModel, key: ApiKey | None, characters: Characters) -> tuple:
    """``request`` with its identity as an embedding of the model's FaceID it names, and the price of finding it.

    400s naming ``identity.*``; an image's price (:func:`serve.serving.prices.identity_cost`) is read from its header
    before its face is looked for.
    """
    identity = getattr(request, "identity", None)
    if identity is None:
        return request, 0.0
    info = getattr(getattr(model, "folder", None), "adapters", None)
    info = info and info.ip_adapter
    index = info and info.face_adapter(identity.adapter)
    if index is None:
        field = "identity.adapter" if identity.adapter else "identity"
        named = f" {identity.adapter!r}" if identity.adapter else ""
        why = f"model {model.name} has no IP-Adapter FaceID{named} (easel up --ip-adapter {model.name}:NAME=DIR)"
        raise InvalidInput(f"{field}: {why}", field)
    plus, named = info.reads_face_states(index), info.names[index]
    embedding, crop, cost = identity.embedding, identity.aligned_face, 0.0
    if identity.character is not None:
        if plus:
            why = f"FaceID Plus {named} reads a picture of the face too: send identity.image"
            raise InvalidInput(f"identity.character: {why}", "identity.character")
        embedding = await _character_face(identity.character, key, characters)
    elif identity.image is not None:
        entry = characters.faces()
        if entry is None:
            raise InvalidInput(
                "identity.image: the stack serves no face models (easel up --faces DIR)", "identity.image"
            )
        cost = await asyncio.to_thread(identity_cost, identity.image, entry.face_side)
        embedding, crop = await _image_face(identity.image, identity.face, entry, characters)
    if plus and crop is None:
        why = f"FaceID Plus {named} reads the aligned face too: send identity.image, or it with the embedding"
        raise InvalidInput(f"identity.aligned_face: {why}", "identity.aligned_face")
    if plus and identity.aligned_face is not None:  # sent: read now, refused before the charge if it is no image
        await asyncio.to_thread(picture, crop, "identity.aligned_face")
    width = info.embeds_shapes[index][0]
    vector = np.asarray(embedding, np.float64)
    if len(vector) != width or not np.isfinite(vector).all() or not vector.any():
        why = f"{len(vector)} values; FaceID {named} takes {width} finite values, not all 0"
        raise InvalidInput(f"identity.embedding: {why}", "identity.embedding")
    update = {"image": None, "character": None, "embedding": [float(v) for v in vector], "adapter": named}
    update["aligned_face"] = crop if plus else None
    return request.model_copy(update={"identity": identity.model_copy(update=update)}), cost


async def _character_face(name: str, key: ApiKey | None, characters: Characters) -> tuple[float, ...]:
    """The face character ``name`` keeps (another key's is as unknown as a missing one)."""
    field = "identity.character"
    character = await asyncio.to_thread(characters.visible, name, key and key.id)
    if character is None:
        raise InvalidInput(f"{field}: no character {name!r} (POST /v1/characters makes one)", field)
    if character.face is None:
        raise InvalidInput(f"{field}: {name!r} keeps no face (made where the stack served no face models)", field)
    return character.face


async def _image_face(image: str, which: str, entry: FaceEntry, characters: Characters) -> tuple[np.ndarray, str]:
    """The embedding of ``image``'s face, and the face aligned as a FaceID Plus reads it (base64 PNG).

    Its only face, or with ``which`` largest its largest; aligned at :data:`~serve.adapters.ip_adapter.FACE_CROP`.
    """
    field = "identity.image"
    pixels = await asyncio.to_thread(picture, image, field)
    faces = await analyze_faces(pixels, entry, characters.upscaling.runner)
    if not faces:
        raise InvalidInput(f"{field}: no face found", field)
    if len(faces) > 1 and which == "only":
        raise InvalidInput(f"{field}: {len(faces)} faces found: crop it to one, or send identity.face: largest", field)
    face = max(faces, key=face_area)
    crop = await asyncio.to_thread(aligned_face, pixels, face.landmarks, FACE_CROP)
    return face.embedding, base64.b64encode(await asyncio.to_thread(encode_image, crop, "png")).decode()


def picture(image: str, field: str) -> np.ndarray:
    """An identity's picture (base64) decoded, RGB ``uint8``; one that is no image a 400 naming ``field``."""
    return decode_image(base64_bytes(image), field)
