"""When a model cannot answer: its circuit breaker (:mod:`.circuits`) and the chain of models that answer instead.

The settings (:mod:`.settings`) are a part of the stack's; the Gateway's :mod:`serve.serving.fallbacks` runs them.
"""
