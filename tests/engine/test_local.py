"""`pulumi up -s local` for real: the Pulumi engine and the Kubernetes provider deploy the local
stack's Kubernetes layer (llama.cpp in router mode on a /dev/dri node) onto a control plane whose
pods run; then what a user does next: a second preview, refresh, a key rotation, a model added
and removed, a bad config, destroy. The tests run in file order on one stack."""

from __future__ import annotations

import copy
import time

import pytest
import yaml
from kubernetes.client import ApiextensionsV1Api
from kubernetes.client.exceptions import ApiException
from pulumi import automation as auto

from tests import kube
from tests.engine.conftest import deployed
from tests.engine.lifecycle import config_error, live_names, ops, settled_pods, summary_without_same

pytestmark = pytest.mark.engine
ROUTER = "llama-router"
# Namespaces the local stack's Helm releases create (createNamespace): Istio's two and Argo CD's;
# kube-prometheus-stack goes into `monitoring`, which the program creates itself.
HELM_NAMESPACES = {"istio-system", "istio-ingress", "argocd",
                   # ...and the Pulumi Kubernetes Operator's, left by its test.
                   "pulumi-kubernetes-operator"}
NEW_MODEL = {"name": "smollm", "file": "smollm2-135m-instruct-q8_0.gguf",
             "hfRepo": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "replicas": 1}


@pytest.fixture(scope="module")
def env(tmp_path_factory, charts_dir):
    yield from deployed(tmp_path_factory, charts_dir, "local")


def test_up_creates_the_stack_and_its_outputs(env):
    w, stack = env
    preview = stack.preview()
    assert preview.change_summary.get("create", 0) > 20, stack.tail()
    assert set(preview.change_summary) == {"create"}, preview.change_summary
    up = stack.up()
    assert up.summary.result == "succeeded", stack.tail()
    out = {k: v.value for k, v in up.outputs.items()}
    assert out["modelAliases"] == ["tinyllama"]
    assert out["apiBaseUrl"].endswith("/v1") and out["uiUrl"]
    assert up.outputs["apiKey"].secret and out["apiKey"].startswith("sk-")
    # What an operator checks: the router runs on the node whose /dev/dri the plugin advertises.
    router = settled_pods(w, "models", ROUTER)
    assert [p.spec.node_name for p in router] == ["llm-platform"]
    limits = router[0].spec.containers[0].resources.limits
    assert limits.get("squat.ai/dri") == "1"


def test_a_second_preview_changes_nothing_and_refresh_finds_no_drift(env):
    _, stack = env
    assert summary_without_same(stack.preview().change_summary) == {}, stack.tail()
    refresh = stack.refresh()
    assert summary_without_same(refresh.summary.resource_changes or {}) == {}, stack.tail()
    assert summary_without_same(stack.preview().change_summary) == {}, stack.tail()


def test_rotating_the_api_key_rolls_what_holds_it_and_replaces_nothing(env):
    """The client key is the front door's master key and one the model servers accept (the
    ingress passes it on with the requests it routes to them straight): both roll onto it, and
    the ingress's key check takes the new key's digest."""
    w, stack = env
    router = {p.metadata.name for p in settled_pods(w, "models", ROUTER)}
    front = {p.metadata.name for p in settled_pods(w, "front-door", "litellm")}
    stack.stack.set_config("llm-platform:apiKey", auto.ConfigValue("sk-" + "r0tated" * 4, secret=True))
    preview, events = stack.events(stack.preview)
    steps = ops(events)
    # The generated key is dropped for the one set; every object that holds a key is updated in
    # place (a Secret replaced under its fixed name would be deleted first, and pods mounting it
    # could not start meanwhile).
    assert [s for s in steps if s[0] == "delete"] == [
        ("delete", "random:index/randomPassword:RandomPassword", "api-keys-client")], steps
    assert not [s for s in steps if s[0] in ("replace", "create-replacement")], steps
    assert {(t, n) for o, t, n in steps if o == "update"} == {
        ("kubernetes:core/v1:Secret", "front-door-keys"),
        ("kubernetes:apps/v1:Deployment", "front-door-deployment"),
        ("kubernetes:core/v1:Secret", "llama-router-api-keys"),
        ("kubernetes:apps/v1:Deployment", "llama-router-deployment"),
        ("kubernetes:networking.istio.io/v1alpha3:EnvoyFilter", "model-routing-ingress-filters")}, steps
    up = stack.up()
    assert up.outputs["apiKey"].value == "sk-" + "r0tated" * 4
    assert front.isdisjoint(p.metadata.name for p in settled_pods(w, "front-door", "litellm")), \
        "the front door's pods did not roll onto the new key"
    assert router.isdisjoint(p.metadata.name for p in settled_pods(w, "models", ROUTER)), \
        "the model servers did not roll onto the new key"


def test_adding_then_removing_a_model_touches_only_what_routes_to_it(env):
    w, stack = env
    router = {p.metadata.name for p in settled_pods(w, "models", ROUTER)}
    cfg = copy.deepcopy(stack.config)
    cfg["models"] = [*cfg["models"], NEW_MODEL]
    stack.write_config(cfg)
    preview, events = stack.events(stack.preview)
    steps = ops(events)
    assert not [s for s in steps if s[0] in ("replace", "create-replacement", "delete")], steps
    # llama-server reads its presets only at start: the router must roll to serve the new alias.
    assert ("update", "kubernetes:apps/v1:Deployment", "llama-router-deployment") in steps, steps
    up = stack.up()
    assert router.isdisjoint(p.metadata.name for p in settled_pods(w, "models", ROUTER))
    assert sorted(up.outputs["modelAliases"].value) == ["smollm", "tinyllama"]
    presets = w.cp.core.read_namespaced_config_map("llama-router-presets", "models").data
    assert any("[smollm]" in v for v in presets.values())

    cfg["models"] = cfg["models"][:1]
    stack.write_config(cfg)
    up = stack.up()
    assert up.outputs["modelAliases"].value == ["tinyllama"]
    presets = w.cp.core.read_namespaced_config_map("llama-router-presets", "models").data
    assert not any("[smollm]" in v for v in presets.values())
    assert summary_without_same(stack.preview().change_summary) == {}, stack.tail()


TEAM = "research"
TEAM_NS = f"team-{TEAM}"
TEAM_MODEL = {"file": "smollm2-135m-instruct-q8_0.gguf",
              "resources": {"cpu": "500m", "cpuLimit": "1", "memory": "1Gi", "memoryLimit": "2Gi"}}


def test_a_team_serves_its_model_by_a_file_and_nothing_else_moves(env):
    """The walk of docs/teams.md: the stack file names the team; the team commits a file in its
    folder; preview shows that model's objects and what routes to it, nothing else; `up` runs
    it in the team's namespace under its quota; a typo and a model over the quota fail in one
    line naming the file; removing the file takes only its objects."""
    w, stack = env
    good = copy.deepcopy(stack.config)
    # Beside the project file. The CLI runs a program in its project's folder, where the default
    # `models` resolves; an inline program runs in the caller's, so the path is given whole here.
    folder = stack.root / "work" / "models" / TEAM
    cfg = {**copy.deepcopy(good), "teams": {TEAM: {"accelerators": 1, "memory": "4Gi"}},
           "teamModelsDir": str(folder.parent)}
    stack.write_config(cfg)
    up = stack.up()
    assert up.summary.result == "succeeded", stack.tail()
    assert TEAM in up.outputs["teamApiKeys"].value and up.outputs["teamApiKeys"].secret

    folder.mkdir(parents=True)
    (folder / "smollm.yaml").write_text(yaml.safe_dump(TEAM_MODEL))
    preview, events = stack.events(stack.preview)
    steps = ops(events)
    assert not [s for s in steps if s[0] in ("replace", "create-replacement", "delete")], steps
    created = {(t, n) for o, t, n in steps if o == "create"}
    assert created and all("smollm" in n for _, n in created), created
    # What lists and routes models (the front door's model list, the key that opens it, its pods).
    assert {(t, n) for o, t, n in steps if o == "update"} <= {
        ("kubernetes:core/v1:ConfigMap", "front-door-config"),
        ("kubernetes:core/v1:Secret", "front-door-keys"),
        ("kubernetes:apps/v1:Deployment", "front-door-deployment"),
        ("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", "gateway-routes"),
        ("kubernetes:networking.istio.io/v1alpha3:EnvoyFilter", "model-routing-ingress-filters")}, steps
    up = stack.up()
    assert up.summary.result == "succeeded", stack.tail()
    assert sorted(up.outputs["modelAliases"].value) == ["smollm", "tinyllama"]
    (pod,) = settled_pods(w, TEAM_NS, "smollm")
    assert pod.spec.containers[0].resources.limits["squat.ai/dri"] == "1"
    # The API server counts it against the team's quota...
    quota = kube.until(lambda: (q := w.cp.core.read_namespaced_resource_quota("team-quota", TEAM_NS))
                       .status.used and q.status.used.get("requests.squat.ai/dri") == "1" and q, 60, "quota used")
    assert quota.status.hard == {"requests.squat.ai/dri": "1", "limits.memory": "4Gi"}
    # ...and refuses a pod beyond it, whoever creates it.
    with pytest.raises(ApiException) as refused:
        w.cp.core.create_namespaced_pod(TEAM_NS, {
            "metadata": {"name": "one-too-many"},
            # Admitted by the namespace's Pod Security (restricted): refused by the quota alone.
            "spec": {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "c", "image": "busybox:1.37", "securityContext": {
                         "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                         "resources": {"limits": {"squat.ai/dri": "1", "memory": "1Gi"},
                                       "requests": {"squat.ai/dri": "1"}}}]}})
    assert refused.value.status == 403 and "exceeded quota" in refused.value.body

    # A typo, and a model over the quota: one line naming the file, before anything changes.
    (folder / "smollm.yaml").write_text(yaml.safe_dump({**TEAM_MODEL, "replica": 2}))
    assert config_error(stack.preview, "smollm.yaml") == \
        f"{folder}/smollm.yaml: replica: unknown key (check the spelling against docs/configuration.md)"
    (folder / "smollm.yaml").write_text(yaml.safe_dump({**TEAM_MODEL, "replicas": 2}))
    assert config_error(stack.preview, "smollm.yaml").startswith(
        f"{folder}/smollm.yaml: replicas: team research's models need 2 vulkan units at their most replicas, "
        "its quota is 1")

    # The file goes: only its objects go with it.
    (folder / "smollm.yaml").unlink()
    preview, events = stack.events(stack.preview)
    steps = ops(events)
    deleted = {(t, n) for o, t, n in steps if o == "delete"}
    assert deleted and all("smollm" in n for _, n in deleted), deleted
    assert not [s for s in steps if s[0] in ("create", "replace", "create-replacement")], steps
    up = stack.up()
    assert up.outputs["modelAliases"].value == ["tinyllama"]
    assert not [p for p in w.cp.pods(TEAM_NS) if p.metadata.name.startswith("smollm")
                and not p.metadata.deletion_timestamp]

    stack.write_config(good)
    up = stack.up()
    assert up.summary.result == "succeeded", stack.tail()
    assert summary_without_same(stack.preview().change_summary) == {}, stack.tail()


OPERATOR = {"enabled": True, "repository": "https://github.com/acme/llm-platform.git", "backend": "s3://acme-state",
            "passphrase": {"name": "pulumi-passphrase", "key": "passphrase"}}


def test_the_cluster_pulls_once_the_operator_is_on_and_nothing_else_moves(env):
    """The operator's release (its CRDs), its workspace's identity, then a Stack of this stack that
    the API server admits against those CRDs; nothing else changes. Turned off, they go (the Stack
    first, while its CRD is there) and the platform stays as it was."""
    w, stack = env
    good = copy.deepcopy(stack.config)
    stack.write_config({**copy.deepcopy(good), "gitops": {**good.get("gitops", {}), "pulumiOperator": OPERATOR}})
    preview, events = stack.events(stack.preview)
    steps = ops(events)
    assert steps and all(o == "create" and n.startswith("pulumi-operator") for o, _, n in steps), steps
    up = stack.up()
    assert up.summary.result == "succeeded", stack.tail()
    live = w.cp.get({"apiVersion": "pulumi.com/v1", "kind": "Stack",
                     "metadata": {"name": "local", "namespace": "pulumi-kubernetes-operator"}})["spec"]
    assert live["stack"] == "local" and live["projectRepo"] == OPERATOR["repository"]
    assert settled_pods(w, "pulumi-kubernetes-operator", "pulumi-kubernetes-operator")

    stack.write_config(good)
    preview, events = stack.events(stack.preview)
    steps = ops(events)
    assert steps and all(o == "delete" and n.startswith("pulumi-operator") for o, _, n in steps), steps
    up = stack.up()
    assert up.summary.result == "succeeded", stack.tail()
    assert not w.cp.exists({"apiVersion": "pulumi.com/v1", "kind": "Stack",
                            "metadata": {"name": "local", "namespace": "pulumi-kubernetes-operator"}})
    assert summary_without_same(stack.preview().change_summary) == {}, stack.tail()


def test_a_bad_config_fails_preview_in_one_line_and_changes_nothing(env):
    w, stack = env
    good = copy.deepcopy(stack.config)
    bad = copy.deepcopy(good)
    bad["models"][0]["replicas"] = -1
    stack.write_config(bad)
    try:
        message = config_error(stack.preview)
    finally:
        stack.write_config(good)
    assert message == ("Pulumi.local.yaml: llm-platform:models[0].replicas: Input should be greater than "
                       "or equal to 0, got -1") or "models[0].replicas" in message, message
    assert "\n" not in message


def test_destroy_removes_the_stack(env):
    """Everything the program created goes; the namespaces Helm created for its releases stay,
    empty (`helm uninstall` never deletes a namespace), as docs/operations.md says, and so do the
    Gateway API's and the Inference Extension's CRDs (deleting one deletes every object of its
    kind in the cluster, other owners' too)."""
    w, stack = env
    system = {"default", "kube-node-lease", "kube-public", "kube-system"}
    assert "models" in live_names(w)["namespaces"]
    result = stack.destroy()
    assert result.summary.result == "succeeded", stack.tail()
    left = live_names(w)["namespaces"] - system
    assert left == HELM_NAMESPACES, left
    # A hook Job's pods go with the Job by the garbage collector, which takes its time.
    deadline = time.monotonic() + 60
    while (pods := [p.metadata.name for p in w.cp.pods() if p.metadata.namespace in left]) and time.monotonic() < deadline:
        time.sleep(1)
    assert not pods
    assert not stack.stack.export_stack().deployment.get("resources"), "state still holds resources"
    crds = {c.metadata.name for c in ApiextensionsV1Api(w.cp.api).list_custom_resource_definition().items}
    assert {"httproutes.gateway.networking.k8s.io", "inferencepools.inference.networking.k8s.io"} <= crds, crds
