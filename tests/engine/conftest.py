"""Fixtures of the engine tier: the tools, the network namespace, the folder of charts."""

from __future__ import annotations

import pytest

from tests import envtest, netns
from tests.engine import charts_folder, driver, stacks, world
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


def deployed(tmp_path_factory, charts_dir, stack: str):
    """A cluster shaped like `stack`'s nodes and the stack pointed at it; yields (world, stack)
    and stops the cluster after (use from a module fixture)."""
    need_engine()
    root = tmp_path_factory.mktemp(f"engine-{stack}")
    # The nodes first: their kubeconfig is what the stack's config points at.
    shape = stacks.SHAPES[stack]("", charts_dir)
    w = world.start(root / "cluster", shape.nodes, shape.devices)
    try:
        shape = stacks.SHAPES[stack](w.kubeconfig, charts_dir)
        yield w, driver.EngineStack(stack, shape.config, root / "pulumi")
    finally:
        w.stop()
