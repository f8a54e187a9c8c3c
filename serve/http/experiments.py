"""The HTTP API's feedback, experiment and preference routes: ``/v1/feedback``, ``/v1/experiments``, ``/v1/users``.

Each hands its call to the Gateway's :class:`serve.serving.experiments.ExperimentsAndFeedback`; a route's
docstring is its description in the OpenAPI document.
"""

from typing import Annotated

from fastapi import Path, Query, Request

from serve.access import caller
from serve.experiments.feedback import FeedbackRequest
from serve.experiments.policy import NAME_PATTERN, ExperimentSpec
from serve.http.operations import answers
from serve.protocol.schema import MAX_USER_CHARS
from serve.serving.experiments import ExperimentsAndFeedback

User = Annotated[str, Path(max_length=MAX_USER_CHARS, description="The end user (a request's ``user``).")]
Owner = Annotated[str | None, Query(max_length=64, description="An admin key names another key's id.")]


def experiments(http: Request) -> ExperimentsAndFeedback:
    """The serving class of the Gateway replica that answers ``http`` (as :func:`serve.http.admission.serving`)."""
    return http.app.state.gateway.experiments


@answers("POST", "/v1/feedback")
async def feedback(http: Request, body: FeedbackRequest) -> dict:
    """A reward (0 to 1) or a 1-5 rating for a generated image (its ``id``) or a background job (its id).

    It goes to the posterior of the variant that served it, if an experiment chose it; each id counts once (409
    after). An id the caller's key did not generate is as unknown as one never made (400 naming the field).
    """
    return await experiments(http).rate(body, caller(http))


@answers("GET", "/v1/experiments")
async def experiments_listed(http: Request) -> dict:
    """Every experiment: its policy, its variants and each variant's posterior (admin)."""
    return await experiments(http).listing()


@answers("GET", "/v1/experiments/{name}")
async def experiment(http: Request, name: str) -> dict:
    """One experiment with its variants' posteriors (admin; 404 if there is none)."""
    return await experiments(http).describe(name)


@answers("PUT", "/v1/experiments/{name}")
async def experiment_defined(
    http: Request, name: Annotated[str, Path(pattern=NAME_PATTERN)], spec: ExperimentSpec
) -> dict:
    """Create or replace experiment ``name``, a model alias (admin): its variants must be served models.

    Replacing keeps the posteriors of the variants it keeps.
    """
    return await experiments(http).define(name, spec)


@answers("DELETE", "/v1/experiments/{name}")
async def experiment_deleted(http: Request, name: str) -> dict:
    """Remove experiment ``name`` and its posteriors (admin; 404 if there is none)."""
    return await experiments(http).delete(name)


@answers("GET", "/v1/users/{user:path}/preferences")
async def preferences(http: Request, user: User, owner: Owner = None) -> dict:
    """What an end user's ratings taught: per key and record, each variant's posterior.

    A record is an experiment's (``by: experiment``), or of what made what they rated, experiment or not: the model,
    each LoRA, the sampler (``by: model``, ``lora``, ``sampler``). A key sees its own users' records (one ``user``
    under two keys is two users); an admin key sees every key's, or one key's (``owner``). 404 if there is nothing to
    show.
    """
    return await experiments(http).preferences(user, caller(http), owner)


@answers("DELETE", "/v1/users/{user:path}/preferences")
async def preferences_deleted(http: Request, user: User, owner: Owner = None) -> dict:
    """Delete an end user's records under the calling key (an admin key: under ``owner``); 404 if there are none.

    What they added to the experiments' pooled posteriors stays (it is everyone's evidence, per key).
    """
    return await experiments(http).forget(user, caller(http), owner)


"""(method, path, handler), in the document's order; ``user`` may hold ``/`` (a request's ``user`` is any string)."""
