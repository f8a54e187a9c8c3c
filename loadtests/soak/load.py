"""The soak's load: client threads sending a seeded mix of requests, each answer recorded.

Synchronous generations, background jobs, vectorize uploads and streamed gRPC generations; each answer an
:class:`Outcome`, every job submitted kept for the checks.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass

import httpx

from loadtests.chaos import SMALL, Clients, sample_icon
from serve.stack import Stack

GENERATE = "/v1/images/generations"
SHAPED_GRPC = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
LOAD_KINDS = ("generate", "job", "vectorize", "grpc")


@dataclass(frozen=True)
class Outcome:
    """One request of the load: when it ended (s into the run), what it was, how it was answered."""

    t: float
    kind: str
    status: str  # HTTP status, gRPC code name, "hung", or a transport error's name
    shaped: bool  # a success, or a failure as documented (503/429 + Retry-After, gRPC UNAVAILABLE/RESOURCE_EXHAUSTED)
    seconds: float


def shaped(response: httpx.Response) -> bool:
    """A success, or a failure as documented: a 503/429 with ``Retry-After`` and a JSON ``error``.

    A cancel's 409 (the job had already ended) is an answer as documented too, with its JSON ``error``.
    """
    if response.status_code < 400:
        return True
    if response.status_code == 409 and response.request.url.path.endswith("/cancel"):
        return _names_an_error(response)
    if response.status_code not in (429, 503) or "Retry-After" not in response.headers:
        return False
    return _names_an_error(response)


def _names_an_error(response: httpx.Response) -> bool:
    try:
        return "error" in response.json()
    except ValueError:
        return False


class Load(Clients):
    """``clients`` threads sending the mixed load until stopped; every answer and every job submitted recorded."""

    def __init__(
        self, stack: Stack, clients: int, seed: int, hang_s: float, started: float, think_s: float = 0.0
    ) -> None:
        super().__init__(clients, hang_s)
        self.think_s = think_s  # a client's mean pause between requests (exponential), as a user's
        self.api_url, self.grpc_address = stack.info.api_url, stack.info.grpc_address
        self.seed, self.started = seed, started
        self.icon = sample_icon()
        self.outcomes: list[Outcome] = []
        self.jobs: dict[str, dict] = {}  # id -> the request submitted
        self.streams: Counter[str] = Counter()  # event streams: read to their final event, or broken

    def _record(self, kind: str, status: str, shaped: bool, began: float) -> None:
        now = time.monotonic()
        with self._lock:
            self.outcomes.append(Outcome(round(now - self.started, 2), kind, status, shaped, round(now - began, 3)))

    def _run(self, index: int) -> None:
        import grpc

        from serve.grpc_api import easel_pb2, easel_pb2_grpc

        rng = random.Random(self.seed * 1000 + index)
        with (
            httpx.Client(base_url=self.api_url, timeout=self.hang_s) as client,
            grpc.insecure_channel(self.grpc_address) as channel,
        ):
            stub = easel_pb2_grpc.EaselStub(channel)
            while not self._stop.wait(rng.expovariate(1 / self.think_s) if self.think_s else 0):
                kind = rng.choices(LOAD_KINDS, weights=(4, 2, 2, 1))[0]
                began = time.monotonic()
                try:
                    if kind == "grpc":
                        request = easel_pb2.GenerateRequest(**SMALL, seed=rng.randrange(1000))
                        try:
                            list(stub.Generate(request, timeout=self.hang_s))
                            self._record(kind, "OK", True, began)
                        except grpc.RpcError as error:
                            code = error.code().name
                            status = "hung" if code == "DEADLINE_EXCEEDED" else code
                            self._record(kind, status, code in SHAPED_GRPC, began)
                        continue
                    if kind == "generate":  # a third from a few seeds: cache hits once seen
                        seed = rng.randrange(8) if rng.random() < 1 / 3 else rng.randrange(8, 10**6)
                        response = client.post(GENERATE, json={**SMALL, "seed": seed})
                    elif kind == "vectorize":
                        response = client.post("/v1/vectorize", files={"file": ("icon.png", self.icon, "image/png")})
                    else:
                        response = self._job(client, rng)
                    self._record(kind, str(response.status_code), shaped(response), began)
                except httpx.TimeoutException:
                    self._record(kind, "hung", False, began)
                except httpx.TransportError as error:
                    self._record(kind, type(error).__name__, False, began)

    def _job(self, client: httpx.Client, rng: random.Random) -> httpx.Response:
        """Submit a background job; follow its event stream to the end, cancel it (its answer judged) or leave it."""
        body = {**SMALL, "seed": rng.randrange(10**6), "background": True}
        response = client.post(GENERATE, json=body)
        if response.status_code != 202:
            return response
        job_id = response.json()["id"]
        with self._lock:
            self.jobs[job_id] = body
        follow = rng.random()
        if follow < 0.2:
            began = time.monotonic()
            canceled = client.post(f"/v1/jobs/{job_id}/cancel")
            self._record("cancel", str(canceled.status_code), shaped(canceled), began)
        elif follow < 0.6:
            self._follow(client, job_id)
        return response

    def _follow(self, client: httpx.Client, job_id: str) -> None:
        """Read the job's event stream to its final event; a broken stream is opened again (once)."""
        for _ in range(2):
            try:
                with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
                    for line in stream.iter_lines():
                        if line.startswith("event: ") and line[7:] in ("completed", "failed", "canceled"):
                            self._count_stream("to the end")
                            return
            except httpx.TransportError:
                pass
            self._count_stream("broken")

    def _count_stream(self, how: str) -> None:
        with self._lock:
            self.streams[how] += 1
