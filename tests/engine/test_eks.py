"""The eks stack's Kubernetes layer for real: the Pulumi engine deploys it (vLLM on NVIDIA GPU
nodes, the device plugin chart) onto a cluster shaped like its nodes, as `cluster.kind: existing`. The clouds' own cluster layer (EKS, GKE, their
node groups) stays on the mock engine (tests/program/test_cloud_stacks.py): no cloud answers here.

eks also walks what a user changes on a vLLM server: its cache size (the StatefulSet's claim
template is immutable: the server is replaced, what that keeps and drops is checked) and destroy
(the cache claims go with their server)."""

from __future__ import annotations

import copy

import pytest
from pulumi import automation as auto

from tests.engine.conftest import deployed
from tests.engine.lifecycle import live_names, ops, settled_pods, summary_without_same

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def eks(tmp_path_factory, charts_dir):
    yield from deployed(tmp_path_factory, charts_dir, "eks")


def test_eks_up_puts_vllm_on_a_gpu_the_device_plugin_advertises(eks):
    w, stack = eks
    up = stack.up()
    assert up.summary.result == "succeeded", stack.tail()
    assert up.outputs["modelAliases"].value == ["qwen"]
    pods = settled_pods(w, "models", "qwen-")
    gpu_nodes = {n.name for n in w.nodes if n.pool == "gpu"}
    assert pods and all(p.spec.node_name in gpu_nodes for p in pods), [p.spec.node_name for p in pods]
    assert all(p.spec.containers[0].resources.limits.get("nvidia.com/gpu") == "1" for p in pods)
    claims = live_names(w)["claims"]
    assert any(c.startswith("models/") for c in claims), claims
    assert summary_without_same(stack.preview().change_summary) == {}, stack.tail()


def test_eks_a_new_cache_size_fails_preview_and_up_renews_the_server_and_its_claims(eks):
    """The claim templates are immutable. The provider plans a replacement, but its preview's dry
    run of the new StatefulSet meets the live one of the same name and fails with the API
    server's refusal; `up` without a preview (`--skip-preview`, as the Automation API runs it)
    deletes the old server first (fixed name), its claims with it, and makes both anew."""
    w, stack = eks
    before = {c.metadata.uid for c in w.cp.core.list_namespaced_persistent_volume_claim("models").items}
    cfg = copy.deepcopy(stack.config)
    cfg["models"][0]["cacheSize"] = "60Gi"
    stack.write_config(cfg)
    with pytest.raises(auto.CommandError, match="updates to statefulset spec for fields other than"):
        stack.preview()
    up, events = stack.events(stack.up)
    assert up.summary.result == "succeeded", stack.tail()
    replaced = {t for o, t, _ in ops(events) if o in ("replace", "delete-replaced", "create-replacement")}
    assert replaced == {"kubernetes:apps/v1:StatefulSet"}, ops(events)
    claims = [c for c in w.cp.core.list_namespaced_persistent_volume_claim("models").items
              if not c.metadata.deletion_timestamp]
    assert claims and all(c.spec.resources.requests["storage"] == "60Gi" for c in claims), \
        [(c.metadata.name, c.spec.resources.requests) for c in claims]
    assert before and before.isdisjoint(c.metadata.uid for c in claims), "the old claims were kept"
    assert summary_without_same(stack.preview().change_summary) == {}, stack.tail()


POOL = {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": "qwen", "namespace": "models"}}
PICKER = "qwen-endpoint-picker"


def _model_rule(w) -> dict:
    route = w.cp.get({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                      "metadata": {"name": "llm-routes", "namespace": "istio-ingress"}})
    (rule,) = [r for r in route["spec"]["rules"] if r.get("name") == "model-qwen"]
    return rule


def test_eks_a_second_replica_is_balanced_by_an_inference_pool(eks):
    """Two replicas: the model goes behind an InferencePool whose endpoint picker runs off the GPU
    nodes; the pool selects exactly the two servers and the gateway's rule for the model sends to
    it. Back to one: the pool and its picker go, the rule sends to the Service again. Nothing is
    replaced either way."""
    w, stack = eks
    cfg = copy.deepcopy(stack.config)
    cfg["models"][0]["replicas"] = 2
    stack.write_config(cfg)
    up, events = stack.events(stack.up)
    assert up.summary.result == "succeeded", stack.tail()
    assert not [s for s in ops(events) if s[0] not in ("create", "update")], ops(events)
    pods = settled_pods(w, "models", "qwen-")
    servers = [p for p in pods if p.metadata.labels.get("app.kubernetes.io/component") == "model-server"]
    pickers = [p for p in pods if p.metadata.name.startswith(PICKER)]
    gpu_nodes = {n.name for n in w.nodes if n.pool == "gpu"}
    assert len(servers) == 2 and all(p.spec.node_name in gpu_nodes for p in servers), servers
    assert len(pickers) == 1 and pickers[0].spec.node_name not in gpu_nodes, pickers
    assert pickers[0].spec.service_account_name == "endpoint-picker"
    pool = w.cp.get(POOL)
    selector = ",".join(f"{k}={v}" for k, v in pool["spec"]["selector"]["matchLabels"].items())
    selected = {p.metadata.name for p in w.cp.core.list_namespaced_pod("models", label_selector=selector).items}
    assert selected == {p.metadata.name for p in servers}, selected
    assert pool["spec"]["endpointPickerRef"]["name"] == PICKER
    assert w.cp.core.read_namespaced_service(PICKER, "models").spec.ports[0].port == 9002
    (ref,) = _model_rule(w)["backendRefs"]
    assert {k: ref[k] for k in ("group", "kind", "name", "namespace")} == {
        "group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "qwen", "namespace": "models"}
    assert summary_without_same(stack.preview().change_summary) == {}, stack.tail()

    cfg["models"][0]["replicas"] = 1
    stack.write_config(cfg)
    up, events = stack.events(stack.up)
    assert up.summary.result == "succeeded", stack.tail()
    assert not [s for s in ops(events) if s[0] in ("replace", "create-replacement")], ops(events)
    assert not w.cp.exists(POOL)
    assert _model_rule(w)["backendRefs"][0]["kind"] == "Service"
    assert summary_without_same(stack.preview().change_summary) == {}, stack.tail()


def test_eks_destroy_takes_the_caches_with_the_servers(eks):
    w, stack = eks
    assert stack.destroy().summary.result == "succeeded", stack.tail()
    left = live_names(w)
    assert not {c for c in left["claims"] if c.startswith("models/")}, left["claims"]
    assert "models" not in left["namespaces"]
