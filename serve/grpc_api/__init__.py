"""Easel's public gRPC API (``easel.v1.Easel`` in ``easel.proto``), served through Ray Serve's gRPC proxy.

The servicer (:mod:`serve.grpc_api.servicer`) answers its RPCs (``Generate``, ``Vectorize``, ``Analyze``,
``Feedback``, the video job's: :mod:`serve.grpc_api.videos`); :mod:`serve.grpc_api.messages` turns messages into
the HTTP API's request models and answers into messages. ``easel_pb2*.py`` are generated from ``easel.proto`` (the
command is in its header); a unit test checks they are current.

This package's own module imports nothing: Ray's gRPC proxy imports ``easel_pb2_grpc`` from it, and loading what
answers a call there (torch among it) cost every stack's start seconds.
"""
