"""``python -m serve.cli``: the ``easel`` command."""

from serve.cli.main import main

main()
