"""Istio, Argo CD and Gateway API objects the program creates validate against their published
schemas (the @kubernetes-models npm packages in tests/crd)."""

import json
import shutil
import subprocess

import pytest

from tools import mock_engine as harness
from tests.program.test_schemas import CUSTOM_GROUPS, manifest

CRD_DIR = harness.PROJECT_DIR / "tests" / "crd"


def validate(objects: list[dict]) -> list:
    node = shutil.which("node")
    if node is None or not (CRD_DIR / "node_modules").is_dir():
        pytest.fail("custom resource schemas need Node.js and `npm ci --prefix tests/crd` (the README's test command)")
    out = subprocess.run([node, "validate.mjs"], cwd=CRD_DIR, input=json.dumps(objects),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


# No published models for the Prometheus operator's kinds: ServiceMonitors and PodMonitors are
# applied against the chart's own CRDs on the real control plane instead
# (tests/parts/test_cluster.py).
APPLIED_ONLY = ("monitoring.coreos.com",)


def custom_resources(rec) -> list[dict]:
    return [manifest(r.inputs) for r in rec.kubernetes_objects()
            if r.inputs["apiVersion"].split("/")[0] in CUSTOM_GROUPS
            and r.inputs["apiVersion"].split("/")[0] not in APPLIED_ONLY]


@pytest.mark.parametrize("stack", harness.STACKS)
def test_custom_resources_match_their_schemas(stack):
    objects = custom_resources(harness.run(stack))
    assert {o["kind"] for o in objects} >= {"Gateway", "HTTPRoute", "ReferenceGrant", "Application", "EnvoyFilter"}
    assert validate(objects) == [None] * len(objects)


def test_bad_fields_fail(local):
    objects = {o["kind"]: o for o in custom_resources(local)}
    route = json.loads(json.dumps(objects["HTTPRoute"]))
    route["spec"]["rules"][0]["backendRefs"][0]["port"] = "eighty"
    hosts = json.loads(json.dumps(objects["HTTPRoute"]))
    hosts["spec"]["parentRefs"] = "llm-gateway"
    app = json.loads(json.dumps(objects["Application"]))
    del app["spec"]["destination"]
    errors = validate([route, hosts, app])
    assert "port must be integer" in errors[0], errors[0]
    assert "parentRefs must be array" in errors[1], errors[1]
    assert "destination" in errors[2]
