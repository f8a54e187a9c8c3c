"""The API's words: the request and answer models of the images and videos APIs, their parts and their limits.

What vLLM keeps in its protocol module: pydantic models a transport validates a body into (HTTP's JSON and forms,
gRPC's messages) and the loop reads. Nothing here draws or serves: no Ray, FastAPI, Triton, torch or deployable is
imported (``tests/unit/test_architecture.py`` holds it), so reading a request loads nothing that draws.
"""
