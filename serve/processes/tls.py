"""TLS on the public API without a proxy: ``easel up --tls-cert/--tls-key`` (docs/guides/scaling-out.md).

Ray Serve's HTTP proxy serves HTTPS itself (uvicorn's ``ssl_certfile``/``ssl_keyfile``, set in the Serve config's
``http_options``); its gRPC proxy listens through :func:`serve.processes.loopback.bind_serve_servers`, which adds a
secure port with :func:`grpc_credentials` when the stack sets :data:`CERT_ENV` and :data:`KEY_ENV`. Clients on this
machine (the readiness checks, the first request, ``easel status``) trust exactly the given certificate
(:func:`client_verify`).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, FilePath, model_validator

from serve.spelling import Cli

CERT_ENV = "EASEL_TLS_CERT"
KEY_ENV = "EASEL_TLS_KEY"
"""The certificate chain's and the private key's PEM files, for the gRPC proxy in Ray's workers (set by the stack)."""


class TlsSettings(BaseModel):
    """The certificate and key the public API (HTTP and gRPC) presents; neither: plain HTTP and gRPC."""

    tls_cert: Annotated[FilePath | None, Cli(type="EXISTING_FILE", metavar="PEM")] = Field(
        None,
        description="Serve the API over HTTPS and the gRPC API over TLS with this certificate chain (PEM; with "
        "--tls-key). On a cluster the file must be at this path on every node that runs a proxy.",
    )
    tls_key: Annotated[FilePath | None, Cli(type="EXISTING_FILE", metavar="PEM")] = Field(
        None, description="The private key (PEM, unencrypted) of --tls-cert."
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> TlsSettings:
        """A certificate without its key (or the reverse) is refused, naming the one missing."""
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = ("--tls-cert", "--tls-key") if self.tls_key is None else ("--tls-key", "--tls-cert")
            raise ValueError(f"{given} needs {missing} too (both or neither)")
        return self

    @property
    def api_scheme(self) -> str:
        """``https`` with a certificate, else ``http``."""
        return "https" if self.tls_cert else "http"

    def tls_env(self) -> dict[str, str]:
        """The variables that tell Ray's workers the gRPC proxy's certificate and key (empty: none)."""
        if self.tls_cert is None or self.tls_key is None:
            return {}
        return {CERT_ENV: str(self.tls_cert.resolve()), KEY_ENV: str(self.tls_key.resolve())}

    def http_options(self) -> dict[str, str]:
        """Ray Serve's ``http_options`` for HTTPS (empty: plain HTTP)."""
        env = self.tls_env()
        return {"ssl_certfile": env[CERT_ENV], "ssl_keyfile": env[KEY_ENV]} if env else {}


def grpc_credentials():
    """The gRPC server credentials of :data:`CERT_ENV` and :data:`KEY_ENV` (None when the stack set none)."""
    cert, key = os.environ.get(CERT_ENV), os.environ.get(KEY_ENV)
    if not cert or not key:
        return None
    import grpc

    return grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())])


def client_verify(cert: str | Path | None) -> ssl.SSLContext | bool:
    """What a client on this machine verifies the API with: the stack's own certificate, pinned (True: no TLS).

    The certificate is trusted as it is (a self-signed one, or a CA's leaf with ``VERIFY_X509_PARTIAL_CHAIN``) and
    the host name is not checked: the API is reached by its bind address, which a public certificate rarely names.
    """
    if cert is None:
        return True
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context
