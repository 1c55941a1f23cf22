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


# --- A real control plane (tests/test_cluster.py): one per session, stopped at its end ------


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    from tests import kube

    why = kube.missing()
    if why:
        pytest.skip(why)
    cp = kube.ControlPlane(tmp_path_factory.mktemp("envtest") / "run")
    yield cp
    cp.stop()
