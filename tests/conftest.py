import pytest

from tools import mock_engine as harness


@pytest.fixture(scope="session")
def local() -> harness.Recording:
    return harness.run("local")
