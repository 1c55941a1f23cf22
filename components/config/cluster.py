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
    """`minikube`: a VM on an Apple Silicon Mac, the Mac GPU reached through Vulkan."""
    profile: DnsLabel = "llm-platform"
    """The minikube profile (the VM); started when not running, deleted by `pulumi destroy`."""
    driver: Literal["krunkit"] = "krunkit"
    """minikube's VM driver: krunkit, which hands the Mac GPU to the VM."""
    cpus: int = Field(6, ge=2)
    """CPUs of the VM."""
    memory: MinikubeSize = "12g"
    """Memory of the VM."""
    disk_size: MinikubeSize = "60g"
    """Disk of the VM."""
    kubernetes_version: K8sVersion = "v1.34.0"
    """The Kubernetes version minikube runs."""
    models_dir: str = Field(min_length=1)
    """Host folder with the GGUF files, mounted in the VM at `/mnt/models`; created when missing,
    models are downloaded into it, and `pulumi destroy` never touches it."""
    ingress_node_port: int = Field(30080, ge=30000, le=32767)
    """Port of the ingress on the VM's IP (HTTPS on the next port)."""


class NodeTaint(_Model):
    """A node taint, as `kubectl taint` writes it: key=value:effect."""

    key: str = Field(min_length=1)
    """The taint's key."""
    value: str = ""
    """The taint's value (may be empty)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"
    """The taint's effect."""


class ExistingAcceleratorNodes(_Model):
    """The nodes of an existing cluster that carry its GPUs or TPUs, as the scheduler sees them."""

    per_node: int = Field(ge=1)
    """Units of the accelerator one node advertises (GPUs, or a TPU host's chips)."""
    nodes: int = Field(1, ge=1)
    """How many such nodes there are (or, with `autoscaled`, the most the cluster's autoscaler adds)."""
    autoscaled: bool = False
    """Whether the cluster's own autoscaler adds such nodes for pending pods, up to `nodes`."""
    labels: dict[str, str] = Field(min_length=1)
    """Labels every such node has, which model pods select (e.g. `nvidia.com/gpu.present: "true"`)."""
    taint: Optional[NodeTaint] = None
    """The taint only accelerator pods tolerate, if the nodes have one."""
    device_plugin: Literal["chart", "managed"] = "managed"
    """`chart`: the program installs NVIDIA's device plugin on these nodes; `managed`: the cluster
    already advertises the resource (GPU Operator, GKE, a plugin of your own)."""


class ExistingCluster(_Model):
    """A cluster the user already has, reached through a kubeconfig context."""

    kind: Literal["existing"]
    """`existing`: a cluster you already have (kind, k3d, a lab cluster); nothing is created."""
    kubeconfig: Annotated[str, AfterValidator(_existing_file)] = Field("~/.kube/config", validate_default=True)
    """The kubeconfig file that reaches the cluster. In the Pulumi Kubernetes Operator's
    workspace (`gitops.pulumiOperator`) the program reaches the cluster it runs in through its
    service account instead."""
    context: Optional[str] = None
    """The kubeconfig context; none: the file's current context."""
    kubernetes_version: K8sVersion = "v1.34.0"
    """The Kubernetes version the cluster runs, which the offline render and the suite render
    charts and validate objects for; nothing on the cluster changes with it."""
    models_dir: Optional[str] = None
    """Folder on the host where model files are fetched to; it must be mounted on the node(s) at
    `/mnt/models` (kind `extraMounts`, k3d `--volume`, ...). None: manage the files yourself."""
    ingress_service_type: Literal["LoadBalancer", "NodePort", "ClusterIP"] = "LoadBalancer"
    """The type of the ingress gateway's Service."""
    ingress_address: str = "localhost"
    """Where clients reach the ingress (host, or host:port); the URL outputs (`apiBaseUrl`,
    `uiUrl`, `grafanaUrl`) name it."""
    amd64_nodes: bool = True
    """Whether the cluster has amd64 nodes for the platform's services. The ingress's body-based
    router is published for amd64 alone; false (kind or k3d on Apple Silicon) leaves it out, and the
    ingress then routes straight only to llama.cpp's router (`llamaRouter.enabled`), which reads the
    model's name itself; other models go through the front door."""
    network_policy: Literal["enforced", "unknown"] = "unknown"
    """Whether this cluster's CNI enforces NetworkPolicies; the program cannot see it. NetworkPolicies
    are created only when this says `enforced` (set it once the CNI enforces them; until then `up`
    warns)."""
    accelerator_nodes: Optional[ExistingAcceleratorNodes] = None
    """Required to serve on accelerator kind `nvidia` or `tpu`: the nodes that carry it, as the
    scheduler sees them."""
    metrics_server: Literal["install", "present"] = "present"
    """`install`: the program installs the metrics-server chart, for a cluster that serves no
    `metrics.k8s.io` (the ingress gateway's and istiod's CPU-based HPAs read it; without it they stay
    at their minimum, reporting `FailedGetResourceMetric`). `present`: the cluster serves the resource
    metrics API itself (k3s and k3d bundle one; GKE, AKS, EKS with the add-on) and nothing is
    installed: a second metrics-server fails where one runs (its APIService is taken), and on
    clusters whose kubelets have self-signed certificates (kind, kubeadm) its kubelet scrapes fail
    and it never turns ready, so `up` would time out."""

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
    """An EKS managed node group."""

    instance_type: str = Field(pattern=r"^[a-z0-9-]+\.[a-z0-9]+$")
    """The EC2 instance type of its nodes."""
    min_size: int = Field(1, ge=0)
    """Fewest nodes; at most `desiredSize`."""
    desired_size: int = Field(1, ge=0)
    """Nodes the group runs; between `minSize` and `maxSize`."""
    max_size: int = Field(2, ge=1)
    """Most nodes."""
    disk_size_gb: int = Field(50, ge=20)
    """Root disk of each node, in GB."""

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


# The rule as the config reference states it: the instance types whose GPUs are known.
_gpu_instance.__doc__ = "an NVIDIA GPU instance type: " + "; ".join(
    f"{family}.{'/'.join(sizes)}" for family, sizes in GPUS_PER_INSTANCE.items())


def _tpu_machine(value: str) -> str:
    if tpu_host(value) is None:
        kinds = " or ".join(f"{f}-1t/4t/8t" for f in TPU_ACCELERATOR_LABELS)
        raise ValueError(f"cannot derive the TPU accelerator from {value!r}; expected {kinds}")
    return value


_tpu_machine.__doc__ = "a TPU machine type: " + " or ".join(f"{f}-1t/4t/8t" for f in TPU_ACCELERATOR_LABELS)


GPU_AMI_TYPE = "AL2023_x86_64_NVIDIA"


def _supported_ami(value: str) -> str:
    """AL2023_x86_64_NVIDIA (Bottlerocket is refused)"""
    if value.startswith("BOTTLEROCKET"):
        raise ValueError(
            f"{value} is not supported: Bottlerocket runs its own NVIDIA device plugin, which the one this stack "
            f"installs would run beside, and gives unprivileged containers no GPU by NVIDIA_VISIBLE_DEVICES (the "
            f"GPU metrics exporter would see none); use {GPU_AMI_TYPE}")
    if value != GPU_AMI_TYPE:
        raise ValueError(f"expected {GPU_AMI_TYPE!r}, got {value!r}")
    return value


class GpuNodeGroup(NodeGroup):
    """The tainted NVIDIA GPU nodes: added by Karpenter on demand, or a managed node group."""

    instance_type: Annotated[str, AfterValidator(_gpu_instance)] = "g6.xlarge"
    """The EC2 GPU instance type; its GPU count bounds a model's `accelerators`."""
    extra_instance_types: list[Annotated[str, AfterValidator(_gpu_instance)]] = []
    """Karpenter only: further instance types it may choose from, each with as many GPUs as
    `instanceType`."""
    ami_type: Annotated[str, AfterValidator(_supported_ami)] = GPU_AMI_TYPE
    """The EKS-optimized AL2023 NVIDIA AMI: the device plugin chart and the GPU metrics exporter
    rely on its container runtime. Bottlerocket is refused (its NVIDIA variants run their own device
    plugin, and give unprivileged containers no GPU by `NVIDIA_VISIBLE_DEVICES`)."""
    min_size: int = Field(0, ge=0)
    """Autoscaler `none` only: fewest nodes of the node group."""
    desired_size: int = Field(1, ge=0)
    """Autoscaler `none` only: GPU nodes the node group runs."""
    max_size: int = Field(2, ge=1)
    """Most GPU nodes: Karpenter's limit (`maxSize` × the instance's GPUs), or the node group's."""
    disk_size_gb: int = Field(200, ge=50)
    """Root disk of each GPU node (encrypted gp3), in GB."""
    zone: Optional[str] = Field(None, pattern=r"^[a-z]{2}(-gov)?-[a-z]+-[0-9][a-z]$")
    """The one zone of the GPU nodes, one of `availabilityZones` (default: the first). An EBS
    model cache lives in one zone: its pod must always find a GPU node there."""
    autoscaler: Literal["karpenter", "none"] = "karpenter"
    """`karpenter`: GPU nodes appear for pending model pods, up to `maxSize`, and go when empty
    (`minSize` and `desiredSize` are then refused). `none`: a managed node group of `desiredSize`
    nodes that nothing scales."""
    consolidate_after: str = Field("10m", pattern=r"^[0-9]+(s|m|h)$")
    """Karpenter: how long a GPU node stays empty before it is removed."""
    ami_version: str = Field("latest", pattern=r"^(latest|v[0-9][0-9.]*)$")
    """Karpenter: the EKS-optimized AMI release (`latest`, or pinned such as `v20251120`)."""

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


def _iam_role(value: str) -> str:
    """an IAM role ARN such as `arn:aws:iam::123456789012:role/ci`"""
    if not re.fullmatch(r"arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]+", value):
        raise ValueError(f"expected an IAM role ARN such as 'arn:aws:iam::123456789012:role/ci', got {value!r}")
    return value


class EksCluster(_Model):
    """EKS in its own VPC: a system node group and a tainted NVIDIA GPU node group."""

    kind: Literal["eks"]
    """`eks`: an EKS cluster in its own VPC, made by the program."""
    name: DnsLabel = "llm-platform"
    """Name of the cluster (and of its VPC and other AWS resources)."""
    region: str = Field(pattern=r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$")
    """The AWS region."""
    availability_zones: list[str] = Field(min_length=2)
    """Zones of the region the VPC's subnets span (at least two)."""
    kubernetes_version: str = Field("1.33", pattern=r"^1\.[0-9]+$")
    """The EKS Kubernetes version."""
    vpc_cidr: str = Field("10.0.0.0/16", pattern=r"^[0-9.]+/16$")
    """The VPC's address range (a /16)."""
    system_nodes: NodeGroup = NodeGroup(instance_type="m6i.xlarge", min_size=2, desired_size=2, max_size=3)
    """The node group for everything but the models."""
    gpu_nodes: GpuNodeGroup = GpuNodeGroup()
    """The GPU nodes the model servers run on."""
    admin_roles: list[Annotated[str, AfterValidator(_iam_role)]] = []
    """IAM roles made the cluster's admins (EKS access entries): CI's, your own, the Pulumi
    Kubernetes Operator workspace's. Empty: the role that runs `pulumi up`, one at a time (another
    caller's `up` replaces it). A change replaces the entries it touches."""

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
    """A GKE node pool that GKE's autoscaler sizes."""

    machine_type: str = Field("e2-standard-4", pattern=r"^[a-z0-9]+-[a-z0-9-]+$")
    """The Compute Engine machine type of its nodes."""
    min_nodes: int = Field(1, ge=0)
    """Fewest nodes, in all (not per zone)."""
    max_nodes: int = Field(3, ge=1)
    """Most nodes, in all (not per zone)."""


class TpuNodePool(GkeNodePool):
    """A TPU pool: single hosts, or whole multi-host slices; GKE runs the device plugin."""

    machine_type: Annotated[str, AfterValidator(_tpu_machine)] = "ct5lp-hightpu-4t"
    """The TPU machine type (v5e `ct5lp-hightpu-*`, v6e `ct6e-standard-*`); a model pod takes
    every chip of one host."""
    min_nodes: int = Field(0, ge=0)
    """Fewest TPU hosts, in all; with a multi-host `topology`, 0 or the slice's host count."""
    max_nodes: int = Field(1, ge=1)
    """Most TPU hosts, in all; with a multi-host `topology`, the slice's host count (a slice is
    added and removed whole)."""
    zone: str = Field(pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
    """A zone of the region that offers this TPU generation."""
    topology: Optional[str] = Field(None, pattern=r"^[0-9]+x[0-9]+(x[0-9]+)?$")
    """Only for multi-host slices, e.g. `4x4`; single-host pools take the host's topology."""
    spot: bool = False
    """Spot VMs for the pool's nodes."""

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


_g2_machine.__doc__ = "a G2 (NVIDIA L4) machine type: " + ", ".join(G2_GPUS)


class GpuNodePool(GkeNodePool):
    """NVIDIA L4 GPUs on G2 machines, drivers installed by GKE."""

    machine_type: Annotated[str, AfterValidator(_g2_machine)] = "g2-standard-8"
    """The G2 machine type; its L4 count bounds a model's `accelerators`."""
    accelerator_type: Literal["nvidia-l4"] = "nvidia-l4"
    """The GPU; model pods select `cloud.google.com/gke-accelerator` with it."""
    min_nodes: int = Field(0, ge=0)
    """Fewest GPU nodes, in all."""
    max_nodes: int = Field(1, ge=1)
    """Most GPU nodes, in all."""
    zone: str = Field(pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
    """A zone of the region that offers L4 GPUs."""
    spot: bool = False
    """Spot VMs for the pool's nodes."""

    @property
    def gpus(self) -> int:
        return G2_GPUS[self.machine_type]


class GkeCluster(_Model):
    """GKE Standard in its own VPC network: a system pool and a TPU or GPU pool."""

    kind: Literal["gke"]
    """`gke`: a GKE Standard cluster in its own network, made by the program."""
    name: DnsLabel = "llm-platform"
    """Name of the cluster (and of its network and subnet)."""
    project: str = Field(pattern=r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
    """Your GCP project id."""
    region: str = Field(pattern=r"^[a-z]+-[a-z]+[0-9]+$")
    """The GCP region."""
    location: Optional[str] = Field(None, pattern=r"^[a-z]+-[a-z]+[0-9]+(-[a-z])?$")
    """A region for a regional control plane, or a zone for a zonal one; none: `region`."""
    release_channel: Literal["RAPID", "REGULAR", "STABLE"] = "REGULAR"
    """GKE's release channel."""
    kubernetes_version: str = Field("1.33", pattern=r"^1\.[0-9]+$")
    """The control plane's minimum Kubernetes version."""
    subnet_cidr: str = Field("10.10.0.0/20", pattern=r"^[0-9.]+/[0-9]+$")
    """The subnet's address range."""
    system_pool: GkeNodePool = GkeNodePool()
    """The pool for everything but the models, spread over the location's zones."""
    tpu_pool: Optional[TpuNodePool] = None
    """The TPU pool (accelerator `tpu`); exactly one of `tpuPool` and `gpuPool`."""
    gpu_pool: Optional[GpuNodePool] = None
    """The NVIDIA L4 pool (accelerator `nvidia`); exactly one of `tpuPool` and `gpuPool`."""

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
