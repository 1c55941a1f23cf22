from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import pulumi

from components.cluster.accelerators import Accelerator
from components.cluster.karpenter import KarpenterFacts


@dataclass(frozen=True)
class IngressFacts:
    """How the mesh's ingress Service is exposed on this kind of cluster."""

    service_type: str
    # Where users reach the ingress from outside, e.g. "192.168.105.2:30080"; None: read
    # it from the load balancer the ingress Service gets.
    address: Optional[pulumi.Input[str]]
    node_port: Optional[int] = None
    annotations: dict[str, str] = field(default_factory=dict)
    # Ingress gateway replicas kept at all times (more than one: spread and disruption budget).
    min_replicas: int = 1
    # A cloud load balancer: the annotations its service controller reads to keep it inside the
    # cluster's network. The stack's gateway config decides (see `exposed`).
    internal_annotations: dict[str, str] = field(default_factory=dict)

    def exposed(self, internet: bool) -> "IngressFacts":
        """These facts with the load balancer on the internet, or kept inside the network."""
        annotations = dict(self.annotations) if internet else {**self.annotations, **self.internal_annotations}
        return replace(self, annotations=annotations, internal_annotations={})


@dataclass(frozen=True)
class CacheClass:
    """The StorageClass model caches use: volumes fast enough to load weights, made only in
    the zone of the accelerator nodes so a cache and its pod always meet."""

    name: str
    # StorageClass fields (provisioner, parameters, allowed_topologies, ...).
    manifest: dict
    # Sustained MiB/s one volume gives: the startup budget is derived from it.
    throughput_mib_s: int


@dataclass(frozen=True)
class BuiltCluster:
    kubeconfig: pulumi.Input[str]
    ingress: IngressFacts
    # Host folder the model files are fetched into (mounted on the node at /mnt/models),
    # or None when the cluster stores models some other way.
    host_models_dir: Optional[str]
    context: Optional[str] = None
    # StorageClass for model caches; with a manifest, Cluster creates it (as the default class).
    storage_class: Optional[str] = None
    storage_class_manifest: Optional[dict] = None
    storage_ready: list = field(default_factory=list)
    # Where model caches live, on clusters that serve models from downloaded weights.
    cache_class: Optional[CacheClass] = None
    # Istio's `global.platform` for clusters whose CNI paths differ (gke, minikube, ...).
    istio_platform: Optional[str] = None
    # Whether the cluster's CNI enforces NetworkPolicies (and chains the Istio CNI plugin).
    network_policy_enforced: bool = False
    # Whether the cluster itself serves the resource metrics API (`metrics.k8s.io`) that CPU-based
    # HorizontalPodAutoscalers (Istio's ingress gateway and istiod) read; where it does not, the
    # platform installs metrics-server.
    serves_resource_metrics: bool = False
    # Address ranges of the cluster itself (nodes, pods, Services, control plane) beyond the
    # private ranges: egress "to the internet" must not reach them.
    internal_cidrs: list[pulumi.Input[str]] = field(default_factory=list)
    # What a node autoscaler the program installs on the cluster needs (Karpenter's facts on
    # eks); None where the cloud scales the pools itself or nothing does.
    node_autoscaler: Optional[KarpenterFacts] = None
    # One laptop-sized node: platform services take their light settings by default.
    small: bool = False
    # Nodes in more than one zone: stateful services run a primary and standbys by default.
    replicated: bool = False
    # Whether platform services can run on amd64 nodes: images published for amd64 alone (the
    # Inference Extension's body-based router) need one. minikube's krunkit driver runs arm64.
    amd64_nodes: bool = True


@dataclass(frozen=True)
class ClusterFacts:
    """What the cluster tells everything that runs on it, in one bag: the program reads these
    instead of asking which kind of cluster it is."""

    accelerator: Accelerator
    ingress: IngressFacts
    # Host folder the model files are fetched into (the nodes' /mnt/models); None: not a host's.
    host_models_dir: Optional[str]
    istio_platform: Optional[str]
    network_policy_enforced: bool
    internal_cidrs: list[pulumi.Input[str]]
    # The default StorageClass (None: the cluster's own default).
    storage_class: Optional[pulumi.Output[str]]
    # StorageClass of the model caches (the default class where the cluster has no own), and the
    # MiB/s one such volume sustains (None: unknown).
    cache_storage_class: Optional[pulumi.Output[str]]
    cache_throughput_mib_s: Optional[int]
    serving_priority_class: pulumi.Output[str]
    small: bool
    replicated: bool
    amd64_nodes: bool = True
