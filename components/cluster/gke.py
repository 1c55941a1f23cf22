"""GKE Standard in its own VPC network: a system pool and a TPU (or NVIDIA L4) pool, Workload
Identity on, and a kubeconfig that authenticates with `gke-gcloud-auth-plugin`."""

from __future__ import annotations

import json
from typing import Mapping

import pulumi
import pulumi_gcp as gcp

from components.cluster.base import BuiltCluster, CacheClass, IngressFacts
from components.config import GkeCluster, GpuNodePool, TpuNodePool
from components.core.hardware import gke_cache_disk, topology_chips, tpu_host

# GKE's own balanced-PD class, present on every cluster.
STORAGE_CLASS = "standard-rwo"
CACHE_CLASS = "model-cache"
# pd-balanced gives a fixed 140 MiB/s per disk plus a little per GiB; Hyperdisk Balanced (the
# only kind TPU v6e attaches) is provisioned: 500 MiB/s reads a 140 GiB model in ~5 minutes.
PD_BALANCED_MIB_S = 140
HYPERDISK_MIB_S = 500
HYPERDISK_IOPS = 4000
_WORKLOAD_METADATA: gcp.container.NodePoolNodeConfigWorkloadMetadataConfigArgsDict = {"mode": "GKE_METADATA"}
_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
POD_RANGE = "10.64.0.0/14"
SERVICE_RANGE = "10.68.0.0/20"
# GKE Dataplane V2 (Cilium) enforces NetworkPolicies; its CNI config is what the Istio CNI
# plugin chains onto (`global.platform: gke` finds GKE's CNI binary folder).
DATAPATH = "ADVANCED_DATAPATH"
# GKE's service controller makes an internal passthrough Network Load Balancer (an address of
# the cluster's subnet) for a LoadBalancer Service so annotated, else an external one.
INTERNAL_LB_ANNOTATIONS = {"networking.gke.io/load-balancer-type": "Internal"}
# The ingress keeps two replicas through node drains.
INGRESS_REPLICAS = 2


def kubeconfig(name: pulumi.Input[str], endpoint: pulumi.Input[str], ca: pulumi.Input[str]):
    def render(args):
        cluster_name, host, ca_data = args
        return json.dumps({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": cluster_name, "cluster": {
                "server": f"https://{host}", "certificate-authority-data": ca_data}}],
            "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}],
            "current-context": cluster_name,
            "users": [{"name": cluster_name, "user": {"exec": {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "command": "gke-gcloud-auth-plugin",
                "provideClusterInfo": True,
                "interactiveMode": "Never",
            }}}],
        })

    return pulumi.Output.all(name, endpoint, ca).apply(render)


def tpu_placement(cfg: GkeCluster) -> gcp.container.NodePoolPlacementPolicyArgsDict | None:
    """Only a multi-host slice needs a topology and compact placement."""
    pool = cfg.tpu_pool
    assert pool is not None  # asked for the TPU pool only
    host = tpu_host(pool.machine_type)
    assert host is not None  # tpuPool.machineType is validated to name a TPU host
    if pool.topology and topology_chips(pool.topology) > host.chips:
        return {"type": "COMPACT", "tpu_topology": pool.topology}
    return None


def build(parent: pulumi.Resource, name: str, cfg: GkeCluster,
          pod_identities: Mapping[tuple[str, str], str]) -> BuiltCluster:
    provider = gcp.Provider(f"{name}-gcp", project=cfg.project, region=cfg.region,
                            opts=pulumi.ResourceOptions(parent=parent))
    opts = pulumi.ResourceOptions(parent=parent, provider=provider)
    location = cfg.location or cfg.region

    network = gcp.compute.Network(f"{name}-network", name=cfg.name, auto_create_subnetworks=False, opts=opts)
    subnet = gcp.compute.Subnetwork(
        f"{name}-subnet", name=cfg.name, network=network.id, region=cfg.region, ip_cidr_range=cfg.subnet_cidr,
        secondary_ip_ranges=[
            {"range_name": "pods", "ip_cidr_range": POD_RANGE},
            {"range_name": "services", "ip_cidr_range": SERVICE_RANGE},
        ],
        private_ip_google_access=True,
        opts=opts,
    )
    cluster = gcp.container.Cluster(
        f"{name}-gke",
        name=cfg.name,
        location=location,
        network=network.id,
        subnetwork=subnet.id,
        # Node pools are managed below, one by one.
        remove_default_node_pool=True,
        initial_node_count=1,
        release_channel={"channel": cfg.release_channel},
        min_master_version=cfg.kubernetes_version,
        workload_identity_config={"workload_pool": f"{cfg.project}.svc.id.goog"},
        ip_allocation_policy={"cluster_secondary_range_name": "pods", "services_secondary_range_name": "services"},
        datapath_provider=DATAPATH,
        deletion_protection=False,
        opts=opts,
    )
    gcp.container.NodePool(
        f"{name}-system",
        name="system",
        cluster=cluster.name,
        location=location,
        # Totals: on a regional cluster the pool spans the region's zones, where the per-zone
        # min/max_node_count would multiply the sizes by the number of zones.
        autoscaling={"total_min_node_count": cfg.system_pool.min_nodes,
                     "total_max_node_count": cfg.system_pool.max_nodes},
        node_config={"machine_type": cfg.system_pool.machine_type, "oauth_scopes": _SCOPES,
                     "workload_metadata_config": _WORKLOAD_METADATA, "labels": {"llm-platform/pool": "system"}},
        opts=opts,
    )
    pool: TpuNodePool | GpuNodePool
    accelerator_config: gcp.container.NodePoolNodeConfigArgsDict
    if cfg.tpu_pool:
        pool, kind, placement = cfg.tpu_pool, "tpu", tpu_placement(cfg)
        accelerator_config = {}
    else:
        gpu_pool = cfg.gpu_pool
        assert gpu_pool is not None  # the config asks for exactly one accelerator pool
        pool, kind, placement = gpu_pool, "gpu", None
        # GKE installs the NVIDIA driver and runs the device plugin itself.
        accelerator_config = {"guest_accelerators": [{
            "type": gpu_pool.accelerator_type,
            "count": gpu_pool.gpus,
            "gpu_driver_installation_config": {"gpu_driver_version": "LATEST"},
        }]}
    node_config: gcp.container.NodePoolNodeConfigArgsDict = {
        "machine_type": pool.machine_type,
        "spot": pool.spot,
        "oauth_scopes": _SCOPES,
        "workload_metadata_config": _WORKLOAD_METADATA,
        # Take on-demand capacity unless a reservation is configured explicitly.
        "reservation_affinity": {"consume_reservation_type": "NO_RESERVATION"},
        "labels": {"llm-platform/pool": kind},
        **accelerator_config,
    }
    gcp.container.NodePool(
        f"{name}-{kind}",
        name=kind,
        cluster=cluster.name,
        location=location,
        node_locations=[pool.zone],
        # GKE's autoscaler adds nodes for pending pods and removes empty ones, down to zero; the
        # counts are totals for the pool (one zone). A multi-host slice is added and removed whole.
        autoscaling={"total_min_node_count": pool.min_nodes, "total_max_node_count": pool.max_nodes},
        node_config=node_config,
        placement_policy=placement,
        opts=opts,
    )
    return BuiltCluster(
        replicated=True,
        kubeconfig=kubeconfig(cluster.name, cluster.endpoint, cluster.master_auth.cluster_ca_certificate),
        ingress=IngressFacts(service_type="LoadBalancer", address=None, min_replicas=INGRESS_REPLICAS,
                             internal_annotations=dict(INTERNAL_LB_ANNOTATIONS)),
        istio_platform="gke",
        host_models_dir=None,
        storage_class=STORAGE_CLASS,
        network_policy_enforced=True,
        # GKE runs metrics-server in every cluster itself.
        serves_resource_metrics=True,
        # The control plane's endpoint is a public address on a public cluster.
        internal_cidrs=[cfg.subnet_cidr, POD_RANGE, SERVICE_RANGE, cluster.endpoint.apply(lambda ip: f"{ip}/32")],
        cache_class=cache_class(pool.machine_type),
    )


def cache_class(machine_type: str) -> CacheClass:
    """A disk type the accelerator machines can attach. The pool has one zone and a disk is made
    where its first pod is scheduled, so every cache lives in the pool's zone."""
    disk = gke_cache_disk(machine_type)
    parameters, throughput = {"type": disk}, PD_BALANCED_MIB_S
    if disk == "hyperdisk-balanced":
        parameters |= {"provisioned-throughput-on-create": f"{HYPERDISK_MIB_S}Mi",
                       "provisioned-iops-on-create": str(HYPERDISK_IOPS)}
        throughput = HYPERDISK_MIB_S
    return CacheClass(
        name=CACHE_CLASS,
        manifest={
            "provisioner": "pd.csi.storage.gke.io",
            "parameters": parameters,
            "volume_binding_mode": "WaitForFirstConsumer",
            "allow_volume_expansion": True,
            "reclaim_policy": "Delete",
        },
        throughput_mib_s=throughput,
    )
