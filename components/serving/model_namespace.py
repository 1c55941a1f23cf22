"""ModelNamespace: what the model servers' namespace holds for all of them: default-deny
NetworkPolicies with only the flows they need, and the claim on the host models folder."""

from __future__ import annotations

from typing import Mapping, NotRequired, Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.core.names import MODELS_MOUNT
from components.core.trust import Caller, MetricsAccess, mesh_namespace_policies

HOST_MODELS = "host-models"
# Binds the host-folder volume only to its claim, never to dynamic provisioning.
HOST_MODELS_CLASS = "llm-platform-host-models"


class ModelNamespaceArgs(TypedDict):
    namespace: pulumi.Input[str]
    network_policies: bool
    # Mount the node's /mnt/models (GGUF files from the host) for the servers here.
    host_models: bool
    # The workloads that may open connections to the model servers...
    callers: Sequence[Caller]
    # ...and the scraper, on its ports only (the mesh limits it to their metrics paths).
    metrics: Optional[MetricsAccess]
    istio_namespace: str
    # Whether any server here downloads weights (HTTPS out to the model hub).
    https_egress: bool
    # The cluster's own ranges (nodes, pods, Services, control plane); HTTPS egress excludes them.
    cluster_cidrs: NotRequired[Sequence[pulumi.Input[str]]]
    # The inference pools' endpoint pickers, which read the servers' metrics from inside the
    # namespace, and the servers' labels.
    pickers: NotRequired[Optional[tuple[MetricsAccess, Mapping[str, str]]]]


def policy_specs(args: ModelNamespaceArgs) -> dict[str, dict]:
    """Name -> NetworkPolicy spec; each selects every pod of the namespace."""
    return mesh_namespace_policies(args["callers"], args["istio_namespace"], args["metrics"],
                                   args["https_egress"], args.get("cluster_cidrs", []), args.get("pickers"))


class ModelNamespace(pulumi.ComponentResource):
    # The claim servers mount for /mnt/models, or None when no server reads the host folder.
    host_models_claim: Optional[pulumi.Output[str]]

    def __init__(self, name: str, args: ModelNamespaceArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:ModelNamespace", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        if args["network_policies"]:
            for policy, spec in policy_specs(args).items():
                k8s.networking.v1.NetworkPolicy(
                    f"{name}-{policy}",
                    metadata={"name": policy, "namespace": args["namespace"]},
                    spec=spec,
                    opts=child,
                )
        self.host_models_claim = self._host_models_claim(name, args["namespace"], child) if args["host_models"] else None
        self.register_outputs({"hostModelsClaim": self.host_models_claim})

    def _host_models_claim(self, name: str, namespace: pulumi.Input[str], opts) -> pulumi.Output[str]:
        """The node's /mnt/models as a PersistentVolume bound to one read-only claim: pods then
        mount a claim, which Pod Security admits, instead of a hostPath, which it refuses."""
        volume = k8s.core.v1.PersistentVolume(
            f"{name}-{HOST_MODELS}",
            metadata={"name": pulumi.Output.concat(namespace, "-", HOST_MODELS)},
            spec={
                "capacity": {"storage": "1Ti"},
                "accessModes": ["ReadOnlyMany"],
                # Never touches the files: they belong to the host folder.
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": HOST_MODELS_CLASS,
                "hostPath": {"path": MODELS_MOUNT, "type": "Directory"},
            },
            opts=opts,
        )
        return k8s.core.v1.PersistentVolumeClaim(
            f"{name}-{HOST_MODELS}-claim",
            metadata={"name": HOST_MODELS, "namespace": namespace},
            spec={
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": HOST_MODELS_CLASS,
                "volumeName": volume.metadata.name,
                "resources": {"requests": {"storage": "1Ti"}},
            },
            opts=opts,
        ).metadata.name
