"""The Gateway's plain serving classes, one per concern, each built once and testable without Ray.

vLLM's ``serving_*`` shape: the ingress (:mod:`serve.http.app`) only routes HTTP and gRPC calls to them.
:mod:`~serve.serving.generations` answers generations (the result cache, the model's version kept loaded, the
TextToImage deployment, SVG through the Vectorizer); :mod:`~serve.serving.jobs` queues them as background jobs and
runs them; :mod:`~serve.serving.models` lists, adds, replaces and removes models; :mod:`~serve.serving.experiments`
holds experiments and feedback; :mod:`~serve.serving.vectorize` answers vectorize requests;
:mod:`~serve.serving.adapters` LoRAs uploaded and IP-Adapter references stored while the stack runs;
:mod:`~serve.serving.health` liveness and readiness.
"""
