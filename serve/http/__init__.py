"""The public HTTP API: the FastAPI app's assembly (:mod:`serve.http.app`) and its routes, one module per concern."""
