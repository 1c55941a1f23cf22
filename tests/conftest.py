import os

import pytest
from hypothesis import settings

from tools import mock_engine as harness

# CI explores the same examples on every run, so a red build always means a real change.
settings.register_profile("ci", derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(scope="session")
def local() -> harness.Recording:
    return harness.run("local")
