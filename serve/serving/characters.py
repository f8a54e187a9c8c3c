"""Characters: made once from pictures, a LoRA and trigger words (``/v1/characters``), drawn by naming them.

:class:`Characters` answers the routes and expands a generation (a job's, a video's, a gRPC call's) that names one
(:meth:`Characters.expanded`, at admission): its trigger words before each prompt, its LoRA after the request's, its
pictures as one more IP-Adapter's references (stored references, encoded once when it was made, kept and deleted
with it). A character is its key's: another key's is as unknown as a missing one (404 on its routes, a 400 naming
``character.name`` in a generation, as an unknown LoRA is). Where the stack serves face models (``easel up
--faces``) each picture must show one face (or ``face: largest``): the character keeps their mean embedding.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np

from serve.access import owner_filter
from serve.access.keys import ApiKey
from serve.adapters.ip_adapter import FACE_CROP, MAX_REFERENCES
from serve.adapters.registry import SHARED
from serve.adapters.store import AdapterStore, Character, StoredReference, character_taken
from serve.errors import Forbidden, InvalidInput, NotFound
from serve.faces.analyze import analyze_faces
from serve.faces.geometry import aligned_face
from serve.faces.pack import FaceEntry
from serve.images import base64_bytes
from serve.images.raster import decode_image, png_base64
from serve.models.served import ServedModel
from serve.protocol.adapter_choices import MAX_LORAS, LoraChoice
from serve.protocol.character_requests import NewCharacter
from serve.protocol.ip_scale import MAX_IP_ADAPTERS, IpAdapterChoice
from serve.serving.adapters import Adapters
from serve.serving.prices import character_cost
from serve.serving.references import new_reference_id
from serve.serving.upscale import Upscaling

FIELD = "character.name"


def _owner(visibility: str, key: ApiKey | None) -> str | None:
    """Whose a character made by ``key`` is: the key's, or (``shared``) every key's, an admin key's to give (403)."""
    if visibility != SHARED:
        return key and key.id
    if key is not None and owner_filter(key) is not None:
        raise Forbidden("visibility: only an admin key shares a character", "visibility")
    return None


def unknown_character(name: str) -> InvalidInput:
    """The 400 for a generation naming a character its key has not (another key's too: the same answer)."""
    return InvalidInput(f"{FIELD}: no character {name!r} (POST /v1/characters makes one)", FIELD)


class Characters:
    """The character routes, and the expansion of a generation that names one."""

    def __init__(self, adapters: Adapters, upscaling: Upscaling) -> None:
        self.adapters, self.upscaling = adapters, upscaling

    def store(self) -> AdapterStore:
        """The stack's adapter store (characters beside references and LoRA uploads)."""
        return self.adapters.references.store()

    def faces(self) -> FaceEntry | None:
        """The face models served (None: none; a character then keeps no face)."""
        ready = self.upscaling.upscalers.faces.ready
        return ready[0] if ready and self.upscaling.runner is not None else None

    async def admitted(self, body: NewCharacter, key: ApiKey | None, path_name: str | None) -> float:
        """What can refuse ``body`` before its work, checked at admission; its price (:func:`character_cost`).

        ``path_name``: a replacement's (``PUT``), which must be the body's name and be kept; a new one's name must be
        free and the key under its ``characters`` quota.
        """
        if path_name is not None and body.name != path_name:
            raise InvalidInput(f"name: {body.name!r} is not the path's character {path_name!r}", "name")
        owner, model = _owner(body.visibility, key), self._model(body)
        if model.adapters.ip_adapter and len(body.images) > MAX_REFERENCES:
            count = len(body.images)
            message = f"model {model.name}'s IP-Adapter takes {MAX_REFERENCES} references a request, not {count}"
            raise InvalidInput(f"images: {message}", "images")
        if body.lora is not None:
            self._check_lora(model, body.lora, key and key.id)
        faces = self.faces()
        cost = await asyncio.to_thread(character_cost, body, faces and faces.face_side)
        kept = await asyncio.to_thread(self.store().character, body.name, owner)
        if path_name is None and kept is not None:
            raise character_taken(body.name)
        if path_name is not None and kept is None:
            raise NotFound(f"no {body.visibility} character {path_name!r}", "name")
        if path_name is None and owner is not None:  # a shared one is no key's to count
            await self.adapters.check_quota(key, 0, "characters")
        return cost

    async def made(self, body: NewCharacter, key: ApiKey | None, replace: bool) -> dict:
        """``body``'s character made (its pictures encoded and their faces embedded, once) and kept as ``key``'s."""
        owner, model = _owner(body.visibility, key), self._model(body)
        face, first_face = await self._face(body)
        embeds = []
        if model.adapters.ip_adapter:
            embeds = [np.asarray(await self.adapters.encoded_reference(model, i), np.float32) for i in body.images]
        if not replace and owner is not None:
            await self.adapters.check_quota(key, sum(e.nbytes for e in embeds), "characters")
        now = time.time()
        references = [StoredReference(new_reference_id(), owner, model.name, e, None, now, body.name) for e in embeds]
        for reference in references:
            await asyncio.to_thread(self.store().add_reference, reference)
        lora = body.lora and body.lora.model_dump()
        character = Character(
            body.name, owner, model.name, tuple(r.id for r in references), lora, body.trigger_words, body.note,
            face, len(body.images), now, first_face,
        )  # fmt: skip
        try:
            old = await asyncio.to_thread(self.store().put_character, character, replace)
        except InvalidInput:  # a racing POST of its name won
            await self._forget(character)
            raise
        if replace and old is None:  # deleted while this was made
            await self._forget(character)
            raise NotFound(f"no character {body.name!r}", "name")
        if old is not None:
            await self._forget(old)
        return character.public()

    async def listing(self, key: ApiKey | None) -> dict:
        """The characters ``key`` may draw, its own and the shared ones (an admin key, an open API: all), by name."""
        mine = owner_filter(key)
        found = await asyncio.to_thread(self.store().characters, None)
        shown = [c for c in found if mine is None or c.owner in (None, mine)]
        return {"object": "list", "data": [character.public() for character in shown]}

    async def get(self, name: str, key: ApiKey | None) -> dict:
        """``key``'s character ``name``, else the shared one (404: none, another key's too)."""
        character = await asyncio.to_thread(self.visible, name, key and key.id)
        if character is None:
            raise NotFound(f"no character {name!r}", "name")
        return character.public()

    async def removed(self, name: str, key: ApiKey | None) -> dict:
        """``key``'s character ``name`` forgotten, its references with it (404: none, another key's too).

        Without one of its own, an admin key (an open API) forgets the shared one; another key is refused (403).
        """
        owner = key and key.id
        if owner is not None and await asyncio.to_thread(self.store().character, name, owner) is None:
            shared = await asyncio.to_thread(self.store().character, name, None)
            if shared is None:
                raise NotFound(f"no character {name!r}", "name")
            if owner_filter(key) is not None:
                raise Forbidden(f"name: {name!r} is shared: only an admin key deletes it", "name")
            owner = None
        character = await asyncio.to_thread(self.store().remove_character, name, owner)
        if character is None:
            raise NotFound(f"no character {name!r}", "name")
        await self._forget(character)
        return {"object": "character", "name": name, "deleted": True}

    def visible(self, name: str, owner: str | None) -> Character | None:
        """The character ``name`` as the key ``owner`` names it: its own, else the shared one (None: neither)."""
        own = owner and self.store().character(name, owner)
        return own or self.store().character(name, None)

    async def expanded(self, request, model: ServedModel, key: ApiKey | None):
        """``request`` with its character drawn in by hand: trigger words, LoRA, pictures (400s naming the field)."""
        choice = request.character
        if choice is None:
            return request
        character = await asyncio.to_thread(self.visible, choice.name, key and key.id)
        if character is None:
            raise unknown_character(choice.name)
        if character.model != model.name:
            why = f"{choice.name!r} was made for model {character.model}; this request is drawn by {model.name}"
            raise InvalidInput(f"{FIELD}: {why}", FIELD)
        if _holds(request, character):  # admitted before (a rerun's record, a video's source): drawn as it is
            return request
        update: dict = {}
        if character.trigger_words:
            words = character.trigger_words
            if request.prompts is not None:
                prompts = [p.model_copy(update={"prompt": f"{words}, {p.prompt}"}) for p in request.prompts]
                update["prompts"] = prompts
            else:
                update["prompt"] = f"{words}, {request.prompt}"
        if character.lora is not None:
            update["loras"] = [*request.loras, LoraChoice(**character.lora)]
            if character.lora["name"] in {lora.name for lora in request.loras} or len(update["loras"]) > MAX_LORAS:
                why = f"its LoRA {character.lora['name']!r} makes loras repeat one or pass {MAX_LORAS}"
                raise InvalidInput(f"{FIELD}: {why}", FIELD)
        if character.references:  # its pictures, a still's or a video's (each frame's, as AnimateDiff's)
            if request.ip_adapter_image is not None or request.ip_adapter_reference is not None:
                message = "its pictures are IP-Adapter references: send the request's own in ip_adapters"
                raise InvalidInput(f"{FIELD}: {message}", FIELD)
            choices = [*request.ip_adapters, IpAdapterChoice(references=list(character.references), scale=choice.scale)]
            if len(choices) > MAX_IP_ADAPTERS:
                raise InvalidInput(f"{FIELD}: its pictures make ip_adapters pass {MAX_IP_ADAPTERS}", FIELD)
            update["ip_adapters"] = choices
        return request.model_copy(update=update)

    def face_of(self, request, owner: str | None) -> tuple[float, ...] | None:
        """The face its images' ``scores.identity`` is against: its identity's, else its character's (None: none).

        ``best_of: identity`` without one is a 400 naming ``best_of``.
        """
        named = request.character and self.visible(request.character.name, owner)
        face = named.face if named and self.faces() is not None else None
        identity = getattr(request, "identity", None)
        if identity is not None and identity.embedding is not None and self.faces() is not None:  # the face it keeps
            vector = np.asarray(identity.embedding, np.float64)
            face = tuple(float(v) for v in vector / np.linalg.norm(vector))
        if face is None and request.candidates > 1 and request.best_of == "identity":
            why = "identity ranks candidates by a character's face: name one made where the stack serves face models"
            raise InvalidInput(f"best_of: {why}", "best_of")
        return face

    def _model(self, body: NewCharacter) -> ServedModel:
        return self.adapters.references.models().resolve(body.model)

    @staticmethod
    def _check_lora(model: ServedModel, lora: LoraChoice, owner: str | None) -> None:
        """A 400 naming ``lora.name`` for a LoRA ``owner`` cannot use with ``model``."""
        try:
            model.adapters.check(SimpleNamespace(loras=[lora], ip_adapters=[], **dict.fromkeys(_SHORTHAND)), owner)
        except InvalidInput as error:
            raise InvalidInput(error.message.replace("loras.0.name", "lora.name", 1), "lora.name") from None

    async def _face(self, body: NewCharacter) -> tuple[tuple[float, ...] | None, dict | None]:
        """The mean of each picture's face's embedding, unit length, and the first picture's face (:func:`first_face`).

        (None, None) without face models; 400s naming a picture.
        """
        entry = self.faces()
        if entry is None:
            return None, None
        found, first = [], None
        for index, image in enumerate(body.images):
            field = f"images.{index}"
            pixels = await asyncio.to_thread(picture, image, index)
            faces = await analyze_faces(pixels, entry, self.upscaling.runner)
            if not faces:
                raise InvalidInput(f"{field}: no face found (a character's pictures each show its face)", field)
            if len(faces) > 1 and body.face == "only":
                message = f"{len(faces)} faces found: crop it to the character's, or send face: largest"
                raise InvalidInput(f"{field}: {message}", field)
            chosen = max(faces, key=face_area)
            found.append(chosen.embedding)
            first = first or await asyncio.to_thread(first_face, pixels, chosen)
        mean = np.mean(found, axis=0)
        return tuple(float(v) for v in mean / np.linalg.norm(mean)), first

    async def _forget(self, character: Character) -> None:
        for reference_id in character.references:
            await asyncio.to_thread(self.store().remove_reference, reference_id)


def first_face(pixels: np.ndarray, face) -> dict:
    """A picture's chosen face as a character keeps it for InstantID and FaceID Plus.

    Its landmarks on the picture's size (InstantID draws them), and the face aligned at
    :data:`~serve.adapters.ip_adapter.FACE_CROP` (base64 PNG).
    """
    height, width = pixels.shape[:2]
    kept = {"landmarks": np.asarray(face.landmarks, np.float32).tolist(), "width": width, "height": height}
    return kept | {"aligned_face": png_base64(aligned_face(pixels, face.landmarks, FACE_CROP))}


def picture(image: str, index: int) -> np.ndarray:
    """A character's picture ``index`` decoded (RGB ``uint8``); one that is no image a 400 naming ``images.N``."""
    return decode_image(base64_bytes(image), f"images.{index}")


_SHORTHAND = ("ip_adapter_image", "ip_adapter_reference", "motion_adapter")


def _holds(request, character: Character) -> bool:
    """Whether ``request`` holds ``character``'s parts already: its pictures, LoRA and trigger words."""
    pictures = set(character.references)
    held = not pictures or any(pictures <= set(choice.references) for choice in request.ip_adapters)
    lora = character.lora is None or character.lora["name"] in {choice.name for choice in request.loras}
    prompts = [request.prompt] if request.prompts is None else [choice.prompt for choice in request.prompts]
    words = not character.trigger_words or all(p.startswith(f"{character.trigger_words}, ") for p in prompts)
    return held and lora and words


def face_area(face) -> float:
    """A found face's box area (the largest is a picture's chosen face)."""
    x1, y1, x2, y2 = face.box
    return float((x2 - x1) * (y2 - y1))
