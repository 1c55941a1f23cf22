"""An existing stack upgraded to this version of the program: `pulumi up` with the program as it
was at an earlier commit, then `preview` and `up` with this one on the same state and cluster.
Nothing is replaced, and nothing deleted but what the newer release supersedes (a changed parent
or name would show as a create and a delete, and for a fixed Kubernetes name fail with
AlreadyExists); what changes is exactly what the newer release adds, each in place.

The earlier program runs in a process of its own (its modules would clash with this one's), from
the commit's tree as `git archive` writes it. BASELINE is the last commit before the edge moved
to the Gateway API; move it forward to the newest release users run, and CHANGES
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
BASELINE = "73dee36665fd4aa0df42f9eb45db818ab75f1f6f"
# What the upgrade from BASELINE does, beside `same`: the edge moves from Istio's own Gateway and
# VirtualService to the Gateway API. Its CRDs and the Inference Extension's are created, istiod is
# told to serve InferencePools and the ingress's pods carry the Gateway's name (both roll); the new
# Gateway, its HTTPRoute and the ReferenceGrants of the namespaces it routes to are created; the key
# check's filters move first in the chain; and only then, last of the update, the old Gateway and
# VirtualService go (until then both configure the same listener, the old routes first).
GATEWAY_API_CRDS = ("backendtlspolicies", "gatewayclasses", "gateways", "grpcroutes", "httproutes", "listenersets",
                    "referencegrants", "tcproutes", "tlsroutes", "udproutes")
INFERENCE_CRDS = ("inferencepools.inference.networking.k8s.io", "inferenceobjectives.inference.networking.x-k8s.io",
                  "inferencemodelrewrites.inference.networking.x-k8s.io")
CHANGES = sorted([
    ("create", "llm-platform:index:GatewayApi", "mesh-gateway-api"),
    ("create", "kubernetes:yaml/v2:ConfigGroup", "mesh-gateway-api-crds"),
    # The ConfigGroup is a component the Kubernetes provider builds, through the engine's own provider.
    ("create", "pulumi:providers:pulumi", "default"),
    *[("create", "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition",
       f"mesh-gateway-api-crds:{kind}.gateway.networking.k8s.io") for kind in GATEWAY_API_CRDS],
    *[("create", "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition", f"mesh-gateway-api-crds:{name}")
      for name in INFERENCE_CRDS],
    ("update", "kubernetes:helm.sh/v3:Release", "mesh-istiod"),
    ("update", "kubernetes:helm.sh/v3:Release", "mesh-gateway"),
    ("create", "kubernetes:gateway.networking.k8s.io/v1:Gateway", "gateway-gateway"),
    ("create", "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", "gateway-routes"),
    *[("create", "kubernetes:gateway.networking.k8s.io/v1:ReferenceGrant", f"gateway-routes-to-{ns}")
      for ns in ("front-door", "models", "monitoring", "open-webui")],
    ("update", "kubernetes:networking.istio.io/v1alpha3:EnvoyFilter", "model-routing-ingress-filters"),
    # The front door's custom auth learnt the teams' keys: its file changes, its pods roll once.
    ("update", "kubernetes:core/v1:ConfigMap", "front-door-config"),
    ("update", "kubernetes:apps/v1:Deployment", "front-door-deployment"),
    ("delete", "kubernetes:networking.istio.io/v1:Gateway", "gateway-gateway"),
    ("delete", "kubernetes:networking.istio.io/v1:VirtualService", "gateway-routes"),
])
# Settings of this release the baseline's config check does not know: left out of its run.
NEW_SETTINGS: dict[str, tuple[str, ...]] = {}

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
    up, up_events = stack.events(stack.up)
    steps = ops(up_events)
    # The old routes go only after the new ones are in place: the listener is never without routes.
    new_routes = steps.index(("create", "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", "gateway-routes"))
    assert all(i > new_routes for i, step in enumerate(steps) if step[0] == "delete"), steps
    # What an operator checks: the gateway's routes are the Gateway API's, the old ones gone.
    where = {"name": "llm-routes", "namespace": "istio-ingress"}
    assert w.cp.exists({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": where})
    assert not w.cp.exists({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": where})
    # (The summary leaves out providers.)
    assert summary_without_same(up.summary.resource_changes or {}) == {
        "create": sum(1 for op, kind, _ in CHANGES if op == "create" and not kind.startswith("pulumi:providers:")),
        "update": sum(1 for op, *_ in CHANGES if op == "update"),
        "delete": sum(1 for op, *_ in CHANGES if op == "delete")}, stack.tail()
    # And then it is settled.
    assert summary_without_same(stack.preview().change_summary) == {}, stack.tail()
