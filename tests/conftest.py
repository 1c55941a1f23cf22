import pytest

from tests import harness


@pytest.fixture(scope="session")
def local() -> harness.Recording:
    return harness.run("local")
