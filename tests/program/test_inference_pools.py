"""Which models the program puts behind an inference pool, and what it renders for one: the pool,
its endpoint picker and what the picker may read, the gateway's rule and the grant that lets it
name the pool. The picker's choice itself runs for real in tests/parts/test_pool_path.py, and the
objects on a control plane in tests/engine/test_eks.py."""

from __future__ import annotations

import json

import pytest

from components.edge import endpoint_picker as epp
from components.edge import inference_pool as pools
from tests import ingress_routes as ingress
from tests.conftest import mock_engine_model
from tools import mock_engine as harness

POOL = "kubernetes:inference.networking.k8s.io/v1:InferencePool"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"


def _eks(**model) -> harness.Recording:
    return harness.run("eks", {"llm-platform:models": [{**mock_engine_model("eks"), **model}]})


@pytest.fixture(scope="module")
def two():
    return _eks(replicas=2)


def test_a_vllm_model_of_two_replicas_is_a_pool_its_rule_sends_to(two):
    (pool,) = two.of_type(POOL)
    spec = pool.inputs["spec"]
    server = two.one("kubernetes:apps/v1:StatefulSet", "model-qwen-statefulset").inputs["spec"]
    # Exactly the model's servers: their pods' labels, their port.
    assert spec["selector"]["matchLabels"] == server["template"]["metadata"]["labels"]
    assert spec["targetPorts"] == [{"number": 8000}]
    assert spec["endpointPickerRef"]["name"] == pools.picker_name("qwen")
    assert ingress.rules(two)["model-qwen"]["backendRefs"] == [pools.pool_ref("qwen", "models")]
    grant = two.one("kubernetes:gateway.networking.k8s.io/v1:ReferenceGrant", "gateway-routes-to-models").inputs
    assert {"group": epp.POOL_API_GROUP, "kind": "InferencePool"} in grant["spec"]["to"]


def test_the_picker_runs_off_the_gpus_and_reads_only_what_it_needs(two):
    server = two.one("kubernetes:apps/v1:StatefulSet", "model-qwen-statefulset").inputs["spec"]
    picker = two.one(DEPLOYMENT, "inference-pools-qwen-picker").inputs["spec"]["template"]["spec"]
    assert picker["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    assert not picker.get("tolerations")
    (c,) = picker["containers"]
    assert c["image"] == epp.EPP_IMAGE
    assert c["args"] == epp.epp_args("qwen", "models", f"{pools.CONFIG_DIR}/{pools.CONFIG_FILE}")
    assert json.loads(two.one("kubernetes:core/v1:ConfigMap", "inference-pools-config").inputs["data"][pools.CONFIG_FILE]) \
        == json.loads(epp.plugins_config())
    role = two.one("kubernetes:rbac.authorization.k8s.io/v1:Role", "inference-pools-reader").inputs
    assert role["rules"] == epp.role_rules() and role["metadata"]["namespace"] == "models"
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in role["rules"])
    # The picker dials pod addresses, which its sidecar passes through unencrypted: the pool's
    # servers take plain text on their port, where the mesh admits a GET of /metrics and nothing
    # else without an identity; every other rule still names the identities it admits.
    rules = two.one("kubernetes:security.istio.io/v1:AuthorizationPolicy", "mesh-callers-models").inputs["spec"]["rules"]
    (plain,) = [r for r in rules if "from" not in r]
    assert plain["to"] == [{"operation": {"methods": ["GET"], "paths": ["/metrics"], "ports": ["8000"]}}]
    peer = two.one("kubernetes:security.istio.io/v1:PeerAuthentication", "inference-pools-qwen-plaintext-metrics").inputs
    assert peer["spec"]["selector"]["matchLabels"] == server["template"]["metadata"]["labels"]
    assert peer["spec"]["mtls"] == {"mode": "STRICT"} and peer["spec"]["portLevelMtls"] == {"8000": {"mode": "PERMISSIVE"}}
    # ...and the network: in to the servers on their port, out to them and to the API server.
    out = two.one(NETWORK_POLICY, "models-endpoint-pickers-out").inputs["spec"]
    assert out["podSelector"]["matchLabels"] == pools.PICKER_LABELS
    assert out["egress"][0]["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert {p["port"] for p in out["egress"][1]["ports"]} == {443, 6443}


@pytest.mark.parametrize("model", [{"replicas": 1},
                                   {"autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 2,
                                                    "scaleToZero": True}}],
                         ids=["one-replica", "scales-to-zero"])
def test_no_pool_where_it_cannot_help(model):
    """One replica has nothing to choose from; a model at zero is woken by the front door, which
    the ingress leaves it to."""
    base = {k: v for k, v in mock_engine_model("eks").items() if k != "replicas"}
    rec = harness.run("eks", {"llm-platform:models": [{**base, **model}]})
    assert not rec.of_type(POOL)
    assert not [r for r in rec.registrations if r.name.startswith("inference-pools")]
    assert not [r for r in rec.of_type(NETWORK_POLICY) if "endpoint-picker" in r.name]


def test_an_autoscaled_model_that_stays_up_is_a_pool():
    base = {k: v for k, v in mock_engine_model("eks").items() if k != "replicas"}
    rec = harness.run("eks", {"llm-platform:models": [
        {**base, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 2}}]})
    assert [r.inputs["metadata"]["name"] for r in rec.of_type(POOL)] == ["qwen"]


def test_llama_cpp_is_never_a_pool():
    rec = harness.run("local", {"llm-platform:llamaRouter": {"enabled": False},
                                "llm-platform:models": [{"name": "tiny", "file": "tiny.gguf", "replicas": 2}]})
    assert not rec.of_type(POOL)


def test_the_pool_comes_before_its_picker_and_the_rule_after_both(two):
    """The picker is ready only once it has read its pool, and `up` waits for its Deployment to be
    ready: the pool first (else neither would ever come), then the picker, then the rule."""
    pool = two.one(POOL, "inference-pools-qwen")
    picker = two.one(DEPLOYMENT, "inference-pools-qwen-picker")
    assert pool.urn in picker.dependencies
    assert picker.urn not in pool.dependencies
    route = two.one("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", "gateway-routes")
    assert picker.urn in route.dependencies
    liveness = picker.inputs["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    assert "grpc" not in liveness, "a picker waiting for its pool must not be restarted"
