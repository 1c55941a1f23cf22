"""One stack on the real control plane: its nodes declared, its whole render applied the way
`pulumi up` would (CRDs first, server-side, strict), then what an operator checks after `up`."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Optional

from tests import kube, stack_nodes
from tools import charts
from tools.mock_engine import Recording, reveal

MODEL_SERVERS = "app.kubernetes.io/component=model-server"
# Webhook configurations are left out: their servers (istiod, cert-manager) are pods that never
# run here, so every call to them would fail; objects are admitted by the built-in plugins only.
# So no sidecar is injected: the istio-proxy container's requests are not counted on the nodes.
LEFT_OUT = {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
            # KEDA's external metrics API and metrics-server's resource metrics API: their servers
            # are pods too. An APIService nobody answers fails discovery of its group, and
            # namespaces then never finish deleting. The resource metrics API's is registered
            # for a moment by its own test (tests/parts/test_cluster.py), then removed.
            "APIService"}
# Before workloads, so a pod never waits on its ServiceAccount, Secret or claim (Helm's order).
_ORDER = ["Namespace", "PriorityClass", "StorageClass", "PersistentVolume", "ServiceAccount", "Secret",
          "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "PersistentVolumeClaim",
          "Service"]
_LAST = {"DaemonSet", "Deployment", "StatefulSet", "ReplicaSet", "Job", "CronJob", "Pod"}


def _rank(obj: dict) -> int:
    kind = obj["kind"]
    return _ORDER.index(kind) if kind in _ORDER else (len(_ORDER) + 1 if kind in _LAST else len(_ORDER))


def whole_render(rec: Recording) -> list[dict]:
    """The program's objects and every chart's, as `up` would apply them; plus the namespaces
    Helm creates for releases with `createNamespace`."""
    objects = [copy.deepcopy(m.obj) for m in charts.cluster_objects(rec)]
    declared = {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    for rel in rec.of_type("kubernetes:helm.sh/v3:Release"):
        r = reveal(rel.inputs)
        if r.get("createNamespace") and r["namespace"] not in declared:
            declared.add(r["namespace"])
            objects.insert(0, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": r["namespace"]}})
    return objects


@dataclass
class Deployed:
    """A stack as applied, and what the control plane made of it."""

    stack: str
    rec: Recording
    objects: list[dict]
    nodes: list[kube.NodeShape]
    rejections: list[kube.Rejection] = field(default_factory=list)
    seconds: float = 0.0

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def node(self, name: str) -> kube.NodeShape:
        return next(n for n in self.nodes if n.name == name)

    @property
    def namespaces(self) -> set[str]:
        return {o["metadata"]["namespace"] for o in self.objects if o["metadata"].get("namespace")}


def nodes_for(stack: str, rec: Recording, objects: list[dict]) -> list[kube.NodeShape]:
    if stack == "eks":
        return stack_nodes.eks(rec)
    if stack == "gke":
        return stack_nodes.gke(rec)
    plugin = next((o for o in objects if o["kind"] == "DaemonSet"
                   and o["metadata"]["name"] == "generic-device-plugin"), None)
    arg = None
    if plugin:
        args = plugin["spec"]["template"]["spec"]["containers"][0]["args"]
        arg = args[args.index("--device") + 1]
    return stack_nodes.minikube(rec, arg)


# The DaemonSet whose pod makes a node advertise the stack's accelerator.
DEVICE_PLUGINS = {"local": ("kube-system", "generic-device-plugin"),
                  "eks": ("nvidia-device-plugin", "nvidia-device-plugin")}


def deploy(cp: kube.ControlPlane, stack: str, rec: Recording, settle_s: float = 60,
           empty_pools: tuple[str, ...] = ()) -> Deployed:
    """Declare the stack's nodes (none in `empty_pools`, as an autoscaler leaves a pool with
    nothing to run), apply its whole render and let the controllers and the scheduler settle."""
    t0 = time.monotonic()
    objects = [o for o in whole_render(rec) if o["kind"] not in LEFT_OUT]
    objects = stack_nodes.CLOUD_OBJECTS[stack] + objects
    nodes = [n for n in nodes_for(stack, rec, objects) if n.pool not in empty_pools]
    d = Deployed(stack, rec, objects, nodes)
    kube.declare_nodes(cp, nodes, wait=False)

    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    for obj in crds:
        _apply(cp, d, obj)
    cp.wait_established(o["metadata"]["name"] for o in crds)
    rest = sorted((o for o in objects if o["kind"] != "CustomResourceDefinition"), key=_rank)
    for obj in (o for o in rest if o["kind"] not in _LAST):
        _apply(cp, d, obj)
    kube.nodes_schedulable(cp)
    for obj in (o for o in rest if o["kind"] in _LAST):
        _apply(cp, d, obj)
    settle(cp, d, settle_s)
    d.seconds = time.monotonic() - t0
    return d


def _apply(cp: kube.ControlPlane, d: Deployed, obj: dict) -> None:
    rejected = cp.apply(obj)
    if rejected:
        d.rejections.append(rejected)


def stand_ins(cp: kube.ControlPlane, d: Deployed) -> None:
    """What the kubelet, the device plugin and the CSI provisioner would do by now."""
    zone_of = {n.name: n.labels.get("topology.kubernetes.io/zone") for n in d.nodes}
    kube.provision_volumes(cp, zone_of)
    kube.nudge_static_claims(cp)
    kube.assign_pod_ips(cp)
    if d.stack in DEVICE_PLUGINS:
        ns, name = DEVICE_PLUGINS[d.stack]
        kube.advertise_plugin_devices(cp, d.nodes, owned_pods(cp, ns, "DaemonSet", name))


def owned_pods(cp: kube.ControlPlane, namespace: str, kind: str, name: str) -> list:
    return [p for p in cp.pods(namespace)
            if any(o.kind == kind and o.name == name for o in p.metadata.owner_references or [])]


def _snapshot(cp: kube.ControlPlane) -> tuple:
    pods = tuple(sorted((p.metadata.namespace, p.metadata.name, p.spec.node_name or "",
                         bool(p.metadata.deletion_timestamp)) for p in cp.pods()))
    ds = tuple(sorted((x.metadata.name, x.status.desired_number_scheduled, x.status.current_number_scheduled)
                      for x in cp.apps.list_daemon_set_for_all_namespaces().items))
    # A claim naming its volume is bound by the PV controller, at worst at its next resync (15 s).
    binding = tuple(sorted((c.metadata.namespace, c.metadata.name, c.status.phase)
                           for c in cp.core.list_persistent_volume_claim_for_all_namespaces().items))
    return pods, ds, binding


def _converging(cp: kube.ControlPlane) -> bool:
    return any(c.status.phase != "Bound" and c.spec.volume_name
               for c in cp.core.list_persistent_volume_claim_for_all_namespaces().items)


def settle(cp: kube.ControlPlane, d: Deployed, timeout: float, quiet_s: float = 3.0) -> None:
    """Run the stand-ins until nothing has changed for `quiet_s` (or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        stand_ins(cp, d)
        for ns in d.namespaces:
            kube.finish_terminations(cp, ns)
        now = _snapshot(cp)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s and not _converging(cp):
            return
        time.sleep(0.4)


# --- what an operator checks -------------------------------------------------------------


def unbound_pods(cp: kube.ControlPlane, d: Deployed, selector: Optional[str] = None) -> list[str]:
    """Pods the scheduler has not placed, with its last word on them."""
    out = []
    for ns in sorted(d.namespaces):
        for pod in cp.pods(ns, selector):
            if pod.spec.node_name:
                continue
            cond = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
            why = f"{cond.reason}: {cond.message}" if cond and cond.message else "not scheduled yet"
            out.append(f"pod {ns}/{pod.metadata.name}: {why}")
    return out


def failed_creates(cp: kube.ControlPlane, d: Deployed) -> list[str]:
    """Controllers that could not create their pods (admission, quota, missing references)."""
    out = []
    for ns in sorted(d.namespaces):
        for rs in cp.apps.list_namespaced_replica_set(ns).items:
            for c in rs.status.conditions or []:
                if c.type == "ReplicaFailure" and c.status == "True":
                    out.append(f"ReplicaSet {ns}/{rs.metadata.name}: {c.reason}: {c.message}")
        for ds in cp.apps.list_namespaced_daemon_set(ns).items:
            if (ds.status.current_number_scheduled or 0) < (ds.status.desired_number_scheduled or 0):
                out.append(f"DaemonSet {ns}/{ds.metadata.name}: {ds.status.current_number_scheduled} of "
                           f"{ds.status.desired_number_scheduled} pods created")
        for sts in cp.apps.list_namespaced_stateful_set(ns).items:
            if (sts.status.replicas or 0) < (sts.spec.replicas or 0):
                out.append(f"StatefulSet {ns}/{sts.metadata.name}: {sts.status.replicas} of "
                           f"{sts.spec.replicas} pods created")
        for ev in cp.core.list_namespaced_event(ns).items:
            if ev.type == "Warning" and ev.reason == "FailedCreate" and "forbidden" in (ev.message or ""):
                out.append(f"{ev.involved_object.kind} {ns}/{ev.involved_object.name}: {ev.message}")
    return sorted(set(out))


def daemonset_coverage(cp: kube.ControlPlane, d: Deployed, namespace: str, name: str,
                       must_serve: set[str], may_run: set[str]) -> list[str]:
    """Where the DaemonSet's pods are missing, and where they should not be."""
    on = {p.spec.node_name for p in owned_pods(cp, namespace, "DaemonSet", name) if p.spec.node_name}
    out = [f"DaemonSet {namespace}/{name}: no pod on {n} (pool {d.node(n).pool})" for n in sorted(must_serve - on)]
    out += [f"DaemonSet {namespace}/{name}: a pod on {n} (pool {d.node(n).pool}), where it must not run"
            for n in sorted(on - may_run - must_serve)]
    return out


# The Prometheus operator makes these pods from its custom resources, and no operator runs on
# the control plane: Services selecting them (by the labels the operator sets, as the chart's
# Services do) are judged by the resource they name instead.
OPERATOR_POD_SELECTORS = {"Prometheus": "operator.prometheus.io/name", "Alertmanager": "alertmanager"}


def operator_made(d: Deployed, ns: str, selector: dict) -> bool:
    return any(selector.get(label) == o["metadata"]["name"] and o["metadata"].get("namespace") == ns
               for kind, label in OPERATOR_POD_SELECTORS.items() for o in d.of_kind(kind))


def unreachable_service_ports(cp: kube.ControlPlane, d: Deployed) -> list[str]:
    """Service ports the EndpointSlice controller could not resolve on the pods the Service
    selects (a targetPort naming a port the pods do not have, or no pod selected at all)."""
    from kubernetes import client as k8s_client

    discovery = k8s_client.DiscoveryV1Api(cp.api)
    out = []
    for svc in d.of_kind("Service"):
        md, spec = svc["metadata"], svc.get("spec") or {}
        if not spec.get("selector") or spec.get("type") == "ExternalName":
            continue
        ns, name = md["namespace"], md["name"]
        if operator_made(d, ns, spec["selector"]):
            continue
        selector = ",".join(f"{k}={v}" for k, v in spec["selector"].items())
        pods = {p.status.pod_ip for p in cp.pods(ns, selector) if p.status.pod_ip}
        if not pods:
            out.append(f"Service {ns}/{name}: selects no placed pod ({selector})")
            continue
        slices = discovery.list_namespaced_endpoint_slice(
            ns, label_selector=f"kubernetes.io/service-name={name}").items
        for port in spec.get("ports") or []:
            served = {a for s in slices for e in s.endpoints or [] for a in e.addresses
                      if any(p.name == port.get("name") and p.port for p in s.ports or [])}
            if pods - served:
                out.append(f"Service {ns}/{name}: port {port.get('name') or port['port']} "
                           f"(targetPort {port.get('targetPort', port['port'])}) reaches "
                           f"{len(pods & served)} of its {len(pods)} pods")
    return out


def settled_service_ports(cp: kube.ControlPlane, d: Deployed) -> list[str]:
    """Service ports that reach none of their pods once the EndpointSlice controller has had
    its chance (it works asynchronously: give it a moment before judging)."""
    def settled():
        stand_ins(cp, d)
        return not unreachable_service_ports(cp, d)

    try:
        kube.until(settled, 15, "endpoints of every Service", every=0.5)
    except TimeoutError:
        pass
    return unreachable_service_ports(cp, d)


def model_server_placement(cp: kube.ControlPlane, d: Deployed, accelerator_nodes: set[str]) -> list[str]:
    out = []
    for ns in sorted(d.namespaces):
        for pod in cp.pods(ns, MODEL_SERVERS):
            if pod.spec.node_name and pod.spec.node_name not in accelerator_nodes:
                out.append(f"model server pod {ns}/{pod.metadata.name} bound to {pod.spec.node_name}, "
                           f"not an accelerator node")
    return out + unbound_pods(cp, d, MODEL_SERVERS)


