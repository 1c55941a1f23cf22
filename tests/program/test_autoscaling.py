"""Pod autoscaling as an operator checks it after `up`: KEDA installed once, one ScaledObject per
autoscaled model server aimed at its workload and its own queue, the replica count left to KEDA,
scale to zero only where asked, and rollouts and budgets sized for the most replicas. (The wake-up
query evaluated by Prometheus's engine: tests/parts/test_autoscaling.py.)"""

from __future__ import annotations

import re

import jsonschema
import pytest

from components.serving.autoscaling import FRONT_DOOR_REQUESTS, KEDA_CHART_VERSION, QUEUE_METRIC
from components.platform.monitoring import PROMETHEUS_URL
from tests.conftest import PODS, need_charts
from tools import charts
from tools import mock_engine as harness

RELEASE = "kubernetes:helm.sh/v3:Release"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"


def model(stack: str, **keys) -> dict:
    base = {k: v for k, v in harness.stack_config(stack)["llm-platform:models"][0].items() if k != "replicas"}
    return {**base, **keys}


def autoscaled(stack: str, second: bool = False, **auto) -> harness.Recording:
    models = [model(stack, autoscaling={"enabled": True, **auto})]
    if second:  # a second model whose name starts with the first's
        models.append(model(stack, name=f"{models[0]['name']}-large"))
    # Local autoscales one pod per model (router mode, as shipped there, is one fixed pod).
    return harness.run(stack, {"llm-platform:models": models, **(PODS if stack == "local" else {})})


def scaled_objects(rec) -> dict[str, dict]:
    return {r.inputs["metadata"]["name"]: harness.reveal(r.inputs) for r in rec.registrations
            if r.type.startswith("kubernetes:") and r.inputs.get("kind") == "ScaledObject"}


def trigger(obj: dict, name: str) -> dict:
    return next(t for t in obj["spec"]["triggers"] if t["name"] == name)


def selected_model(query: str) -> str:
    return re.search(r'model="([^"]+)"', query).group(1)


def model_label_of(rec, name: str) -> set[str]:
    """The `model` label the server's ServiceMonitor gives its series."""
    (spec,) = [harness.reveal(r.inputs["spec"]) for r in rec.of_type("kubernetes:monitoring.coreos.com/v1:ServiceMonitor")
               if r.inputs["metadata"]["name"] == f"model-{name}"]
    return {rl["replacement"] for ep in spec["endpoints"] for rl in ep.get("relabelings", [])
            if rl["targetLabel"] == "model"}


@pytest.mark.parametrize("stack, kind, runtime, most", [
    ("local", "Deployment", "llama-cpp", 2),
    # The eks pool holds 2 GPUs: one for each model.
    ("eks", "StatefulSet", "vllm", 1),
])
def test_each_server_scales_on_its_own_queue(stack, kind, runtime, most):
    rec = autoscaled(stack, second=True, minReplicas=1, maxReplicas=most, targetQueueDepth=3)
    objs = scaled_objects(rec)
    (workload,) = [r for r in rec.model_servers() if "autoscaling" not in r.name and r.type.endswith(kind)
                   and "replicas" not in r.inputs["spec"]]
    name = workload.inputs["metadata"]["name"]
    assert set(objs) == {name}  # the second model is not autoscaled
    obj = objs[name]
    assert obj["metadata"]["namespace"] == workload.inputs["metadata"]["namespace"]
    assert obj["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": kind, "name": name}
    assert (obj["spec"]["minReplicaCount"], obj["spec"]["maxReplicaCount"]) == (1, most)
    queue = trigger(obj, "queue")
    assert queue["type"] == "prometheus" and queue["metricType"] == "AverageValue"
    assert queue["metadata"]["threshold"] == "3"
    assert queue["metadata"]["serverAddress"] == PROMETHEUS_URL
    query = queue["metadata"]["query"]
    assert query.startswith(f"sum({QUEUE_METRIC[runtime]}{{") and 'namespace="models"' in query
    # Exactly the series of this server's scrape, never the second model's ("<name>-large").
    assert model_label_of(rec, name) == {selected_model(query)} == {name}
    assert model_label_of(rec, f"{name}-large") == {f"{name}-large"}
    # Not at zero unless asked: no wake-up trigger, no cooldown to zero.
    assert [t["name"] for t in obj["spec"]["triggers"]] == ["queue"] and "cooldownPeriod" not in obj["spec"]
    # The other server keeps the replica count Pulumi sets.
    (fixed,) = [r for r in rec.model_servers() if r is not workload]
    assert fixed.inputs["spec"]["replicas"] == 1


def test_keda_is_installed_once_pinned_and_only_when_needed():
    rec = autoscaled("eks")
    (keda,) = [harness.reveal(r.inputs) for r in rec.of_type(RELEASE) if r.inputs["chart"] == "keda"]
    assert (keda["version"], keda["namespace"], keda["createNamespace"]) == (KEDA_CHART_VERSION, "keda", True)
    assert not [r for r in harness.run("eks").of_type(RELEASE) if r.inputs["chart"] == "keda"]
    assert not scaled_objects(harness.run("eks"))


def test_scale_to_zero_is_woken_by_the_front_door():
    obj = scaled_objects(autoscaled("eks", minReplicas=0, maxReplicas=2, scaleToZero=True,
                                    cooldownSeconds=900))["qwen"]
    assert obj["spec"]["minReplicaCount"] == 0 and obj["spec"]["cooldownPeriod"] == 900
    demand = trigger(obj, "demand")
    assert demand["metadata"]["activationThreshold"] == "0" and demand["metadata"]["threshold"] == "1"
    assert f'{FRONT_DOOR_REQUESTS}{{namespace="front-door",requested_model="qwen",' in demand["metadata"]["query"]


@pytest.mark.parametrize("auto", [{"minReplicas": 0, "maxReplicas": 2, "scaleToZero": True},
                                  {"minReplicas": 1, "maxReplicas": 2}])
def test_prometheus_away_holds_the_replicas_there_are(auto):
    """With Prometheus away (3 failed queries), KEDA feeds the HPA its fallback. "static" would be
    exactly `replicas` (1), draining a server that runs 2; "currentReplicasIfHigher" keeps the
    replicas there are, at least one (KEDA 2.20 counts a trigger on fallback as active, so a
    server at zero gets one). The behaviour is one the pinned chart's CRD accepts."""
    need_charts()
    rec = autoscaled("eks", **auto)
    (obj,) = scaled_objects(rec).values()
    assert obj["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 1, "behavior": "currentReplicasIfHigher"}
    (keda,) = [r for r in charts.chart_releases(rec) if r.chart == "keda"]
    (crd,) = [o for o in charts.render_release(keda, charts.kube_version("eks"))
              if o["kind"] == "CustomResourceDefinition" and o["spec"]["names"]["kind"] == "ScaledObject"]
    (version,) = crd["spec"]["versions"]
    fallback = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["fallback"]
    jsonschema.validate(obj["spec"]["fallback"], fallback)
    assert "currentReplicasIfHigher" in fallback["properties"]["behavior"]["enum"]


@pytest.mark.parametrize("auto, message", [
    ({"minReplicas": 0}, "autoscaling.minReplicas: 0 scales the server to zero, which is opt-in"),
    ({"scaleToZero": True}, "autoscaling.scaleToZero: expected minReplicas 0, got 1"),
    ({"minReplicas": 3, "maxReplicas": 2}, "autoscaling.minReplicas: expected at most maxReplicas (2), got 3"),
    # Karpenter adds 2 GPU nodes at most: a third replica would never be placed.
    ({"maxReplicas": 3}, "autoscaling.maxReplicas: the models need 3 nvidia units in all, the cluster offers 2"),
])
def test_autoscaling_settings_that_cannot_work_are_refused(auto, message):
    with pytest.raises(harness.ProgramFailed) as info:
        autoscaled("eks", **auto)
    assert str(info.value.error).startswith(f"Pulumi.eks.yaml: llm-platform:models[0].{message}")


@pytest.mark.parametrize("overrides, message", [
    ({"llm-platform:models": [model("eks", replicas=2, autoscaling={"enabled": True})]},
     "models[0].replicas: not used while autoscaling.enabled"),
    ({"llm-platform:models": [model("eks", autoscaling={"enabled": True, "minReplicas": 0, "scaleToZero": True})],
      "llm-platform:frontDoor": {"metrics": False}},
     "models[0].autoscaling.scaleToZero: a server at zero replicas is woken by the front door's request count"),
])
def test_conflicting_keys_are_refused(overrides, message):
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("eks", overrides)
    assert str(info.value.error).startswith(f"Pulumi.eks.yaml: llm-platform:{message}")


def test_router_mode_is_not_autoscaled():
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("local", {"llm-platform:models": [model("local", autoscaling={"enabled": True})],
                              "llm-platform:llamaRouter": {"enabled": True}})
    assert "models[0].autoscaling.enabled: in router mode one llama-server serves every model" in str(info.value.error)


@pytest.mark.parametrize("most, strategy", [
    (3, {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}),
    # At its most the server holds all 4 GPU shares: a surge pod would never be placed and the
    # rollout would wait forever, so it is replaced in place.
    (4, {"type": "Recreate"}),
])
def test_rollouts_count_the_most_replicas_the_autoscaler_may_run(most, strategy):
    rec = autoscaled("local", minReplicas=1, maxReplicas=most)
    (dep,) = rec.model_servers()
    assert dep.inputs["spec"]["strategy"] == strategy


def test_disruption_budget_never_blocks_scale_down_or_drains():
    """maxUnavailable 1 (never minAvailable) once the server may run more than one replica: a
    node drain, Karpenter emptying a node or a scale-down can always take a pod."""
    rec = autoscaled("eks", minReplicas=0, maxReplicas=2, scaleToZero=True)
    pdb = rec.one(PDB, "model-qwen-pdb").inputs
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": rec.model_servers()[0].inputs["spec"]["selector"]}
    assert not [r for r in autoscaled("eks", minReplicas=1, maxReplicas=1).of_type(PDB) if r.name == "model-qwen-pdb"]


def test_pulumi_waits_for_every_replica_the_autoscaler_may_roll():
    """A StatefulSet update replaces replicas one at a time: Pulumi's update timeout covers the
    most there may be, not the one the API server starts with."""
    one = harness.run("eks").one("kubernetes:apps/v1:StatefulSet").custom_timeouts["update"]
    two = autoscaled("eks", maxReplicas=2).one("kubernetes:apps/v1:StatefulSet").custom_timeouts["update"]
    assert int(two.removesuffix("m")) > int(one.removesuffix("m"))


def test_karpenter_starts_once_its_credentials_can_be_served():
    """Karpenter's AWS credentials come through EKS Pod Identity: its release waits for the
    agent add-on (else a first `up` starts a controller that crash-loops without them)."""
    rec = harness.run("eks")
    (release,) = [r for r in rec.of_type(RELEASE) if r.inputs["chart"].endswith("/karpenter")]
    (agent,) = [r for r in rec.of_type("aws:eks/addon:Addon") if r.inputs["addonName"] == "eks-pod-identity-agent"]
    assert agent.urn in rec.depends_transitively(release)


# --- the wake-up query (evaluated by Prometheus's engine in tests/parts/test_autoscaling.py) --


def wake_query(stack: str = "eks") -> str:
    obj = scaled_objects(autoscaled(stack, minReplicas=0, maxReplicas=1, scaleToZero=True))
    (only,) = obj.values()
    return trigger(only, "demand")["metadata"]["query"]


def test_the_scrape_history_it_asks_for_is_the_front_doors():
    """`up{job=...}` is the front door's scrape: the prometheus operator names a ServiceMonitor's
    job after the Service it selects, unless the monitor sets jobLabel."""
    from components.serving.autoscaling import FRONT_DOOR_JOB

    rec = autoscaled("eks", minReplicas=0, maxReplicas=1, scaleToZero=True)
    monitors = [harness.reveal(r.inputs) for r in rec.of_type("kubernetes:monitoring.coreos.com/v1:ServiceMonitor")
                if harness.reveal(r.inputs)["metadata"]["namespace"] == "front-door"]
    (monitor,) = monitors
    assert "jobLabel" not in monitor["spec"]
    services = [harness.reveal(r.inputs) for r in rec.of_type("kubernetes:core/v1:Service")]
    (service,) = [s for s in services if s["metadata"].get("namespace") == "front-door"
                  and monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()]
    assert service["metadata"]["name"] == FRONT_DOOR_JOB
    assert f'up{{namespace="front-door",job="{FRONT_DOOR_JOB}"}}' in wake_query()
