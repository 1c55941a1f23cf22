"""The policy pack against what each stack registers (everything passes) and against
deliberately bad resources (each rule fires, with a message that says what to do)."""

import copy
import runpy
import sys

import pulumi_policy
import pytest

from tests.conftest import recording
from tools import mock_engine as harness

sys.path.insert(0, str(harness.PROJECT_DIR / "policy"))
import rules  # noqa: E402


def violations(check, resource_type, props, urn="urn:pulumi:local::llm-platform::t::n"):
    found = []
    check(resource_type, props, lambda message, urn=None: found.append(message), urn=urn, config={})
    return found


def recorded(rec):
    # The engine hands policies plain values: secrets arrive decrypted.
    return [(r, harness.reveal(r.inputs)) for r in rec.registrations if r.custom]


@pytest.fixture(scope="module", params=harness.STACKS)
def stack(request):
    return harness.run(request.param)


def test_every_stack_passes_every_rule(stack):
    checked = 0
    for reg, props in recorded(stack):
        for name, (check, _) in rules.RESOURCE_RULES.items():
            assert violations(check, reg.type, props, reg.urn) == [], f"{name} on {reg.type} {reg.name}"
            checked += 1
    assert checked > 100
    found = []
    rules.STACK_RULES["model-namespaces-injected"][0](
        [(reg.type, props) for reg, props in recorded(stack)], found.append)
    assert found == []


@pytest.fixture(scope="module")
def local_server():
    rec = recording("local-pods")
    reg = rec.one("kubernetes:apps/v1:Deployment", "model-tinyllama-deployment")
    return reg.type, harness.reveal(reg.inputs), rec


def _container(props):
    return props["spec"]["template"]["spec"]["containers"][0]


def test_missing_limits_fire(local_server):
    type_, props, _ = local_server
    bad = copy.deepcopy(props)
    del _container(bad)["resources"]["limits"]["memory"]
    assert violations(rules.requires_resources, type_, bad) == [
        "container 'server' has no limits.memory; set CPU and memory requests and limits"]


@pytest.mark.parametrize("image", ["quay.io/ramalama/ramalama:latest", "quay.io/ramalama/ramalama",
                                   "localhost:5000/ramalama"])
def test_unpinned_images_fire(local_server, image):
    type_, props, _ = local_server
    bad = copy.deepcopy(props)
    _container(bad)["image"] = image
    assert violations(rules.pinned_images, type_, bad) == [
        f"container 'server' uses image '{image}', which is not pinned; use a version tag or digest"]


def test_digest_pinned_image_passes(local_server):
    type_, props, _ = local_server
    ok = copy.deepcopy(props)
    _container(ok)["image"] = "quay.io/ramalama/ramalama@sha256:" + "a" * 64
    assert violations(rules.pinned_images, type_, ok) == []


def test_model_server_without_the_stacks_accelerator_fires(local_server):
    type_, props, _ = local_server
    bad = copy.deepcopy(props)
    for kind in ("limits", "requests"):
        _container(bad)["resources"][kind].pop("squat.ai/dri")
    assert violations(rules.model_server_accelerator, type_, bad) == [
        "model server container 'server' asks for no accelerator; stack 'local' serves on ['squat.ai/dri']"]
    wrong = copy.deepcopy(props)
    _container(wrong)["resources"]["limits"]["nvidia.com/gpu"] = "1"
    assert "which stack 'local' does not have" in violations(rules.model_server_accelerator, type_, wrong)[0]
    # On eks the same pod would ask for the wrong thing.
    assert violations(rules.model_server_accelerator, type_, props, urn="urn:pulumi:eks::llm-platform::t::n")


def test_plaintext_credentials_fire(local_server):
    type_, props, rec = local_server
    bad = copy.deepcopy(props)
    _container(bad)["env"] = [{"name": "LLAMA_API_KEY", "value": "sk-123"}]
    assert violations(rules.no_plaintext_credentials, type_, bad) == [
        "container 'server' sets LLAMA_API_KEY in plain text; read it from a Secret (valueFrom.secretKeyRef)"]
    ok = copy.deepcopy(props)
    _container(ok)["env"] = [{"name": "LLAMA_API_KEY", "valueFrom": {"secretKeyRef": {"name": "k", "key": "k"}}}]
    assert violations(rules.no_plaintext_credentials, type_, ok) == []
    app = harness.reveal(rec.one("kubernetes:argoproj.io/v1alpha1:Application").inputs)
    app["spec"]["source"]["helm"]["valuesObject"]["extraEnvVars"] = [{"name": "OPENAI_API_KEY", "value": "0p3n"}]
    assert violations(rules.no_plaintext_credentials, "kubernetes:argoproj.io/v1alpha1:Application", app) == [
        "chart values set OPENAI_API_KEY in plain text; reference a Secret instead"]


def test_load_balancers_outside_the_mesh_ingress_fire(local_server):
    _, _, rec = local_server
    svc = harness.reveal(rec.one("kubernetes:core/v1:Service", "model-tinyllama-service").inputs)
    svc["spec"]["type"] = "LoadBalancer"
    assert violations(rules.load_balancers_only_at_mesh_ingress, "kubernetes:core/v1:Service", svc) == [
        "Service of type LoadBalancer in namespace 'models'; expose it through the mesh ingress instead"]
    argocd = harness.reveal(rec.one("kubernetes:helm.sh/v3:Release", "gitops-argocd").inputs)
    argocd["values"]["service"] = {"type": "LoadBalancer"}
    assert violations(rules.load_balancers_only_at_mesh_ingress, "kubernetes:helm.sh/v3:Release", argocd) == [
        "chart 'argo-cd' asks for a LoadBalancer Service; only the mesh ingress may"]


@pytest.mark.parametrize("version", [None, "", "^1.30", "1.30.x", "latest"])
def test_unpinned_charts_fire(local_server, version):
    _, _, rec = local_server
    release = harness.reveal(rec.one("kubernetes:helm.sh/v3:Release", "mesh-istiod").inputs)
    release["version"] = version
    assert violations(rules.pinned_charts, "kubernetes:helm.sh/v3:Release", release) == [
        f"chart version {version!r} is not pinned; set an exact version such as 1.2.3"]


def test_model_server_without_probes_is_advised(local_server):
    type_, props, _ = local_server
    bad = copy.deepcopy(props)
    del _container(bad)["startupProbe"]
    assert violations(rules.model_server_probes, type_, bad) == [
        "model server container 'server' has no startupProbe"]


def test_model_namespace_without_injection_fires(local_server):
    _, _, rec = local_server
    resources = [(r.type, harness.reveal(r.inputs)) for r in rec.registrations if r.custom]
    for type_, props in resources:
        if type_ == "kubernetes:core/v1:Namespace" and props["metadata"]["name"] == "models":
            props["metadata"]["labels"] = {}
    found = []
    rules.model_namespaces_injected(resources, found.append)
    assert found == ["namespace 'models' runs model server 'tinyllama' without sidecar injection "
                     "(label istio-injection=enabled)"]


def test_pack_wires_every_rule_with_its_enforcement_level(monkeypatch):
    packs = []
    monkeypatch.setattr(pulumi_policy, "PolicyPack", lambda **kw: packs.append(kw))
    runpy.run_path(str(harness.PROJECT_DIR / "policy" / "__main__.py"))
    (pack,) = packs
    levels = {p.name: p.enforcement_level for p in pack["policies"]}
    assert set(levels) == set(rules.RESOURCE_RULES) | set(rules.STACK_RULES)
    assert levels["model-server-probes"] == pulumi_policy.EnforcementLevel.ADVISORY
    assert levels["images-pinned"] == pulumi_policy.EnforcementLevel.MANDATORY
    # The wrapper hands the engine's arguments to the rule.
    policy = next(p for p in pack["policies"] if p.name == "images-pinned")
    found = []
    args = pulumi_policy.ResourceValidationArgs(
        "kubernetes:core/v1:Pod", {"spec": {"containers": [{"name": "c", "image": "busybox"}]}},
        "urn:pulumi:local::llm-platform::kubernetes:core/v1:Pod::p", "p",
        pulumi_policy.PolicyResourceOptions(False, [], None, [], pulumi_policy.PolicyCustomTimeouts(0, 0, 0), []),
        None, {})
    policy.validate(args, lambda message, urn=None: found.append(message))
    assert found and "busybox" in found[0]
