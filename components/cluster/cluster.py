"""Cluster: the Kubernetes cluster of a stack and the provider every other component uses."""

from __future__ import annotations

from typing import Any, Callable, Mapping, NotRequired, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.cluster import eks, existing, gke, minikube
from components.cluster.accelerators import Accelerator
from components.cluster.base import BuiltCluster, ClusterFacts
from components.cluster.metrics_server import MetricsServer
from components.cluster.node_autoscaler import GpuNodeAutoscaler
from components.config import ClusterConfig

SERVING_PRIORITY_CLASS = "llm-serving"

# The one place a stack's kind of cluster picks its implementation (each takes its own kind's config).
_BUILDERS: dict[str, Callable[[pulumi.Resource, str, Any, Mapping[tuple[str, str], str]], BuiltCluster]] = {
    "minikube": minikube.build,
    "existing": existing.build,
    "eks": eks.build,
    "gke": gke.build,
}


class ClusterArgs(TypedDict):
    config: ClusterConfig
    accelerator: Accelerator
    # Whether a cloud load balancer in front of the ingress faces the internet (else it stays
    # inside the cluster's network); nothing to decide on other clusters.
    internet_facing: bool
    # Service accounts (namespace, name) that act as an IAM role on the cloud, by that role's ARN:
    # EKS Pod Identity associations; the other kinds ignore it (GKE binds by annotation).
    pod_identities: NotRequired[Mapping[tuple[str, str], str]]


class Cluster(pulumi.ComponentResource):
    kubeconfig: pulumi.Output[str]
    # Every component that runs on the cluster gets it through its resource options.
    provider: k8s.Provider
    facts: ClusterFacts

    def __init__(self, name: str, args: ClusterArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:Cluster", name, None, opts)
        cfg = args["config"]
        built = _BUILDERS[cfg.kind](self, name, cfg, args.get("pod_identities", {}))

        self.kubeconfig = pulumi.Output.secret(built.kubeconfig)
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            context=built.context,
            # Lets `pulumi destroy` finish after the cluster itself is already gone.
            delete_unreachable=True,
            # A rotated key or a new model changes a Secret's or ConfigMap's data: update it in
            # place (the workloads that read it roll on their checksum annotation). Without these
            # the provider replaces them, and a fixed name means delete-then-create, a window in
            # which pods that mount them cannot start.
            enable_secret_mutable=True,
            enable_config_map_mutable=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        # Model servers outrank ordinary workloads when nodes are short.
        serving_priority_class = k8s.scheduling.v1.PriorityClass(
            f"{name}-serving-priority",
            metadata={"name": SERVING_PRIORITY_CLASS},
            value=100000,
            global_default=False,
            description="llm-platform model servers",
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider),
        ).metadata.name
        storage_class = None
        if built.storage_class_manifest:
            sc = k8s.storage.v1.StorageClass(
                f"{name}-{built.storage_class}",
                metadata={
                    "name": built.storage_class,
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                **built.storage_class_manifest,
                opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=built.storage_ready),
            )
            storage_class = sc.metadata.name
        elif built.storage_class:
            storage_class = pulumi.Output.from_input(built.storage_class)
        cache_storage_class, cache_throughput_mib_s = storage_class, None
        if built.cache_class:
            cache_storage_class = k8s.storage.v1.StorageClass(
                f"{name}-{built.cache_class.name}",
                metadata={"name": built.cache_class.name},
                **built.cache_class.manifest,
                opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=built.storage_ready),
            ).metadata.name
            cache_throughput_mib_s = built.cache_class.throughput_mib_s
        self.facts = ClusterFacts(
            accelerator=args["accelerator"],
            ingress=built.ingress.exposed(args["internet_facing"]),
            host_models_dir=built.host_models_dir,
            istio_platform=built.istio_platform,
            network_policy_enforced=built.network_policy_enforced,
            internal_cidrs=built.internal_cidrs,
            storage_class=storage_class,
            cache_storage_class=cache_storage_class,
            cache_throughput_mib_s=cache_throughput_mib_s,
            serving_priority_class=serving_priority_class,
            small=built.small,
            replicated=built.replicated,
            amd64_nodes=built.amd64_nodes,
        )
        # Karpenter on eks: GPU nodes follow pending model pods (GKE's pools scale themselves).
        # What runs on the cluster inherits its provider.
        on_cluster = pulumi.ResourceOptions(parent=self, providers=[self.provider])
        self.node_autoscaler = GpuNodeAutoscaler(f"{name}-gpu-nodes", {
            "facts": built.node_autoscaler,
        }, opts=on_cluster) if built.node_autoscaler else None
        # The resource metrics API the CPU-based HPAs read, where the cluster does not serve it.
        self.metrics_server = None if built.serves_resource_metrics else MetricsServer(
            f"{name}-metrics-server", {}, opts=on_cluster)
        self.register_outputs({"kubeconfig": self.kubeconfig, "storageClass": storage_class,
                               "cacheStorageClass": cache_storage_class})
