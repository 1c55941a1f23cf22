"""Each stack's whole render on a real control plane, with nodes shaped like its node pools:
what an operator checks after `up`, and broken variants showing that those checks bite.

One stack at a time on a clean slate: its nodes are the only nodes, so no stack's pods can land
on another's. There is no kubelet; `tests/kube.py` stands in for the few node-side steps the
control plane waits on (a device plugin's resource, a provisioned volume, a finished pod).
"""

from __future__ import annotations

import base64
import copy
import json
import time
from typing import Callable, Optional

import pytest
import yaml

from components.edge import front_door
from components.platform import gpu_metrics
from components.cluster.accelerators import RESOURCES
from tests import cluster_stack as cs
from tests import kube, stack_nodes
from tests.conftest import recording
from tools import mock_engine

STACKS = mock_engine.STACKS
ROLLOUT_ANNOTATION = "test.llm-platform/rollout"


def resource_of(stack: str) -> str:
    return RESOURCES[mock_engine.stack_config(stack)["llm-platform:accelerator"]["kind"]]


@pytest.fixture(scope="session", params=STACKS)
def deployed(request, stacks) -> cs.Deployed:
    return stacks.get(request.param)


def accelerator_nodes(d: cs.Deployed) -> set[str]:
    res = resource_of(d.stack)
    return {n.name for n in d.nodes if res in n.devices or res in n.devices_from_plugin}


def daemonset_expectations(d: cs.Deployed) -> dict[tuple[str, str], tuple[set[str], set[str]]]:
    """(namespace, name) -> (nodes it must serve, nodes it may run on)."""
    every = {n.name for n in d.nodes}
    accel = accelerator_nodes(d)
    return {
        # Injected pods on a node without Istio's CNI agent start without their traffic redirect.
        ("istio-system", "istio-cni-node"): (every, every),
        # The device plugin makes the accelerator schedulable: every accelerator node, only those.
        ("kube-system", "generic-device-plugin"): (accel, every),
        ("nvidia-device-plugin", "nvidia-device-plugin"): (accel, accel),
        # Only when GPU feature discovery is on: NFD's worker labels GPU nodes (it may run anywhere).
        ("nvidia-device-plugin", "nvidia-device-plugin-node-feature-discovery-worker"): (accel, every),
        ("nvidia-device-plugin", "nvidia-device-plugin-gpu-feature-discovery"): (accel, accel),
        # GPU metrics: on every NVIDIA GPU node, and on no other node.
        (gpu_metrics.NAMESPACE, gpu_metrics.HELM_RELEASE): (accel, accel),
        # Node metrics (full monitoring): every node, GPU nodes included (it tolerates NoSchedule).
        ("monitoring", "kps-prometheus-node-exporter"): (every, every),
        # Only on nodes labelled for MPS, which this platform does not use.
        ("nvidia-device-plugin", "nvidia-device-plugin-mps-control-daemon"): (set(), set()),
    }


def coverage_problems(cp: kube.ControlPlane, d: cs.Deployed) -> list[str]:
    expected = daemonset_expectations(d)
    out = []
    for ds in d.of_kind("DaemonSet"):
        key = (ds["metadata"]["namespace"], ds["metadata"]["name"])
        if key not in expected:
            out.append(f"DaemonSet {key[0]}/{key[1]}: no expectation of which nodes it serves (add one)")
            continue
        must, may = expected[key]
        out += cs.daemonset_coverage(cp, d, *key, must_serve=must, may_run=may)
    return out


# --- after `up` -------------------------------------------------------------------------------


def test_nothing_rejected_or_forbidden(control_plane, deployed):
    """Every object is accepted by strict server-side apply, and every controller could create
    its pods (Pod Security admission and the other built-in admission plugins are live)."""
    problems = [str(r) for r in deployed.rejections] + cs.failed_creates(control_plane, deployed)
    assert not problems, "\n".join(problems)


def test_daemonsets_serve_their_nodes(control_plane, deployed):
    problems = coverage_problems(control_plane, deployed)
    assert not problems, "\n".join(problems)


def test_model_servers_bound_to_accelerator_nodes(control_plane, deployed):
    pods = control_plane.pods(None, cs.MODEL_SERVERS)
    assert pods, "no model server pods at all"
    problems = cs.model_server_placement(control_plane, deployed, accelerator_nodes(deployed))
    assert not problems, "\n".join(problems)


def test_no_pod_left_pending(control_plane, deployed):
    problems = cs.unbound_pods(control_plane, deployed)
    assert not problems, "\n".join(problems)


def test_services_reach_their_pods(control_plane, deployed):
    """Every Service's ports resolve, by the EndpointSlice controller, on the pods it selects."""
    problems = cs.settled_service_ports(control_plane, deployed)
    assert not problems, "\n".join(problems)


def test_model_server_rollout_completes(control_plane, deployed, request):
    """Change every model server's pod template and follow the rollout as far as a cluster
    without kubelets shows it. Pods never become Ready here, so a surge rollout stops after its
    first new pod; what decides whether it can complete is that this pod gets placed (a new pod
    that fits nowhere stays Pending for good and the old one is never replaced). A Recreate or
    StatefulSet rollout removes old pods first: the stand-in kubelet finishes them, and the new
    ones must be placed. Either way: new pods appear and every one is bound."""
    cp = control_plane
    owners = set()
    for pod in cp.pods(None, cs.MODEL_SERVERS):
        for o in pod.metadata.owner_references or []:
            if o.kind == "ReplicaSet":
                rs = cp.apps.read_namespaced_replica_set(o.name, pod.metadata.namespace)
                owners |= {("Deployment", pod.metadata.namespace, x.name) for x in rs.metadata.owner_references or []}
            elif o.kind == "StatefulSet":
                owners.add(("StatefulSet", pod.metadata.namespace, o.name))
    assert owners, "no workload owns the model server pods"
    patch = {"spec": {"template": {"metadata": {"annotations": {ROLLOUT_ANNOTATION: "1"}}}}}
    for kind, ns, name in owners:
        res = cp.dyn.resources.get(api_version="apps/v1", kind=kind)
        cp.dyn.patch(res, name=name, namespace=ns, body=patch, content_type="application/merge-patch+json")

    def new_pods():
        return [p for p in cp.pods(None, cs.MODEL_SERVERS)
                if (p.metadata.annotations or {}).get(ROLLOUT_ANNOTATION) == "1"]

    deadline, stuck_since = time.monotonic() + 45, None
    while time.monotonic() < deadline:
        cs.stand_ins(cp, deployed)
        for ns in deployed.namespaces:
            kube.finish_terminations(cp, ns)
        new = new_pods()
        if new and all(p.spec.node_name for p in new):
            return
        unplaceable = [p for p in new if any(c.type == "PodScheduled" and c.reason == "Unschedulable"
                                             for c in p.status.conditions or [])]
        stuck_since = (stuck_since or time.monotonic()) if unplaceable else None
        if stuck_since and time.monotonic() - stuck_since > 5:
            break
        time.sleep(0.5)
    problems = cs.unbound_pods(cp, deployed, cs.MODEL_SERVERS) or ["no pod of the new template was created"]
    pytest.fail("rollout cannot complete:\n" + "\n".join(problems))


# --- the checks bite: the same assertions on a deliberately broken cluster -------------------
# They break the stack already applied (after the checks above ran on it, in this order).


@pytest.mark.parametrize("deployed", ["eks"], indirect=True)
def test_bites_gpu_node_without_the_plugin_label(control_plane, deployed):
    """A GPU node joins without the label the device plugin's affinity needs: no plugin pod
    there, so it would never advertise `nvidia.com/gpu`."""
    cp = control_plane
    gpu = next(n for n in deployed.nodes if n.pool == "gpu")
    bare = copy.deepcopy(gpu)
    bare.name = bare.labels["kubernetes.io/hostname"] = "gpu-node-without-label"
    bare.labels.pop("nvidia.com/gpu.present", None)
    deployed.nodes.append(bare)
    kube.declare_nodes(cp, [bare])
    cs.settle(cp, deployed, 30)
    problems = coverage_problems(cp, deployed)
    assert "DaemonSet nvidia-device-plugin/nvidia-device-plugin: no pod on gpu-node-without-label (pool gpu)" \
        in problems, problems


@pytest.mark.parametrize("deployed", ["local"], indirect=True)
def test_bites_service_target_port_renamed(control_plane, deployed):
    """The model server's Service pointing at a port name its pods do not have."""
    cp = control_plane
    # From a settled cluster: a Recreate rollout just before leaves a new pod not yet running.
    cs.settle(cp, deployed, 30)
    svc = next(o for o in deployed.of_kind("Service") if o["metadata"]["namespace"] == "models")
    broken = copy.deepcopy(svc)
    for port in broken["spec"]["ports"]:
        port["targetPort"] = "renamed"
    assert cp.apply(broken) is None
    try:
        kube.until(lambda: cs.unreachable_service_ports(cp, deployed), 15, "the endpoints to follow")
    except TimeoutError:
        pass
    problems = cs.unreachable_service_ports(cp, deployed)
    assert any(f"Service models/{svc['metadata']['name']}: port" in p for p in problems), problems


@pytest.mark.parametrize("deployed", ["local"], indirect=True)
def test_service_monitors_validate_against_the_charts_crds(control_plane, deployed):
    """The program's ServiceMonitors and PodMonitor were accepted by the CRDs the chart installs;
    a misspelt field is refused by them, as `up` would be."""
    monitors = [o for o in deployed.objects if o["kind"] in ("ServiceMonitor", "PodMonitor")]
    assert {o["kind"] for o in monitors} == {"ServiceMonitor", "PodMonitor"}
    assert all(control_plane.exists(o) for o in monitors)
    broken = copy.deepcopy(next(o for o in monitors if o["kind"] == "ServiceMonitor"))
    broken["spec"]["endpoints"][0]["tlsConfig"]["caFlie"] = broken["spec"]["endpoints"][0]["tlsConfig"].pop("caFile")
    assert control_plane.apply(broken) is not None


def _replace_model_servers(cp: kube.ControlPlane, d: cs.Deployed, breaks: Callable[[dict], None]) -> None:
    """Remove the model server workloads, then apply broken copies of them."""
    servers = [o for o in d.objects if o["kind"] in ("Deployment", "StatefulSet")
               and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "model-server"]
    for obj in servers:
        cp.dyn.delete(cp.resource(obj), name=obj["metadata"]["name"], namespace=obj["metadata"]["namespace"],
                      body={"propagationPolicy": "Background"})

    def removed() -> bool:
        for ns in d.namespaces:
            kube.finish_terminations(cp, ns)
        return not cp.pods(None, cs.MODEL_SERVERS) and not any(cp.exists(o) for o in servers)

    kube.until(removed, 30, "model servers removed")
    for obj in servers:
        broken = copy.deepcopy(obj)
        breaks(broken["spec"]["template"]["spec"])
        assert cp.apply(broken) is None
    cs.settle(cp, d, 30)


@pytest.mark.parametrize("deployed", ["eks", "gke"], indirect=True)
def test_bites_model_server_without_toleration(control_plane, deployed):
    """The model server without its toleration of the accelerator taint: never placed. (The local
    node has no taint, so there is nothing to break there.)"""
    _replace_model_servers(control_plane, deployed, lambda spec: spec.pop("tolerations"))
    problems = cs.model_server_placement(control_plane, deployed, accelerator_nodes(deployed))
    assert problems and all("untolerated taint" in p for p in problems), problems


@pytest.mark.parametrize("deployed", ["local"], indirect=True)
def test_bites_privileged_model_server(control_plane, deployed):
    """A privileged model server in the restricted namespace: Pod Security admission refuses its
    pods, and the ReplicaSet says so."""
    def privileged(spec: dict) -> None:
        spec["containers"][0]["securityContext"] = {"privileged": True}

    _replace_model_servers(control_plane, deployed, privileged)
    problems = cs.failed_creates(control_plane, deployed)
    assert any('violates PodSecurity "restricted' in p for p in problems), problems


def test_node_shapes_follow_the_registered_pools():
    """The declared nodes come from the recorded node groups/pools, not from the test."""
    from tests import stack_nodes

    eks_nodes = stack_nodes.eks(mock_engine.run("eks"))
    gpu = [n for n in eks_nodes if n.pool == "gpu"]
    assert gpu and all(n.labels["node.kubernetes.io/instance-type"] == "g6.xlarge" for n in gpu)
    assert all(n.devices_from_plugin == {"nvidia.com/gpu": 1} for n in gpu)
    assert all(t["effect"] == "NoSchedule" for n in gpu for t in n.taints)
    # Karpenter's pool: as many nodes as its GPU limit allows, in the caches' zone.
    assert len(gpu) == 2 and all(n.labels["karpenter.sh/nodepool"] == "gpu" for n in gpu)
    assert {n.labels["topology.kubernetes.io/zone"] for n in gpu} == {"us-west-2a"}
    gke_nodes = stack_nodes.gke(mock_engine.run("gke"))
    tpu = [n for n in gke_nodes if n.pool == "tpu"]
    assert tpu and all(n.devices == {"google.com/tpu": 4} for n in tpu)
    assert all(n.labels["topology.kubernetes.io/zone"] == "us-central1-a" for n in tpu)
    assert yaml.safe_dump(tpu[0].manifest())


# --- accelerator nodes as the clouds document them ----------------------------------------
# The nodes come from the clouds' documentation (tests/stack_nodes.py), the pods' selectors,
# tolerations and requests from components/core/hardware.py: a mistake there leaves the pod without
# a node. The control plane places the shipped stacks' pods (above); for every other documented
# machine type the scheduler's first checks are applied here.

_UNITS = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}


def quantity(value) -> float:
    text = str(value)
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _UNITS[suffix]
    return float(text)


def _tolerated(taint: dict, tolerations: list[dict]) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint["effect"]:
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t["key"] == taint["key"]):
            return True
        if t.get("key") == taint["key"] and t.get("value") == taint.get("value"):
            return True
    return False


def placement_problems(pod: dict, node) -> list[str]:
    """Why the scheduler would not put `pod` (a pod spec) on `node` (a NodeShape): its node
    selector, the node's NoSchedule/NoExecute taints, the requests beyond what it has."""
    out = [f"nodeSelector {k}={v}: the node has {node.labels.get(k)!r}"
           for k, v in (pod.get("nodeSelector") or {}).items() if node.labels.get(k) != v]
    out += [f"untolerated taint {t['key']}={t.get('value')}:{t['effect']}" for t in node.taints
            if t["effect"] in ("NoSchedule", "NoExecute") and not _tolerated(t, pod.get("tolerations") or [])]
    have = {"cpu": quantity(node.cpu), "memory": quantity(node.memory),
            **{k: float(v) for k, v in {**node.devices, **node.devices_from_plugin}.items()}}
    asked: dict[str, float] = {}
    for c in pod["containers"]:
        res = c.get("resources") or {}
        for k, v in {**(res.get("limits") or {}), **(res.get("requests") or {})}.items():
            asked[k] = asked.get(k, 0) + quantity(v)
    out += [f"asks {k} {v:g}, the node has {have.get(k, 0):g}" for k, v in asked.items() if v > have.get(k, 0)]
    return out


def _tpu_stack(machine: str) -> mock_engine.Recording:
    cluster = {**mock_engine.stack_config("gke")["llm-platform:cluster"]}
    cluster["tpuPool"] = {**cluster["tpuPool"], "machineType": machine}
    return mock_engine.run("gke", {"llm-platform:cluster": cluster})


def _model_pod(rec) -> dict:
    (server,) = rec.model_servers()
    return mock_engine.reveal(server.inputs)["spec"]["template"]["spec"]


@pytest.mark.parametrize("machine", list(stack_nodes.GKE_TPU_MACHINES))
def test_every_documented_tpu_host_takes_the_model_server(machine):
    from tests import stack_nodes

    rec = _tpu_stack(machine)
    (node, *_) = [n for n in stack_nodes.gke(rec) if n.pool == "tpu"]
    assert node.labels["node.kubernetes.io/instance-type"] == machine
    problems = placement_problems(_model_pod(rec), node)
    assert not problems, problems


@pytest.mark.parametrize("machine", ["g2-standard-8", "g2-standard-24", "g2-standard-48"])
def test_every_documented_l4_machine_takes_the_model_server(machine):
    from tests import stack_nodes

    cluster = {k: v for k, v in mock_engine.stack_config("gke")["llm-platform:cluster"].items() if k != "tpuPool"}
    cluster["gpuPool"] = {"machineType": machine, "zone": "us-central1-b"}
    # Requests a g2-standard-8 can hold (the stack file's are sized for the TPU host).
    model = {**mock_engine.stack_config("gke")["llm-platform:models"][0],
             "resources": {"cpu": "4", "memory": "16Gi", "cpuLimit": "6", "memoryLimit": "24Gi"}}
    rec = mock_engine.run("gke", {"llm-platform:cluster": cluster, "llm-platform:accelerator": {"kind": "nvidia"},
                                  "llm-platform:models": [model]})
    (node, *_) = [n for n in stack_nodes.gke(rec) if n.pool == "gpu"]
    assert node.devices == {"nvidia.com/gpu": stack_nodes.GKE_G2_GPUS[machine]}
    problems = placement_problems(_model_pod(rec), node)
    assert not problems, problems


@pytest.mark.parametrize("mistake", ["accelerator label", "topology", "taint"])
def test_bites_a_wrong_tpu_fact_in_the_program(monkeypatch, mistake):
    """A wrong v6e label (or topology, or taint value) in components/core/hardware.py moves the pod's
    selector or toleration, not the node: the model server fits nowhere."""
    from components.core import hardware
    from tests import stack_nodes

    if mistake == "accelerator label":
        monkeypatch.setitem(hardware.TPU_ACCELERATOR_LABELS, "ct6e-standard", "tpu-v6e-podslice")
    elif mistake == "topology":
        monkeypatch.setitem(hardware.SINGLE_HOST_TOPOLOGY, 4, "4x1")
    else:
        monkeypatch.setitem(hardware.GKE_TPU_TAINT, "value", "true")
    rec = _tpu_stack("ct6e-standard-4t")
    (node, *_) = [n for n in stack_nodes.gke(rec) if n.pool == "tpu"]
    problems = placement_problems(_model_pod(rec), node)
    assert problems, "a wrong TPU fact went unnoticed"


# --- vLLM caches and rollouts on the EKS GPU pool -----------------------------------------


# Karpenter's pool may hold two GPU nodes (maxSize 2).
EKS_TWO_REPLICAS = {
    "llm-platform:models": [{**mock_engine.stack_config("eks")["llm-platform:models"][0], "replicas": 2}],
}


def _mark_ready(cp: kube.ControlPlane, namespace: str) -> None:
    """What the kubelet reports once a bound pod's containers run and its probes pass."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for pod in cp.pods(namespace, cs.MODEL_SERVERS):
        if pod.spec.node_name and not pod.metadata.deletion_timestamp and not any(
                c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
            cp.core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": {
                "phase": "Running",
                "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                               for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
                "containerStatuses": [{"name": c.name, "ready": True, "started": True, "restartCount": 0,
                                       "image": c.image, "imageID": "", "state": {"running": {"startedAt": now}}}
                                      for c in pod.spec.containers]}})


def _claims_by_pod(cp: kube.ControlPlane, namespace: str) -> dict[str, tuple[str, str, str]]:
    """pod -> (its cache claim, the node it is bound to, the zone of the claim's volume)."""
    out = {}
    for pod in cp.pods(namespace, cs.MODEL_SERVERS):
        claim = next(v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim)
        pvc = cp.core.read_namespaced_persistent_volume_claim(claim, namespace)
        zone = None
        if pvc.spec.volume_name:
            pv = cp.core.read_persistent_volume(pvc.spec.volume_name)
            zone = pv.spec.node_affinity.required.node_selector_terms[0].match_expressions[0].values[0]
        out[pod.metadata.name] = (claim, pod.spec.node_name, zone)
    return out


def test_vllm_replicas_get_own_caches_and_roll_on_the_gpus_that_exist(control_plane, stacks):
    """Two replicas on the two GPU nodes Karpenter's pool may hold (its limit): each pod
    is bound with a claim of its own, in the GPU nodes' zone; a new pod template rolls out to
    the end, one pod at a time on its own claim. Then the check bites: a GPU node in the other
    zone (as a pool spanning both zones would add) cannot take a replica whose cache is here."""
    cp = control_plane
    cp.reset(stacks.current.objects if stacks.current else [])
    stacks.key, stacks.current = None, None
    # GPUs are advertised once the device plugin's pods are bound, as on the real pool.
    d = cs.deploy(cp, "eks", mock_engine.run("eks", EKS_TWO_REPLICAS))
    # Not one of the stacks as shipped: the next stack test starts from a clean slate.
    stacks.key, stacks.current = "eks-two-replicas", d
    ns = "models"
    gpu_nodes = {n.name: n.labels["topology.kubernetes.io/zone"] for n in d.nodes if n.pool == "gpu"}
    assert len(gpu_nodes) == 2 and len(set(gpu_nodes.values())) == 1
    (zone,) = set(gpu_nodes.values())

    kube.until(lambda: (cs.stand_ins(cp, d), _mark_ready(cp, ns),
                        all(n for _, n, z in _claims_by_pod(cp, ns).values()))[-1] and
               len(_claims_by_pod(cp, ns)) == 2, 60, "both replicas bound")
    before = _claims_by_pod(cp, ns)
    assert {c for c, _, _ in before.values()} == {"cache-qwen-0", "cache-qwen-1"}
    assert {n for _, n, _ in before.values()} == set(gpu_nodes)
    kube.until(lambda: (cs.stand_ins(cp, d), {z for _, _, z in _claims_by_pod(cp, ns).values()} == {zone})[-1],
               30, "caches provisioned in the GPU zone")

    sts = cp.dyn.resources.get(api_version="apps/v1", kind="StatefulSet")
    cp.dyn.patch(sts, name="qwen", namespace=ns, content_type="application/merge-patch+json",
                 body={"spec": {"template": {"metadata": {"annotations": {ROLLOUT_ANNOTATION: "1"}}}}})

    def rolled() -> bool:
        cs.stand_ins(cp, d)
        kube.finish_terminations(cp, ns)
        _mark_ready(cp, ns)
        s = cp.apps.read_namespaced_stateful_set("qwen", ns)
        st = s.status
        return (st.observed_generation == s.metadata.generation and st.update_revision == st.current_revision
                and st.updated_replicas == 2 and st.ready_replicas == 2)

    kube.until(rolled, 60, "the rollout completes")
    after = _claims_by_pod(cp, ns)
    assert after == before  # same claim, same node, same zone for every replica
    for pod in cp.pods(ns, cs.MODEL_SERVERS):
        assert (pod.metadata.annotations or {}).get(ROLLOUT_ANNOTATION) == "1"

    # The check bites: replica 1's node moves to the other zone; its replacement has no node left.
    other = next(z for z in ("us-west-2a", "us-west-2b") if z != zone)
    node = before["qwen-1"][1]
    cp.core.patch_node(node, {"metadata": {"labels": {"topology.kubernetes.io/zone": other}}})
    cp.core.delete_namespaced_pod("qwen-1", ns, grace_period_seconds=0)

    def stuck() -> list[str]:
        cs.stand_ins(cp, d)
        return [p for p in cs.unbound_pods(cp, d, cs.MODEL_SERVERS) if "qwen-1" in p and "Unschedulable" in p]

    problems = kube.until(stuck, 30, "replica 1 refused by the scheduler")
    assert "volume node affinity conflict" in problems[0] or "node affinity" in problems[0], problems


def _model_claims(cp: kube.ControlPlane, namespace: str, model: str) -> set[str]:
    return {c.metadata.name for c in cp.core.list_namespaced_persistent_volume_claim(namespace).items
            if c.metadata.name.startswith(f"cache-{model}-")}


def test_destroy_deletes_every_cache_claim_with_its_server(control_plane, stacks):
    """`pulumi destroy` deletes a StatefulSet with foreground propagation (pulumi-kubernetes'
    default) and goes on once it is gone, towards the cluster itself. By then every cache claim of
    the server must be gone too, a replica's scaled away included: a claim still bound when the
    cluster goes leaves its disk behind, billed, with nothing left to delete it."""
    cp = control_plane
    cp.reset(stacks.current.objects if stacks.current else [])
    stacks.key, stacks.current = None, None
    d = cs.deploy(cp, "eks", mock_engine.run("eks", EKS_TWO_REPLICAS))
    stacks.key, stacks.current = "eks-two-replicas-destroyed", d
    ns = "models"

    def provisioned() -> bool:
        cs.stand_ins(cp, d)
        _mark_ready(cp, ns)
        return all(c.status.phase == "Bound" for c in cp.core.list_namespaced_persistent_volume_claim(ns).items
                   if c.metadata.name.startswith("cache-qwen-")) and len(_model_claims(cp, ns, "qwen")) == 2

    kube.until(provisioned, 60, "both caches provisioned and bound")
    # A replica scaled away (by KEDA, or to zero) keeps its claim: scaled back, it finds its weights.
    cp.apps.patch_namespaced_stateful_set_scale("qwen", ns, {"spec": {"replicas": 1}})
    kube.until(lambda: (cs.stand_ins(cp, d), kube.finish_terminations(cp, ns),
                        [p.metadata.name for p in cp.pods(ns, cs.MODEL_SERVERS)] == ["qwen-0"])[-1],
               30, "replica 1 scaled away")
    assert _model_claims(cp, ns, "qwen") == {"cache-qwen-0", "cache-qwen-1"}

    cp.apps.delete_namespaced_stateful_set("qwen", ns, propagation_policy="Foreground")

    def gone() -> bool:
        kube.finish_terminations(cp, ns)  # the kubelet, once the containers have stopped
        return not [s for s in cp.apps.list_namespaced_stateful_set(ns).items if s.metadata.name == "qwen"]

    kube.until(gone, 60, "the StatefulSet deleted")
    assert _model_claims(cp, ns, "qwen") == set(), "claims outlive their StatefulSet: destroy leaves their disks"


# --- autoscaling: KEDA's and Karpenter's objects, and a GPU pool that starts at zero ----------


def _pending_unschedulable(cp: kube.ControlPlane, d: cs.Deployed) -> list[str]:
    cs.stand_ins(cp, d)
    return [p for p in cs.unbound_pods(cp, d, cs.MODEL_SERVERS) if "Unschedulable" in p]


def _first_node_of(stack: str, pool: str):
    """The node the pool's autoscaler adds first: Karpenter's from the NodePool and EC2NodeClass,
    GKE's from the node pool."""
    from tests import stack_nodes

    rec = recording(FROM_ZERO[stack][0])
    shapes = stack_nodes.karpenter(rec, count=1) if stack == "eks" else stack_nodes.gke(rec)
    return next(n for n in shapes if n.pool == pool)


# stack -> (variant, the accelerator pool that starts empty, the model server's first pod)
FROM_ZERO = {"eks": ("eks-autoscaled", "gpu", "qwen-0"), "gke": ("gke", "tpu", "qwen-0")}


@pytest.mark.parametrize("stack", list(FROM_ZERO))
def test_accelerator_pool_at_zero_then_a_node_like_its_template_takes_the_model(control_plane, stacks, stack):
    """The stack with no accelerator node yet (Karpenter's NodePool or GKE's pool at zero):
    everything is admitted (on eks the ScaledObject, NodePool and EC2NodeClass by their charts'
    CRDs); the model server's pod is Pending, unschedulable. Then a node appears as the
    autoscaler would add it, shaped by the pool's template (labels, taints, capacity): on eks
    the device plugin lands there first, and the real scheduler binds the model server's pod to
    it."""
    cp = control_plane
    variant, pool, pod_name = FROM_ZERO[stack]
    cp.reset(stacks.current.objects if stacks.current else [])
    stacks.key, stacks.current = None, None
    d = cs.deploy(cp, stack, recording(variant), settle_s=30, empty_pools=(pool,))
    stacks.key, stacks.current = f"{variant}-from-zero", d
    assert not [n for n in d.nodes if n.pool == pool]
    problems = [str(r) for r in d.rejections] + cs.failed_creates(cp, d)
    assert not problems, "\n".join(problems)
    if stack == "eks":
        for kind in ("ScaledObject", "NodePool", "EC2NodeClass"):
            (obj,) = d.of_kind(kind)
            assert cp.exists(obj), f"{kind} not stored"
        (scaled,) = d.of_kind("ScaledObject")
        (sts,) = [o for o in d.of_kind("StatefulSet")
                  if o["metadata"]["name"] == scaled["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in sts["spec"]  # KEDA's to set; the API server's default (1) until then

    pending = kube.until(lambda: _pending_unschedulable(cp, d), 30, "the model pod found unschedulable")
    assert len(pending) == 1 and pod_name in pending[0], pending
    events = [e for e in cp.warnings() if e.reason == "FailedScheduling" and e.involved_object.name == pod_name]
    assert events, "no FailedScheduling event for the model pod"

    node = _first_node_of(stack, pool)
    d.nodes.append(node)
    kube.declare_nodes(cp, [node])

    def bound() -> Optional[str]:
        cs.stand_ins(cp, d)
        return cp.core.read_namespaced_pod(pod_name, "models").spec.node_name

    assert kube.until(bound, 60, "the model pod bound") == node.name
    problems = (coverage_problems(cp, d) + cs.unbound_pods(cp, d)
                + cs.model_server_placement(cp, d, accelerator_nodes(d)))
    assert not problems, "\n".join(problems)


# --- one llama-server pod per model on the local stack (router mode off) ---------------------


def test_one_pod_per_model_runs_on_the_gpu_behind_the_front_door(control_plane, stacks):
    """With router mode off, one llama-server per model passes the same checks: admitted, bound
    to the GPU node, nothing Pending, and its Service and the front door's resolve on their pods."""
    # Not one of the stacks as shipped: after the per-stack tests, like the one above.
    cp, d = control_plane, stacks.get("local-pods")
    assert [p.metadata.name.rsplit("-", 2)[0] for p in cp.pods(None, cs.MODEL_SERVERS)] == ["tinyllama"]
    ports = cs.settled_service_ports(cp, d)
    problems = ([str(r) for r in d.rejections] + cs.failed_creates(cp, d) + cs.unbound_pods(cp, d)
                + cs.model_server_placement(cp, d, accelerator_nodes(d)) + ports)
    assert not problems, "\n".join(problems)


# --- the front door's virtual keys on the local stack ----------------------------------------


def _keys_cluster(d: cs.Deployed) -> dict:
    return next(o for o in d.objects if o["kind"] == "Cluster" and o["apiVersion"].startswith("postgresql.cnpg.io/"))


def test_virtual_keys_database_is_admitted_beside_the_front_door(control_plane, stacks):
    """With virtual keys on, the operator's chart and the program's database objects are
    admitted (the `Cluster` strictly against the CRD the chart ships), the operator is placed,
    nothing is Pending and every Service resolves on its pods."""
    cp, d = control_plane, stacks.get("local-vkeys")
    assert cp.exists(_keys_cluster(d))
    operator = cp.pods("cnpg-system")
    assert operator and all(p.spec.node_name for p in operator), "the operator is not placed"
    policies = {o["metadata"]["name"] for o in d.of_kind("NetworkPolicy") if o["metadata"]["namespace"] == "litellm-db"}
    assert {"default-deny", "allow-front-door", "allow-operator"} <= policies
    problems = ([str(r) for r in d.rejections] + cs.failed_creates(cp, d) + cs.unbound_pods(cp, d)
                + cs.settled_service_ports(cp, d))
    assert not problems, "\n".join(problems)


def test_the_database_ca_is_where_the_operator_and_the_front_door_read_it(control_plane, stacks):
    """The `Cluster` (admitted strictly by the chart's CRD, `certificates` included) names a server
    CA Secret that exists beside it with the two keys the operator reads; every Secret the front
    door's pods mount exists in their own namespace (the only one a pod may mount from) with the
    keys they pick, and the URL's CA file is one of them."""
    cp, d = control_plane, stacks.get("local-vkeys")
    cluster = _keys_cluster(d)
    live = cp.dyn.get(cp.resource(cluster), name=cluster["metadata"]["name"],
                      namespace=cluster["metadata"]["namespace"]).to_dict()
    certificates = live["spec"]["certificates"]
    ca = cp.core.read_namespaced_secret(certificates["serverCASecret"], cluster["metadata"]["namespace"])
    assert {"ca.crt", "ca.key"} <= set(ca.data)
    assert certificates["serverAltDNSNames"] == ["litellm-db-rw.litellm-db.svc"]
    pods = cp.pods("front-door", "app.kubernetes.io/name=litellm")
    assert pods, "no front door pod"
    mounted = set()
    for pod in pods:
        mounts = {m.name: m.mount_path for m in pod.spec.containers[0].volume_mounts}
        for volume in pod.spec.volumes:
            if volume.secret is None:
                continue
            data = cp.core.read_namespaced_secret(volume.secret.secret_name, "front-door").data
            for item in volume.secret.items or []:
                assert item.key in data, (volume.secret.secret_name, item.key)
                mounted.add(f"{mounts[volume.name]}/{item.path}")
    url = next(o for o in d.objects if o["kind"] == "Secret" and o["metadata"]["name"] == "litellm-database")
    query = url["stringData"]["DATABASE_URL"].split("?", 1)[1]
    assert dict(p.split("=", 1) for p in query.split("&"))["sslrootcert"] in mounted


def test_a_budgeted_teams_key_is_registered_from_inside_the_front_door_pod(control_plane, stacks):
    """The process that registers a budgeted team's key runs in every front-door pod the API
    server admitted (restricted Pod Security), beside the proxy, with the master key and the
    teams' keys from the Secret in its own namespace."""
    cp, d = control_plane, stacks.get("local-vkeys")
    assert not cs.failed_creates(cp, d)
    pods = cp.pods("front-door", "app.kubernetes.io/name=litellm")
    assert pods and all(p.spec.node_name for p in pods), "no front door pod placed"
    for pod in pods:
        script = {c.name: c for c in pod.spec.containers}.get(front_door.TEAM_BUDGETS_CONTAINER)
        assert script is not None, [c.name for c in pod.spec.containers]
        refs = {e.name: e.value_from.secret_key_ref for e in script.env if e.value_from}
        data = cp.core.read_namespaced_secret(front_door.KEYS_SECRET, "front-door").data
        assert {r.key for r in refs.values()} <= set(data) and front_door.TEAM_BUDGETS_ENV in refs
    team = json.loads(base64.b64decode(data[front_door.TEAM_BUDGETS_ENV]))
    assert set(team) == {"research"} and team["research"]["models"] == ["qwen"]


def test_bites_keys_cluster_field_the_crd_does_not_know(control_plane, stacks):
    """A misspelt field in the `Cluster` (and an instance count below the CRD's minimum) is
    refused by the API server, as `up` would be."""
    cp, d = control_plane, stacks.get("local-vkeys")
    misspelt = copy.deepcopy(_keys_cluster(d))
    misspelt["spec"]["instance"] = misspelt["spec"].pop("instances")
    rejected = cp.apply(misspelt)
    assert rejected is not None and "instance" in str(rejected), rejected
    none = copy.deepcopy(_keys_cluster(d))
    none["spec"]["instances"] = 0
    rejected = cp.apply(none)
    assert rejected is not None and "instances" in str(rejected), rejected


# --- the ingress HPA's metric source --------------------------------------------------------

# The API an HPA's Resource metrics (CPU, memory) are read from, as the aggregator registers it.
RESOURCE_METRICS_API = "v1beta1.metrics.k8s.io"
# The aggregator's verdict on an APIService whose Service it found, with the port it names and
# endpoints for it, none ready (nothing runs here): the furthest it gets without a running pod.
# (ServiceNotFound, ServicePortError, EndpointsNotFound: it found less.)
RESOLVED_BUT_NOT_RUNNING = "MissingEndpoints"


def resource_metric_hpas(d: cs.Deployed) -> list[dict]:
    return [o for o in d.of_kind("HorizontalPodAutoscaler")
            if any(m.get("type") == "Resource" for m in o["spec"].get("metrics") or [])]


def _hpa_metric_message(cp: kube.ControlPlane, hpa: dict) -> Optional[str]:
    """What the real HPA controller last said about reading the HPA's metrics (its ScalingActive
    condition), once it has said something."""
    from kubernetes import client as k8s_client

    status = k8s_client.AutoscalingV2Api(cp.api).read_namespaced_horizontal_pod_autoscaler(
        hpa["metadata"]["name"], hpa["metadata"]["namespace"]).status
    cond = next((c for c in status.conditions or [] if c.type == "ScalingActive"), None)
    return f"{cond.reason}: {cond.message}" if cond else None


def metrics_api_problems(cp: kube.ControlPlane, d: cs.Deployed, api_services: list[dict]) -> list[str]:
    """Register the render's APIService for the resource metrics API (the deploy leaves
    APIServices out, see tests/cluster_stack.py) and ask the real aggregator and HPA controller
    what they make of it; it is removed again before returning.

    No metrics-server runs here (no kubelet to run it, none to scrape), so the API cannot answer.
    What the control plane does show: the APIService is accepted, the aggregator finds the
    Service it names and that Service's endpoints (the metrics-server pods, placed on the system
    nodes), and the HPA controller now reaches a registered metrics API ("unable to handle the
    request", 503) where without one the group does not exist ("could not find the requested
    resource", 404). That the Service's endpoints are the metrics-server pods is read from its
    EndpointSlices, as for every Service."""
    from kubernetes import client as k8s_client

    hpas = resource_metric_hpas(d)
    assert hpas, "no HPA reads Resource metrics: nothing to check"
    registered = [a for a in api_services if a["metadata"]["name"] == RESOURCE_METRICS_API]
    if not registered:
        return [f"HPA {h['metadata']['namespace']}/{h['metadata']['name']} reads Resource metrics, but nothing "
                f"in the render registers {RESOURCE_METRICS_API} and the cluster does not serve it" for h in hpas]
    (api,) = registered
    reg = k8s_client.ApiregistrationV1Api(cp.api)
    problems = []
    rejected = cp.apply(api)
    if rejected:
        return [str(rejected)]
    try:
        def judged():
            cs.stand_ins(cp, d)
            conds = reg.read_api_service(RESOURCE_METRICS_API).status.conditions or []
            return next((c for c in conds if c.type == "Available" and c.reason != "Local"), None)

        available = kube.until(judged, 30, f"the aggregator's verdict on {RESOURCE_METRICS_API}")
        if available.reason != RESOLVED_BUT_NOT_RUNNING:
            problems.append(f"APIService {RESOURCE_METRICS_API}: {available.reason}: {available.message}")
        svc = api["spec"]["service"]
        problems += [p for p in cs.settled_service_ports(cp, d) if p.startswith(f"Service {svc['namespace']}/{svc['name']}:")]
        for hpa in hpas:
            try:
                said = kube.until(lambda: (m := _hpa_metric_message(cp, hpa)) and "pods.metrics.k8s.io" in m
                                  and "could not find the requested resource" not in m and m, 45,
                                  "the HPA controller to reach the metrics API")
            except TimeoutError:
                said = _hpa_metric_message(cp, hpa)
                problems.append(f"HPA {hpa['metadata']['namespace']}/{hpa['metadata']['name']}: {said}")
                continue
            assert "unable to handle the request" in said, said
    finally:
        # An APIService nobody answers fails discovery of its group: namespaces would never
        # finish deleting when the next stack replaces this one.
        reg.delete_api_service(RESOURCE_METRICS_API)
        kube.until(lambda: RESOURCE_METRICS_API not in {a.metadata.name for a in reg.list_api_service().items},
                   15, f"{RESOURCE_METRICS_API} removed")
    return problems


def _api_services(rec) -> list[dict]:
    return [o for o in cs.whole_render(rec) if o["kind"] == "APIService"]


def test_eks_ingress_hpa_reads_a_metrics_api_the_render_registers(control_plane, stacks):
    """EKS runs no metrics-server: the ingress gateway's HPA (CPU) reads the resource metrics
    API of the metrics-server the stack installs. On the control plane the chart's APIService
    resolves to its Service and pods, and the HPA controller finds the API registered."""
    d = stacks.get("eks")
    problems = metrics_api_problems(control_plane, d, _api_services(d.rec))
    assert not problems, "\n".join(problems)


def test_bites_metrics_api_service_naming_no_service(control_plane, stacks):
    """The same check on an APIService whose Service does not exist: the aggregator says so."""
    d = stacks.get("eks")
    broken = copy.deepcopy([a for a in _api_services(d.rec) if a["metadata"]["name"] == RESOURCE_METRICS_API])
    assert broken, f"the eks render registers no {RESOURCE_METRICS_API}"
    broken[0]["spec"]["service"]["name"] = "no-such-metrics-server"
    problems = metrics_api_problems(control_plane, d, broken)
    assert any("ServiceNotFound" in p for p in problems), problems
