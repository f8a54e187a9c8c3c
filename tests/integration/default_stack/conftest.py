"""One default stack for every module here: their tests leave it as they found it (a start and stop cost ~45 s)."""

import pytest

from tests.integration.conftest import default_stack


@pytest.fixture(scope="package")
def stack(tmp_path_factory):
    """The embedded default's stack, shared by this package's modules."""
    yield from default_stack(tmp_path_factory)
