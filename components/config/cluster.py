"""Cluster section: which cluster the stack runs on and its node pools."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    Field,
    model_validator,
)

from components.config.base import DnsLabel, K8sVersion, MinikubeSize, _existing_file, _Model
from components.core.hardware import (
    EKS_GPU_TAINT,
    G2_GPUS,
    GKE_GPU_TAINT,
    GKE_TPU_TAINT,
    GPUS_PER_INSTANCE,
    TPU_ACCELERATOR_LABELS,
    AcceleratorPool,
    gpus_per_instance,
    topology_chips,
    tpu_host,
)

# --- cluster -------------------------------------------------------------------------------


class MinikubeCluster(_Model):
    """A minikube VM on the Mac (krunkit driver) with the host models folder mounted."""

    kind: Literal["minikube"]
    profile: DnsLabel = "llm-platform"
    driver: Literal["krunkit"] = "krunkit"
    cpus: int = Field(6, ge=2)
    memory: MinikubeSize = "12g"
    disk_size: MinikubeSize = "60g"
    kubernetes_version: K8sVersion = "v1.34.0"
    models_dir: str = Field(min_length=1)
    ingress_node_port: int = Field(30080, ge=30000, le=32767)


class NodeTaint(_Model):
    key: str = Field(min_length=1)
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


class ExistingAcceleratorNodes(_Model):
    """The nodes of an existing cluster that carry its GPUs or TPUs, as the scheduler sees them."""

    # Units of the accelerator one node advertises (GPUs, or a TPU host's chips).
    per_node: int = Field(ge=1)
    # How many such nodes there are (or, with `autoscaled`, the most the cluster's autoscaler adds).
    nodes: int = Field(1, ge=1)
    autoscaled: bool = False
    # Labels every such node has, which model pods select (e.g. nvidia.com/gpu.present: "true").
    labels: dict[str, str] = Field(min_length=1)
    # The taint only accelerator pods tolerate, if the nodes have one.
    taint: Optional[NodeTaint] = None
    # "chart": the program installs NVIDIA's device plugin on these nodes; "managed": the cluster
    # already advertises the resource (GPU Operator, GKE, a plugin of your own).
    device_plugin: Literal["chart", "managed"] = "managed"


class ExistingCluster(_Model):
    """A cluster the user already has, reached through a kubeconfig context."""

    kind: Literal["existing"]
    kubeconfig: Annotated[str, AfterValidator(_existing_file)] = Field("~/.kube/config", validate_default=True)
    context: Optional[str] = None
    kubernetes_version: K8sVersion = "v1.34.0"
    # Folder on the host where model files are fetched to; it must be mounted on the
    # node(s) at /mnt/models (kind extraMounts, k3d --volume, ...). None: manage files yourself.
    models_dir: Optional[str] = None
    ingress_service_type: Literal["LoadBalancer", "NodePort", "ClusterIP"] = "LoadBalancer"
    ingress_address: str = "localhost"
    # Whether this cluster's CNI enforces NetworkPolicies; the program cannot see it. The
    # model namespace's NetworkPolicies are created only when this says "enforced".
    network_policy: Literal["enforced", "unknown"] = "unknown"
    # Required to serve on accelerator kind nvidia or tpu: the nodes that carry it.
    accelerator_nodes: Optional[ExistingAcceleratorNodes] = None
    # Whether the program installs metrics-server for the CPU-based HPAs ("install"), or the
    # cluster serves the resource metrics API itself ("present": k3s, GKE, AKS, EKS with the
    # add-on). Default "present": installing it where one runs fails (its APIService is taken),
    # and on clusters whose kubelets have self-signed certificates (kind, kubeadm) it never
    # turns ready, so `up` would time out.
    metrics_server: Literal["install", "present"] = "present"

    def accelerator_pool(self, kind: str) -> AcceleratorPool:
        n = self.accelerator_nodes
        # StackConfig requires acceleratorNodes wherever an accelerator pool is asked for.
        assert n is not None, "cluster.acceleratorNodes is required to serve on nvidia or tpu"
        return AcceleratorPool(
            per_node=n.per_node,
            labels=dict(n.labels),
            taint=n.taint.model_dump() if n.taint else None,
            device_plugin="nvidia-chart" if n.device_plugin == "chart" else "managed",
            nodes=n.nodes,
            max_nodes=n.nodes,
            autoscaled=n.autoscaled,
        )


class NodeGroup(_Model):
    instance_type: str = Field(pattern=r"^[a-z0-9-]+\.[a-z0-9]+$")
    min_size: int = Field(1, ge=0)
    desired_size: int = Field(1, ge=0)
    max_size: int = Field(2, ge=1)
    disk_size_gb: int = Field(50, ge=20)

    @model_validator(mode="after")
    def _ordered(self) -> "NodeGroup":
        if not self.min_size <= self.desired_size <= self.max_size:
            raise ValueError(
                f"expected minSize <= desiredSize <= maxSize, got {self.min_size}, {self.desired_size}, {self.max_size}"
            )
        return self


def _gpu_instance(value: str) -> str:
    if gpus_per_instance(value) is None:
        families = ", ".join(f"{f}.*" for f in GPUS_PER_INSTANCE)
        raise ValueError(f"expected an NVIDIA GPU instance type ({families}), got {value!r}")
    return value


def _tpu_machine(value: str) -> str:
    if tpu_host(value) is None:
        kinds = " or ".join(f"{f}-1t/4t/8t" for f in TPU_ACCELERATOR_LABELS)
        raise ValueError(f"cannot derive the TPU accelerator from {value!r}; expected {kinds}")
    return value


GPU_AMI_TYPE = "AL2023_x86_64_NVIDIA"


def _supported_ami(value: str) -> str:
    if value.startswith("BOTTLEROCKET"):
        raise ValueError(
            f"{value} is not supported: Bottlerocket runs its own NVIDIA device plugin, which the one this stack "
            f"installs would run beside, and gives unprivileged containers no GPU by NVIDIA_VISIBLE_DEVICES (the "
            f"GPU metrics exporter would see none); use {GPU_AMI_TYPE}")
    if value != GPU_AMI_TYPE:
        raise ValueError(f"expected {GPU_AMI_TYPE!r}, got {value!r}")
    return value


class GpuNodeGroup(NodeGroup):
    instance_type: Annotated[str, AfterValidator(_gpu_instance)] = "g6.xlarge"
    # Further instance types Karpenter may choose from, each with as many GPUs as instanceType.
    extra_instance_types: list[Annotated[str, AfterValidator(_gpu_instance)]] = []
    # The EKS-optimized AL2023 NVIDIA AMI: the device plugin chart and the GPU metrics exporter
    # rely on its container runtime.
    ami_type: Annotated[str, AfterValidator(_supported_ami)] = GPU_AMI_TYPE
    min_size: int = Field(0, ge=0)
    disk_size_gb: int = Field(200, ge=50)
    # The one zone of the GPU nodes (default: the first of availabilityZones). An EBS model
    # cache lives in one zone: its pod must always find a GPU node there.
    zone: Optional[str] = Field(None, pattern=r"^[a-z]{2}(-gov)?-[a-z]+-[0-9][a-z]$")
    # "karpenter": GPU nodes appear for pending model pods, up to maxSize, and go when empty.
    # "none": a managed node group of desiredSize nodes that nothing scales.
    autoscaler: Literal["karpenter", "none"] = "karpenter"
    # Karpenter: how long a GPU node stays empty before it is removed.
    consolidate_after: str = Field("10m", pattern=r"^[0-9]+(s|m|h)$")
    # Karpenter: the EKS-optimized AMI release ("latest", or pinned such as "v20251120").
    ami_version: str = Field("latest", pattern=r"^(latest|v[0-9][0-9.]*)$")

    @model_validator(mode="after")
    def _fits_the_autoscaler(self) -> "GpuNodeGroup":
        if self.autoscaler == "karpenter":
            for key, field in (("minSize", "min_size"), ("desiredSize", "desired_size")):
                if field in self.model_fields_set:
                    raise ValueError(f"{key}: not used with autoscaler 'karpenter', which adds GPU nodes for "
                                     f"pending model pods up to maxSize and removes empty ones; remove the key")
        elif self.extra_instance_types:
            raise ValueError("extraInstanceTypes: only Karpenter chooses among instance types; a node group "
                             "(autoscaler 'none') runs instanceType")
        gpus = gpus_per_instance(self.instance_type)
        for other in self.extra_instance_types:
            if gpus_per_instance(other) != gpus:
                raise ValueError(f"extraInstanceTypes: expected types with {gpus} GPU(s) like {self.instance_type}, "
                                 f"got {other!r} ({gpus_per_instance(other)})")
        return self

    @property
    def instance_types(self) -> list[str]:
        return [self.instance_type, *self.extra_instance_types]


class EksCluster(_Model):
    """EKS in its own VPC: a system node group and a tainted NVIDIA GPU node group."""

    kind: Literal["eks"]
    name: DnsLabel = "llm-platform"
    region: str = Field(pattern=r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$")
    availability_zones: list[str] = Field(min_length=2)
    kubernetes_version: str = Field("1.33", pattern=r"^1\.[0-9]+$")
    vpc_cidr: str = Field("10.0.0.0/16", pattern=r"^[0-9.]+/16$")
    system_nodes: NodeGroup = NodeGroup(instance_type="m6i.xlarge", min_size=2, desired_size=2, max_size=3)
    gpu_nodes: GpuNodeGroup = GpuNodeGroup()

    @property
    def gpu_zone(self) -> str:
        return self.gpu_nodes.zone or self.availability_zones[0]

    def accelerator_pool(self, kind: str) -> AcceleratorPool:
        per_node = gpus_per_instance(self.gpu_nodes.instance_type)
        assert per_node is not None  # gpuNodes.instanceType is validated to be a GPU instance type
        return AcceleratorPool(
            per_node=per_node,
            labels={"llm-platform/accelerator": "nvidia"},
            taint=EKS_GPU_TAINT,
            device_plugin="nvidia-chart",
            # Karpenter adds nodes for pending pods up to maxSize; a plain node group has its
            # desired size and nothing scales it.
            nodes=0 if self.karpenter else self.gpu_nodes.desired_size,
            max_nodes=self.gpu_nodes.max_size,
            autoscaled=self.karpenter,
        )

    @property
    def karpenter(self) -> bool:
        return self.gpu_nodes.autoscaler == "karpenter"

    @model_validator(mode="after")
    def _zones_in_region(self) -> "EksCluster":
        for zone in self.availability_zones:
            if not re.match(rf"^{re.escape(self.region)}[a-z]$", zone):
                raise ValueError(f"availabilityZones: expected zones of {self.region} such as {self.region}a, got {zone!r}")
        if self.gpu_nodes.zone and self.gpu_nodes.zone not in self.availability_zones:
            raise ValueError(f"gpuNodes.zone: expected one of availabilityZones {self.availability_zones}, "
                             f"got {self.gpu_nodes.zone!r}")
        return self


class GkeNodePool(_Model):
    machine_type: str = Field("e2-standard-4", pattern=r"^[a-z0-9]+-[a-z0-9-]+$")
    min_nodes: int = Field(1, ge=0)
    max_nodes: int = Field(3, ge=1)


class TpuNodePool(GkeNodePool):
    machine_type: Annotated[str, AfterValidator(_tpu_machine)] = "ct5lp-hightpu-4t"
    min_nodes: int = Field(0, ge=0)
    max_nodes: int = Field(1, ge=1)
    # A zone of the region that offers this TPU generation.
    zone: str = Field(pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
    # Only for multi-host slices, e.g. "4x4"; single-host pools take the host's topology.
    topology: Optional[str] = Field(None, pattern=r"^[0-9]+x[0-9]+(x[0-9]+)?$")
    spot: bool = False

    @property
    def slice_hosts(self) -> int:
        """Hosts of one slice: 1, or every host of a multi-host topology."""
        host = tpu_host(self.machine_type)
        return max(1, topology_chips(self.topology) // host.chips) if self.topology and host else 1

    @model_validator(mode="after")
    def _whole_slices(self) -> "TpuNodePool":
        hosts = self.slice_hosts
        if hosts > 1 and (self.max_nodes != hosts or self.min_nodes not in (0, hosts)):
            raise ValueError(f"maxNodes: a {self.topology} slice of {self.machine_type} is {hosts} hosts and "
                             f"scales as a whole: expected maxNodes {hosts} and minNodes 0 or {hosts}, "
                             f"got {self.min_nodes}..{self.max_nodes}")
        return self


def _g2_machine(value: str) -> str:
    if value not in G2_GPUS:
        raise ValueError(f"expected a G2 (NVIDIA L4) machine type such as 'g2-standard-8', got {value!r}")
    return value


class GpuNodePool(GkeNodePool):
    """NVIDIA L4 GPUs on G2 machines, drivers installed by GKE."""

    machine_type: Annotated[str, AfterValidator(_g2_machine)] = "g2-standard-8"
    accelerator_type: Literal["nvidia-l4"] = "nvidia-l4"
    min_nodes: int = Field(0, ge=0)
    max_nodes: int = Field(1, ge=1)
    zone: str = Field(pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
    spot: bool = False

    @property
    def gpus(self) -> int:
        return G2_GPUS[self.machine_type]


class GkeCluster(_Model):
    """GKE Standard in its own VPC network: a system pool and a TPU or GPU pool."""

    kind: Literal["gke"]
    name: DnsLabel = "llm-platform"
    project: str = Field(pattern=r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
    region: str = Field(pattern=r"^[a-z]+-[a-z]+[0-9]+$")
    # A region for a regional control plane, or a zone for a zonal one.
    location: Optional[str] = Field(None, pattern=r"^[a-z]+-[a-z]+[0-9]+(-[a-z])?$")
    release_channel: Literal["RAPID", "REGULAR", "STABLE"] = "REGULAR"
    kubernetes_version: str = Field("1.33", pattern=r"^1\.[0-9]+$")
    subnet_cidr: str = Field("10.10.0.0/20", pattern=r"^[0-9.]+/[0-9]+$")
    system_pool: GkeNodePool = GkeNodePool()
    tpu_pool: Optional[TpuNodePool] = None
    gpu_pool: Optional[GpuNodePool] = None

    def accelerator_pool(self, kind: str) -> AcceleratorPool:
        # StackConfig requires the pool of the accelerator it serves on.
        if kind == "tpu":
            tpu = self.tpu_pool
            assert tpu is not None, "cluster.tpuPool is required to serve on tpu"
            host = tpu_host(tpu.machine_type)
            assert host is not None  # tpuPool.machineType is validated to name a TPU host
            return AcceleratorPool(
                per_node=host.chips,
                labels={
                    "cloud.google.com/gke-tpu-accelerator": host.accelerator_label,
                    "cloud.google.com/gke-tpu-topology": tpu.topology or host.topology,
                },
                taint=GKE_TPU_TAINT,
                device_plugin="managed",
                # A pool with `autoscaling` runs GKE's autoscaler: it adds nodes up to the max.
                nodes=tpu.min_nodes,
                max_nodes=tpu.max_nodes,
                autoscaled=True,
            )
        gpu = self.gpu_pool
        assert gpu is not None, "cluster.gpuPool is required to serve on nvidia"
        return AcceleratorPool(
            per_node=gpu.gpus,
            labels={"cloud.google.com/gke-accelerator": gpu.accelerator_type},
            taint=GKE_GPU_TAINT,
            device_plugin="managed",
            nodes=gpu.min_nodes,
            max_nodes=gpu.max_nodes,
            autoscaled=True,
        )

    @model_validator(mode="after")
    def _pools_in_region(self) -> "GkeCluster":
        if (self.tpu_pool is None) == (self.gpu_pool is None):
            raise ValueError("tpuPool: expected exactly one accelerator pool, tpuPool or gpuPool")
        zones = [("location", self.location)]
        zones += [("tpuPool.zone", self.tpu_pool.zone)] if self.tpu_pool else []
        zones += [("gpuPool.zone", self.gpu_pool.zone)] if self.gpu_pool else []
        for key, zone in zones:
            if zone and not zone.startswith(self.region):
                raise ValueError(f"{key}: expected {self.region} or one of its zones, got {zone!r}")
        return self


ClusterConfig = Annotated[
    Union[MinikubeCluster, ExistingCluster, EksCluster, GkeCluster], Field(discriminator="kind")
]
CLUSTER_KINDS = ("minikube", "existing", "eks", "gke")
