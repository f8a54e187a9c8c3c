"""Finishing an image after it is made: upscalers served as Triton engines, by tiles.

One room, one door: :mod:`serve.finishing.upscalers` recognises a ``--upscaler NAME=FILE`` (its architecture and
scale from the state-dict keys), declares its engine, and lists the stack's upscalers; :mod:`serve.finishing.tiles`
runs an upscale tile by tile through any :class:`~serve.triton.spec.EngineRunner`. The architectures are written
here in plain PyTorch (:mod:`serve.finishing.architectures`), reading the community files' key layouts.
"""
