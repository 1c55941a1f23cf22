"""A real Kubernetes control plane (kube-apiserver, controller-manager, scheduler, etcd; no kubelet)
for the suite, and the few things a kubelet, a device plugin, a CSI provisioner or a cloud would
do that the control plane cannot do alone.

`tests/envtest.py` starts the control plane: binaries from `KUBEBUILDER_ASSETS` when set (the
envtest layout `setup-envtest` fills), else from `<repo>/../shared/envtest`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from tests import envtest

FIELD_MANAGER = "llm-platform"
BUILTIN_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease"}
# Seconds spent starting the control plane and putting each stack on it (printed after the run).
TIMINGS: dict[str, float] = {}
# What the tests themselves put on the cluster; removed with the stack that needed them.
TEST_LABEL = "test.llm-platform/part-of"


def missing() -> Optional[str]:
    """Why no control plane (with its controllers and scheduler) can be started here, in one line;
    None when one can."""
    why = envtest.missing(envtest.FULL)
    return f"no control plane: {why}" if why else None


@dataclass
class Rejection:
    """An object the API server refused, and what it said."""

    obj: str
    status: int
    reason: str

    def __str__(self) -> str:
        return f"{self.obj}: HTTP {self.status}: {self.reason}"


def ref(obj: dict) -> str:
    md = obj.get("metadata", {})
    ns = f"{md['namespace']}/" if md.get("namespace") else ""
    return f"{obj.get('kind')} {ns}{md.get('name')}"


class ControlPlane:
    """One started control plane and typed/dynamic clients on it."""

    def __init__(self, workdir: Path):
        t0 = time.monotonic()
        self.run = envtest.start(workdir)
        self.start_s = time.monotonic() - t0
        self.kubeconfig = str(self.run.kubeconfig)
        self.api = k8s_config.new_client_from_config(config_file=self.kubeconfig)
        self.core = k8s_client.CoreV1Api(self.api)
        self.apps = k8s_client.AppsV1Api(self.api)
        self.dyn = DynamicClient(self.api)

    def stop(self) -> None:
        self.run.stop()

    # --- apply -------------------------------------------------------------------------

    def resource(self, obj: dict):
        try:
            return self.dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        except ResourceNotFoundError:
            self.dyn.resources.invalidate_cache()
            return self.dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])

    def apply(self, obj: dict) -> Optional[Rejection]:
        """Server-side apply with strict field validation; the refusal, if any."""
        try:
            res = self.resource(obj)
        except ResourceNotFoundError:
            return Rejection(ref(obj), 404, f"the server has no {obj['apiVersion']} {obj['kind']}")
        try:
            self.dyn.server_side_apply(res, body=obj, namespace=obj["metadata"].get("namespace"),
                                       field_manager=FIELD_MANAGER, force_conflicts=True,
                                       query_params=[("fieldValidation", "Strict")])
        except ApiException as err:
            return Rejection(ref(obj), err.status, _message(err))
        return None

    def get(self, obj: dict) -> dict:
        """The live object named like `obj` (apiVersion, kind, name, namespace)."""
        return self.dyn.get(self.resource(obj), name=obj["metadata"]["name"],
                            namespace=obj["metadata"].get("namespace")).to_dict()

    def exists(self, obj: dict) -> bool:
        try:
            self.dyn.get(self.resource(obj), name=obj["metadata"]["name"], namespace=obj["metadata"].get("namespace"))
        except NotFoundError:
            return False
        return True

    def wait_established(self, names: Iterable[str], timeout: float = 30) -> None:
        crds = self.dyn.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
        for name in names:
            until(lambda: any(c["type"] == "Established" and c["status"] == "True"
                              for c in (crds.get(name=name).to_dict().get("status") or {}).get("conditions") or []),
                  timeout, f"CRD {name} established")
        self.dyn.resources.invalidate_cache()

    # --- reads -------------------------------------------------------------------------

    def pods(self, namespace: Optional[str] = None, selector: Optional[str] = None) -> list:
        if namespace:
            return self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return self.core.list_pod_for_all_namespaces(label_selector=selector).items

    def nodes(self) -> list:
        return self.core.list_node().items

    def warnings(self) -> list:
        return [e for e in self.core.list_event_for_all_namespaces().items if e.type == "Warning"]

    # --- clean slate between stacks ----------------------------------------------------

    def reset(self, applied: list[dict]) -> None:
        """Remove a stack: its namespaces, pods, cluster-scoped objects and nodes. CRDs stay (the
        next stack applies its own over them; extra ones change no scheduling or admission)."""
        for obj in applied:
            # No controller is there to honour these (e.g. Argo CD's resources finalizer).
            if obj["metadata"].get("finalizers"):
                _ignore_missing(lambda: self.dyn.patch(
                    self.resource(obj), name=obj["metadata"]["name"], namespace=obj["metadata"].get("namespace"),
                    body={"metadata": {"finalizers": None}}, content_type="application/merge-patch+json"))
        batch = k8s_client.BatchV1Api(self.api)
        doomed = [ns.metadata.name for ns in self.core.list_namespace().items
                  if ns.metadata.name not in BUILTIN_NAMESPACES]
        for ns in doomed:
            # Controllers first, then their pods at once (no kubelet confirms a pod's end), so
            # the namespace controller finds no pods and does not wait out their grace periods.
            for delete in (self.apps.delete_collection_namespaced_daemon_set,
                           self.apps.delete_collection_namespaced_deployment,
                           self.apps.delete_collection_namespaced_stateful_set,
                           self.apps.delete_collection_namespaced_replica_set,
                           batch.delete_collection_namespaced_job):
                delete(ns, propagation_policy="Background")
            self.core.delete_collection_namespaced_pod(ns, grace_period_seconds=0)
            # The pods are gone: their claims' protection finalizer has nothing left to guard.
            self.core.delete_collection_namespaced_persistent_volume_claim(ns)
            for pvc in self.core.list_namespaced_persistent_volume_claim(ns).items:
                _ignore_missing(lambda: self.core.patch_namespaced_persistent_volume_claim(
                    pvc.metadata.name, ns, {"metadata": {"finalizers": None}}))
            _ignore_missing(lambda: self.core.delete_namespace(ns))
        for obj in reversed(applied):
            md = obj["metadata"]
            if obj["kind"] in ("CustomResourceDefinition", "Namespace"):
                continue
            if md.get("namespace") in BUILTIN_NAMESPACES or not md.get("namespace"):
                _ignore_missing(lambda: self.dyn.delete(self.resource(obj), name=md["name"],
                                                        namespace=md.get("namespace")))
        # A stack's workloads in a namespace that stays (Karpenter in kube-system) leave their
        # ReplicaSets behind for the garbage collector: remove them now.
        for ns in BUILTIN_NAMESPACES:
            self.apps.delete_collection_namespaced_replica_set(ns, propagation_policy="Background")

        # No kubelet confirms a pod's end: finish every deletion at once.
        def gone() -> bool:
            for pod in self.pods():
                _ignore_missing(lambda: self.core.delete_namespaced_pod(
                    pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0))
            left = [n.metadata.name for n in self.core.list_namespace().items
                    if n.metadata.name not in BUILTIN_NAMESPACES]
            replica_sets = [r for ns in BUILTIN_NAMESPACES for r in self.apps.list_namespaced_replica_set(ns).items]
            return not left and not self.pods() and not replica_sets
        until(gone, 90, "namespaces of the previous stack deleted")
        # Their events too (a pod refused once its service account was deleted): the next stack's
        # checks read the events of these namespaces.
        for ns in BUILTIN_NAMESPACES:
            self.core.delete_collection_namespaced_event(ns)
        self.core.delete_collection_node()
        for pv in self.core.list_persistent_volume().items:
            _ignore_missing(lambda: self.core.delete_persistent_volume(pv.metadata.name))
        until(lambda: not self.nodes(), 30, "nodes deleted")


def _message(err: ApiException) -> str:
    import json
    try:
        return json.loads(err.body).get("message", err.body)
    except Exception:  # noqa: BLE001 - a non-JSON body is itself the message
        return str(err.body or err.reason)


def _ignore_missing(call: Callable[[], Any]) -> None:
    try:
        call()
    except (ApiException, NotFoundError) as err:
        if getattr(err, "status", None) != 404:
            raise


def until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


# --- nodes -----------------------------------------------------------------------------


@dataclass
class NodeShape:
    """A node as the kubelet and the cloud would register it."""

    name: str
    pool: str
    labels: dict[str, str]
    taints: list[dict]
    cpu: str
    memory: str
    pods: int
    # Extended resources already advertised at registration (a device plugin the cloud runs).
    devices: dict[str, int] = field(default_factory=dict)
    # Advertised only once the named device plugin has a pod on the node (as the kubelet would).
    devices_from_plugin: dict[str, int] = field(default_factory=dict)

    def manifest(self) -> dict:
        return {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": {**self.labels, TEST_LABEL: "node"}},
                "spec": {"taints": self.taints}}

    def status(self, devices: dict[str, int]) -> dict:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        res = {"cpu": self.cpu, "memory": self.memory, "pods": str(self.pods),
               **{k: str(v) for k, v in devices.items()}}
        return {"status": {
            "capacity": res, "allocatable": res,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "declared by the test", "lastHeartbeatTime": now,
                            "lastTransitionTime": now}],
        }}


def declare_nodes(cp: ControlPlane, shapes: list[NodeShape], wait: bool = True) -> None:
    for shape in shapes:
        cp.core.create_node(shape.manifest())
        cp.core.patch_node_status(shape.name, shape.status(shape.devices))
    if wait:
        nodes_schedulable(cp)


def nodes_schedulable(cp: ControlPlane) -> None:
    # The node lifecycle controller lifts the not-ready taint once it sees them Ready.
    until(lambda: all(not any(t.key.startswith("node.kubernetes.io/") for t in (n.spec.taints or []))
                      for n in cp.nodes()), 30, "nodes schedulable")


def advertise_plugin_devices(cp: ControlPlane, shapes: list[NodeShape], plugin_pods: list) -> None:
    """What the kubelet does once a device plugin registers: the node's allocatable gains the
    plugin's resource. Only nodes the plugin's pod was bound to gain it."""
    served = {p.spec.node_name for p in plugin_pods if p.spec.node_name}
    for shape in shapes:
        if shape.devices_from_plugin and shape.name in served:
            cp.core.patch_node_status(shape.name, shape.status({**shape.devices, **shape.devices_from_plugin}))


def provision_volumes(cp: ControlPlane, zone_of: dict[str, str]) -> None:
    """What a volume provisioner does for a claim of its class: a PV pre-bound to the claim (the PV
    controller binds them), in the zone of the node the scheduler picked for WaitForFirstConsumer."""
    classes = {sc.metadata.name: sc for sc in k8s_client.StorageV1Api(cp.api).list_storage_class().items}
    for pvc in cp.core.list_persistent_volume_claim_for_all_namespaces().items:
        node = (pvc.metadata.annotations or {}).get("volume.kubernetes.io/selected-node")
        sc = classes.get(pvc.spec.storage_class_name or "")
        if pvc.spec.volume_name or not sc or sc.provisioner == "kubernetes.io/no-provisioner":
            continue
        # WaitForFirstConsumer: only once the scheduler picked a node; Immediate: at once.
        if not node and sc.volume_binding_mode == "WaitForFirstConsumer":
            continue
        zone = zone_of.get(node) if node else None
        affinity = ({"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [zone]}]}]}} if zone else None)
        name = f"pvc-{pvc.metadata.uid}"
        try:
            cp.core.create_persistent_volume({
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": name, "labels": {TEST_LABEL: "volume"},
                             "annotations": {"pv.kubernetes.io/provisioned-by": sc.provisioner}},
                "spec": {"capacity": {"storage": pvc.spec.resources.requests["storage"]},
                         "accessModes": pvc.spec.access_modes, "storageClassName": sc.metadata.name,
                         "persistentVolumeReclaimPolicy": sc.reclaim_policy or "Delete",
                         "claimRef": {"namespace": pvc.metadata.namespace, "name": pvc.metadata.name,
                                      "uid": pvc.metadata.uid},
                         # minikube's provisioner makes host paths; the clouds' are CSI drivers.
                         **({"hostPath": {"path": f"/tmp/hostpath-provisioner/{pvc.metadata.namespace}/{name}"}}
                            if "/" in sc.provisioner else {"csi": {"driver": sc.provisioner, "volumeHandle": name}}),
                         **({"nodeAffinity": affinity} if affinity else {})},
            })
        except ApiException as err:
            if err.status != 409:
                raise


def nudge_static_claims(cp: ControlPlane) -> None:
    """A claim naming its volume, created just after that volume, waits for the PV controller's
    next resync (15 s) to bind; touching it makes the controller look again now."""
    for pvc in cp.core.list_persistent_volume_claim_for_all_namespaces().items:
        if pvc.spec.volume_name and pvc.status.phase == "Pending":
            cp.core.patch_namespaced_persistent_volume_claim(
                pvc.metadata.name, pvc.metadata.namespace,
                {"metadata": {"annotations": {"test.llm-platform/nudged": str(time.monotonic())}}})


def assign_pod_ips(cp: ControlPlane) -> None:
    """What the kubelet (through the CNI plugin) reports once a pod's sandbox exists: its IP.
    Without one, no controller puts the pod behind a Service."""
    taken = {p.status.pod_ip for p in cp.pods() if p.status.pod_ip}
    n = 0
    for pod in cp.pods():
        if pod.spec.node_name and not pod.status.pod_ip and not pod.metadata.deletion_timestamp:
            while (ip := f"10.244.{n // 250}.{n % 250 + 2}") in taken:
                n += 1
            taken.add(ip)
            _ignore_missing(lambda: cp.core.patch_namespaced_pod_status(
                pod.metadata.name, pod.metadata.namespace, {"status": {"podIP": ip, "podIPs": [{"ip": ip}]}}))


def finish_terminations(cp: ControlPlane, namespace: str) -> None:
    """What the kubelet does when a pod's containers have stopped: it removes the pod."""
    for pod in cp.pods(namespace):
        if pod.metadata.deletion_timestamp:
            _ignore_missing(lambda: cp.core.delete_namespaced_pod(
                pod.metadata.name, namespace, grace_period_seconds=0))
