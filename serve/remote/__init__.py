"""Remote models: a model another service draws (``easel up --remote NAME=URL``), served beside the stack's own.

:mod:`serve.remote.settings` declares them, :class:`serve.remote.models.RemoteModel` checks, prices and draws one,
:mod:`serve.remote.openai_images` speaks its protocol (OpenAI's images API: another Easel or any compatible service),
:mod:`serve.remote.answer_images` checks the images it answers as an input image is checked.
"""
