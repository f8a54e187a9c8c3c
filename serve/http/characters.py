"""The HTTP API's character routes: ``/v1/characters``, made once from pictures and drawn by naming them.

Making one names its admission (:data:`serve.http.admission.AdmitBody`: its body read once; its model, LoRA, name and
the key's quota checked; its price taken, :func:`serve.serving.prices.character_cost`); every route runs on the
Gateway's :class:`serve.serving.characters.Characters`. A character is its key's: another key's is a 404.
"""

from fastapi import Request

from serve.access import caller
from serve.http.admission import AdmitBody, serving
from serve.http.operations import answers


@answers("POST", "/v1/characters")
async def character_made(http: Request, admitted: AdmitBody) -> dict:
    """Make a character of the caller's key: 1-8 pictures, an optional LoRA and trigger words, a note.

    Its pictures are encoded once by the model's IP-Adapter (where it has one) and, with face models served, their
    faces embedded (each picture one face, or ``face: largest``). A generation, job or video naming it draws with all
    of it. Priced by its pictures' pixels and passes; bounded per key (quota ``characters``).
    """
    return await serving(http).characters.made(admitted.body, caller(http), replace=False)


@answers("GET", "/v1/characters")
async def characters_listed(http: Request) -> dict:
    """The caller's characters (an admin key's, or an open API's: everyone's), by name."""
    return await serving(http).characters.listing(caller(http))


@answers("GET", "/v1/characters/{name}")
async def character(http: Request, name: str) -> dict:
    """One of the caller's characters; another key's is as unknown as a missing one (404)."""
    return await serving(http).characters.get(name, caller(http))


@answers("PUT", "/v1/characters/{name}")
async def character_replaced(http: Request, name: str, admitted: AdmitBody) -> dict:
    """Make the caller's character ``name`` again from a new body (its name the path's); 404 if it has none."""
    return await serving(http).characters.made(admitted.body.character, caller(http), replace=True)


@answers("DELETE", "/v1/characters/{name}")
async def character_removed(http: Request, name: str) -> dict:
    """Forget the caller's character, its stored pictures with it (404 if none, another key's too)."""
    return await serving(http).characters.removed(name, caller(http))
