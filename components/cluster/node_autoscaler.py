"""GpuNodeAutoscaler: Karpenter on EKS, with one NodePool and EC2NodeClass for the GPU nodes:
nodes appear for pending model pods (up to the pool's GPU limit) and go once empty."""

from __future__ import annotations

from typing import Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.cluster.karpenter import DISCOVERY_TAG, NAMESPACE, SERVICE_ACCOUNT, KarpenterFacts
from components.core.chart_source import release_source

KARPENTER_REPO = "oci://public.ecr.aws/karpenter"
KARPENTER_CHART_VERSION = "1.14.1"
NODE_POOL = "gpu"
NODE_CLASS = "gpu"
NODE_POOL_API = "karpenter.sh/v1"
NODE_CLASS_API = "karpenter.k8s.aws/v1"
# Nodes are replaced after this, serving or not (a fresh AMI at last): expiry is forceful, no
# NodePool budget holds it; the drain honours the servers' disruption budgets.
EXPIRE_AFTER = "720h"
# Only empty nodes go, one at a time. Drift (a new AMI release behind the alias, a changed
# NodePool or EC2NodeClass) would replace every node however busy, reloading its models
# elsewhere: its budget is zero, so drifted nodes stay until they are empty or expire.
DISRUPTION_BUDGETS: list[dict[str, str | list[str]]] = [{"nodes": "1"}, {"nodes": "0", "reasons": ["Drifted"]}]


class GpuNodeAutoscalerArgs(TypedDict):
    facts: KarpenterFacts


def node_class_spec(f: KarpenterFacts) -> dict:
    discovered = [{"tags": {DISCOVERY_TAG: f.discovery}}]
    return {
        # The EKS-optimized AMI of the family; Karpenter picks its NVIDIA variant for GPU types.
        "amiSelectorTerms": [{"alias": f.ami_alias}],
        "instanceProfile": f.instance_profile,
        "subnetSelectorTerms": discovered,
        "securityGroupSelectorTerms": discovered,
        "blockDeviceMappings": [{"deviceName": f.block_device, "ebs": {
            "volumeSize": f"{f.disk_size_gb}Gi", "volumeType": "gp3", "encrypted": True,
            "deleteOnTermination": True}}],
        # Pods reach the metadata endpoint only through Pod Identity, never the node's role.
        "metadataOptions": {"httpEndpoint": "enabled", "httpTokens": "required", "httpPutResponseHopLimit": 1},
        "tags": dict(f.tags),
    }


def node_pool_spec(f: KarpenterFacts) -> dict:
    return {
        "template": {
            "metadata": {"labels": dict(f.labels)},
            "spec": {
                "nodeClassRef": {"group": NODE_CLASS_API.split("/")[0], "kind": "EC2NodeClass", "name": NODE_CLASS},
                "requirements": [
                    {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": list(f.instance_types)},
                    # The model caches (EBS) live in this zone only.
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [f.zone]},
                    {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
                    {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                ],
                "taints": [dict(f.taint)],
                "expireAfter": EXPIRE_AFTER,
            },
        },
        # Never more GPUs than maxSize nodes hold.
        "limits": {"nvidia.com/gpu": str(f.gpu_limit)},
        # Only empty nodes go: repacking would reload a model elsewhere (minutes without it).
        "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": f.consolidate_after,
                       "budgets": [dict(b) for b in DISRUPTION_BUDGETS]},
    }


class GpuNodeAutoscaler(pulumi.ComponentResource):
    node_pool: k8s.apiextensions.CustomResource

    def __init__(self, name: str, args: GpuNodeAutoscalerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:GpuNodeAutoscaler", name, None, opts)
        f = args["facts"]
        child = pulumi.ResourceOptions(parent=self)
        # The CRDs from their own chart: Helm never upgrades a chart's crds/ folder.
        crds = k8s.helm.v3.Release(
            f"{name}-crds", name="karpenter-crd", **release_source("karpenter-crd", KARPENTER_CHART_VERSION, KARPENTER_REPO),
            namespace=NAMESPACE, opts=child)
        controller = k8s.helm.v3.Release(
            f"{name}-karpenter", name="karpenter", **release_source("karpenter", KARPENTER_CHART_VERSION, KARPENTER_REPO),
            namespace=NAMESPACE, skip_crds=True,
            values={
                "serviceAccount": {"name": SERVICE_ACCOUNT},
                "settings": {"clusterName": f.cluster_name, "interruptionQueue": f.interruption_queue},
                "controller": {"resources": {"requests": {"cpu": "500m", "memory": "512Mi"},
                                             "limits": {"memory": "1Gi"}}},
            },
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[crds, *f.ready])),
        )
        # After the controller, so that on destroy it goes first: its finalizer (the node class's
        # instance profiles and launch templates) is the controller's to run.
        node_class = k8s.apiextensions.CustomResource(
            f"{name}-node-class", api_version=NODE_CLASS_API, kind="EC2NodeClass",
            metadata={"name": NODE_CLASS}, spec=node_class_spec(f),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[crds, controller])))
        self.node_pool = k8s.apiextensions.CustomResource(
            f"{name}-node-pool", api_version=NODE_POOL_API, kind="NodePool",
            metadata={"name": NODE_POOL}, spec=node_pool_spec(f),
            # Pods pending before the controller runs are picked up once it does.
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[crds, node_class, controller])))
        self.register_outputs({"nodePool": NODE_POOL, "gpuLimit": f.gpu_limit})
