"""Each operation's HTTP handler, named where it is written: ``@answers("GET", "/v1/loras")`` above the function.

An operation is declared once, in :data:`serve.routes.ROUTES` (its method, path, scope, limits and body); its handler
names the one it answers, and :mod:`serve.http.app` adds every operation in that table's order (the OpenAPI
document's). A handler naming an operation that is not declared, or one already answered, fails at import; an
operation no handler answers fails the app's.
"""

import re
from collections.abc import Callable

from serve.routes import ROUTES, Route, route

HANDLERS: dict[Route, tuple[str, Callable]] = {}
"""Each declared operation's path as FastAPI takes it and its handler, filled as the handlers' modules are imported."""


def answers(method: str, path: str) -> Callable[[Callable], Callable]:
    """Declare the decorated function the handler of the operation at ``method`` and ``path``.

    ``path`` may give a parameter a convertor (``{user:path}``: a user id may hold a slash); the operation is the one
    declared without it.
    """
    operation = route(method, re.sub(r"{(\w+):\w+}", r"{\1}", path))
    if operation is None:
        raise LookupError(f"{method} {path} is not an operation of serve.routes.ROUTES")

    def register(handler: Callable) -> Callable:
        if operation in HANDLERS:
            raise LookupError(
                f"{method} {path} is answered twice: {HANDLERS[operation][1].__qualname__}, {handler.__qualname__}"
            )
        HANDLERS[operation] = (path, handler)
        return handler

    return register


def handled() -> list[tuple[str, str, Callable]]:
    """Each operation's method, FastAPI path and handler, in :data:`~serve.routes.ROUTES`' order (all or raises)."""
    missing = [f"{r.method.upper()} {r.path}" for r in ROUTES if r not in HANDLERS]
    if missing:
        raise LookupError(f"operations without a handler: {missing}")
    return [(operation.method.upper(), *HANDLERS[operation]) for operation in ROUTES]
