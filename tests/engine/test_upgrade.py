"""An existing stack upgraded to this version of the program: `pulumi up` with the program as it
was at an earlier commit, then `preview` and `up` with this one on the same state and cluster.
Nothing is replaced or deleted (a changed parent or name would show as a create and a delete, and
for a fixed Kubernetes name fail with AlreadyExists); what changes is exactly what the newer
release adds, each in place.

The earlier program runs in a process of its own (its modules would clash with this one's), from
the commit's tree as `git archive` writes it. BASELINE is the last commit before the ingress
routed the served models itself; move it forward to the newest release users run, and CHANGES
with it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from tests.engine import driver
from tests.engine.conftest import deployed
from tests.engine.lifecycle import ops, summary_without_same
from tools.mock_engine import PROJECT_DIR

pytestmark = pytest.mark.engine
BASELINE = "2edb55c401a4ea66ed8b96b58368caac33ddbb91"
# What the upgrade from BASELINE does, beside `same`: the ingress's model routing is created (on the
# local stack's arm64 node without the body-based router: one route to the router's Service); the
# model servers take the client key (their key Secret, and the pods roll onto it), the mesh and the
# network let the ingress reach them, the gateway routes straight, and the front door's dashboard
# shows the ingress's requests by destination.
CHANGES = sorted([
    ("create", "llm-platform:index:ModelRouting", "model-routing"),
    ("create", "random:index/randomPassword:RandomPassword", "model-routing-key-salt"),
    ("create", "kubernetes:networking.istio.io/v1alpha3:EnvoyFilter", "model-routing-ingress-filters"),
    ("update", "kubernetes:core/v1:Secret", "llama-router-api-keys"),
    ("update", "kubernetes:apps/v1:Deployment", "llama-router-deployment"),
    ("update", "kubernetes:security.istio.io/v1:AuthorizationPolicy", "mesh-callers-models"),
    ("update", "kubernetes:networking.k8s.io/v1:NetworkPolicy", "models-allow-callers"),
    ("update", "kubernetes:networking.istio.io/v1:VirtualService", "gateway-routes"),
    ("update", "kubernetes:helm.sh/v3:Release", "monitoring-kps"),
])
# Settings of this release the baseline's config check does not know: left out of its run.
NEW_SETTINGS = {"cluster": ("amd64Nodes",)}

OLD_UP = """
import json, pathlib, sys
from tests.engine import driver
config, root = json.loads(sys.argv[1]), pathlib.Path(sys.argv[2])
result = driver.EngineStack("local", config, root).up()
print(json.dumps({"result": result.summary.result, "changes": result.summary.resource_changes}))
"""


def baseline_tree(dest) -> str:
    """The program at BASELINE, unpacked into `dest`; skips where the clone lacks the commit."""
    archive = subprocess.run(["git", "-C", str(PROJECT_DIR), "archive", "--format=tar", BASELINE],
                             capture_output=True)
    if archive.returncode != 0:
        shallow = subprocess.run(["git", "-C", str(PROJECT_DIR), "rev-parse", "--is-shallow-repository"],
                                 capture_output=True, text=True).stdout.strip() == "true"
        why = f"git archive {BASELINE[:12]}: {archive.stderr.decode().strip()}"
        # Only a shallow clone truly lacks the commit; anything else is a failure to see.
        if not shallow:
            pytest.fail(why)
        pytest.skip(f"a shallow clone lacks the earlier program ({why})")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return str(dest)


@pytest.fixture(scope="module")
def env(tmp_path_factory, charts_dir):
    yield from deployed(tmp_path_factory, charts_dir, "local")


def test_an_existing_stack_upgrades_in_place(env, tmp_path):
    w, stack = env
    old = baseline_tree(tmp_path / "baseline")
    old_config = {k: ({f: v for f, v in value.items() if f not in NEW_SETTINGS.get(k, ())}
                      if isinstance(value, dict) else value) for k, value in stack.config.items()}
    run = subprocess.run(
        [sys.executable, "-c", OLD_UP, json.dumps(old_config), str(stack.root)], cwd=old,
        env={**os.environ, "PYTHONPATH": old}, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    before = json.loads(run.stdout.strip().splitlines()[-1])
    # The earlier run wrote its own stand-in `random` plugin into the shared folder: this
    # program's goes back.
    driver.plugin_dir(stack.root)
    # ...and so does this program's config (the earlier run wrote its own, without the new settings).
    stack.write_config(stack.config)
    assert before["result"] == "succeeded" and before["changes"].get("create", 0) > 20, before

    preview, events = stack.events(stack.stack.preview, diff=True)
    assert sorted(ops(events)) == CHANGES, stack.tail()
    up = stack.up()
    assert summary_without_same(up.summary.resource_changes or {}) == {
        "create": sum(1 for op, *_ in CHANGES if op == "create"),
        "update": sum(1 for op, *_ in CHANGES if op == "update")}, stack.tail()
    # And then it is settled.
    assert summary_without_same(stack.preview().change_summary) == {}, stack.tail()
