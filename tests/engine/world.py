"""A cluster where pods run, for the Pulumi engine: the real control plane (tests/envtest.py),
kwok's simulated kubelets, and a stand-in for each outside party a real cluster has.

Real: kube-apiserver (admission, Pod Security, strict fields, finalizers, garbage collection),
kube-controller-manager (Deployments, StatefulSets, Jobs, endpoints, namespaces, the PV binder),
kube-scheduler (placement on the nodes' labels, taints and capacity).

Simulated, each the way the real party would answer:
- kubelets: kwok (its own Stage definitions, read from its module, delays removed) makes pods on
  the declared nodes Running and Ready with an IP, completes Jobs' pods and removes deleted pods;
- a volume provisioner: kwok's volume stages bind claims of the default class `kwok-volume`;
- device plugins: a node advertises `squat.ai/dri` or `nvidia.com/gpu` only once the stack's
  device-plugin DaemonSet has a Running pod on it (as the kubelet does when a plugin registers);
  TPU nodes advertise `google.com/tpu` from the start (GKE runs that plugin itself);
- a load-balancer controller: a LoadBalancer Service gets an address;
- admission webhooks and aggregated APIs have no server behind them (their pods are kwok's):
  each webhook's failurePolicy is turned to Ignore as it appears, and each APIService served by a
  Service is removed, so objects are admitted by the built-in plugins only (no sidecars) and API
  discovery stays whole;
- Argo CD's application controller: an Application being deleted loses its finalizer.
"""

from __future__ import annotations

import copy
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml
from kubernetes.client import AdmissionregistrationV1Api, ApiregistrationV1Api
from kubernetes.client.exceptions import ApiException

from tests import kube
from tests.cluster_stack import owned_pods
from tools import engine_tools

KWOK_STAGES = ("node/fast", "pod/general", "volume/fast")
POD_CIDR = "10.244.0.0/16"
# Node addresses: in no range the suite's network namespace routes (only loopback is up there).
NODE_NET = "10.240.0"
STORAGE_CLASS = {
    "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
    "metadata": {"name": "kwok-volume", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
    "provisioner": "kwok.x-k8s.io/volume", "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate",
}
ARGO_FINALIZERS = ("resources-finalizer.argocd.argoproj.io", "resources-finalizer.argocd.argoproj.io/background",
                   "resources-finalizer.argocd.argoproj.io/foreground")


def _stages() -> str:
    """kwok's stage manifests from its module, without their seconds of simulated start-up."""
    root = engine_tools.kwok_stages_dir()
    docs = []
    for sub in KWOK_STAGES:
        for path in sorted((root / sub).glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                # The folders also hold kwok's RBAC for running in a cluster: only Stages here.
                if not doc or doc.get("kind") != "Stage":
                    continue
                doc = copy.deepcopy(doc)
                doc["spec"].pop("delay", None)
                docs.append(doc)
    return yaml.safe_dump_all(docs)


@dataclass
class Devices:
    """Nodes that advertise `resources` once a pod of the DaemonSet `plugin` (namespace, name) runs there."""

    plugin: tuple[str, str]
    nodes: list[kube.NodeShape]


@dataclass
class World:
    cp: kube.ControlPlane
    nodes: list[kube.NodeShape]
    devices: Optional[Devices] = None
    kwok: Optional[subprocess.Popen] = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None
    actions: list[str] = field(default_factory=list)

    @property
    def kubeconfig(self) -> str:
        return self.cp.kubeconfig

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        if self.kwok and self.kwok.poll() is None:
            self.kwok.terminate()
            try:
                self.kwok.wait(10)
            except subprocess.TimeoutExpired:
                self.kwok.kill()
        self.cp.stop()

    # --- the outside parties ---------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            for step in (self._webhooks, self._api_services, self._load_balancers, self._argo_finalizers,
                         self._device_plugins):
                try:
                    step()
                except ApiException as err:
                    if err.status not in (404, 409):
                        self.actions.append(f"{step.__name__}: {err.status} {err.reason}")
                except Exception as err:  # keep simulating; the log says what failed
                    self.actions.append(f"{step.__name__}: {err!r}")

    def _webhooks(self) -> None:
        api = AdmissionregistrationV1Api(self.cp.api)
        for lister, patcher in ((api.list_mutating_webhook_configuration, api.patch_mutating_webhook_configuration),
                                (api.list_validating_webhook_configuration,
                                 api.patch_validating_webhook_configuration)):
            for cfg in lister().items:
                hooks = cfg.webhooks or []
                if any(h.failure_policy != "Ignore" for h in hooks):
                    body = {"webhooks": [{"name": h.name, "failurePolicy": "Ignore", "timeoutSeconds": 1}
                                         for h in hooks]}
                    # Strategic merge on the webhook list is keyed by name.
                    patcher(cfg.metadata.name, body)
                    self.actions.append(f"webhook {cfg.metadata.name}: failurePolicy Ignore")

    def _api_services(self) -> None:
        api = ApiregistrationV1Api(self.cp.api)
        for svc in api.list_api_service().items:
            if svc.spec.service is not None:
                api.delete_api_service(svc.metadata.name)
                self.actions.append(f"APIService {svc.metadata.name}: removed (no server)")

    def _load_balancers(self) -> None:
        for svc in self.cp.core.list_service_for_all_namespaces().items:
            if svc.spec.type == "LoadBalancer" and not (svc.status.load_balancer and svc.status.load_balancer.ingress):
                host = f"{svc.metadata.name}.{svc.metadata.namespace}.lb.example.test"
                self.cp.core.patch_namespaced_service_status(
                    svc.metadata.name, svc.metadata.namespace,
                    {"status": {"loadBalancer": {"ingress": [{"hostname": host}]}}})
                self.actions.append(f"LoadBalancer {svc.metadata.namespace}/{svc.metadata.name}: {host}")

    def _argo_finalizers(self) -> None:
        try:
            apps = self.cp.dyn.resources.get(api_version="argoproj.io/v1alpha1", kind="Application")
        except Exception:
            self.cp.dyn.resources.invalidate_cache()
            return
        for app in apps.get().items:
            meta = app.metadata
            if meta.deletionTimestamp and set(meta.finalizers or []) & set(ARGO_FINALIZERS):
                keep = [f for f in meta.finalizers if f not in ARGO_FINALIZERS]
                self.cp.dyn.patch(apps, name=meta.name, namespace=meta.namespace,
                                  body={"metadata": {"finalizers": keep or None}},
                                  content_type="application/merge-patch+json")
                self.actions.append(f"Application {meta.namespace}/{meta.name}: finalizer done")

    def _device_plugins(self) -> None:
        if not self.devices:
            return
        ns, name = self.devices.plugin
        running = [p for p in owned_pods(self.cp, ns, "DaemonSet", name) if p.status.phase == "Running"]
        # Only nodes that do not advertise yet: the loop runs five times a second.
        pending = [shape for shape in self.devices.nodes
                   if not set(shape.devices_from_plugin) <= set(self.cp.core.read_node(shape.name).status.allocatable or {})]
        served = {p.spec.node_name for p in running}
        kube.advertise_plugin_devices(self.cp, pending, running)
        self.actions += [f"node {s.name}: plugin advertises {s.devices_from_plugin}" for s in pending if s.name in served]

def start(workdir: Path, nodes: list[kube.NodeShape], devices: Optional[Devices] = None) -> World:
    workdir.mkdir(parents=True, exist_ok=True)
    cp = kube.ControlPlane(workdir / "control-plane")
    world = World(cp, nodes, devices)
    try:
        (workdir / "kwok-stages.yaml").write_text(_stages())
        log = open(workdir / "kwok.log", "wb")
        world.kwok = subprocess.Popen(
            [str(engine_tools.bin_dir() / "kwok"), f"--kubeconfig={cp.kubeconfig}", "--manage-all-nodes=true",
             f"--cidr={POD_CIDR}", f"--config={workdir / 'kwok-stages.yaml'}", "--node-lease-duration-seconds=0"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        cp.apply(STORAGE_CLASS)
        kube.declare_nodes(cp, nodes)
        # A kubelet reports its node's address; kwok gives host-network pods (node exporters,
        # the CNI agent) that address, and leaves them Pending on a node without one.
        for i, shape in enumerate(nodes):
            cp.core.patch_node_status(shape.name, {"status": {"addresses": [
                {"type": "InternalIP", "address": f"{NODE_NET}.{i + 1}"},
                {"type": "Hostname", "address": shape.name}]}})
        world._thread = threading.Thread(target=world._loop, name="outside-parties", daemon=True)
        world._thread.start()
        time.sleep(0.5)
        if world.kwok.poll() is not None:
            raise RuntimeError(f"kwok exited: {(workdir / 'kwok.log').read_text()[-2000:]}")
    except BaseException:
        world.stop()
        raise
    return world
