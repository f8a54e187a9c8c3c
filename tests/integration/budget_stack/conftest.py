"""The package's stack (see ``__init__``)."""

import pytest

from serve.stack import Stack, StackOptions

BUDGET = 1280 << 20
"""Small enough that the largest request is split into several runs per step (a 1.05 GiB pool), and that it takes
seconds, not minutes."""


@pytest.fixture(scope="package")
def stack(tmp_path_factory):
    """The stack with a 1.25 GiB engine memory budget and the default cost ceiling."""
    options = StackOptions(port=0, dashboard=False, run_dir=tmp_path_factory.mktemp("run"), memory_budget_bytes=BUDGET)
    with Stack(options) as stack:
        yield stack
