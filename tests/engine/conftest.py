"""Fixtures of the engine tier: the tools, the network namespace, the folder of charts."""

from __future__ import annotations

import pytest

from tests import envtest, netns
from tests.engine import charts_folder
from tools import charts, engine_tools


def need_engine() -> None:
    """Skip, in one line, where a part the engine tests run is truly absent here."""
    why = (engine_tools.missing() or netns.why_not_isolated() or envtest.missing()
           or (None if (charts.CHARTS_DIR / "SHA256SUMS").is_file() else f"chart archives absent: {charts.CHARTS_DIR}"))
    if why:
        pytest.skip(why)


@pytest.fixture(scope="session")
def charts_dir(tmp_path_factory):
    need_engine()
    return charts_folder.make(tmp_path_factory.mktemp("charts"))
