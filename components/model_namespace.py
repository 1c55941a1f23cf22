"""ModelNamespace: what the model servers' namespace holds for all of them: default-deny
NetworkPolicies with only the flows they need, and the claim on the host models folder."""

from __future__ import annotations

import ipaddress
from typing import NotRequired, Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from .mesh import ENVOY_STATS_PORT, MetricsAccess
from .serving import MODELS_MOUNT

NAMESPACE_LABEL = "kubernetes.io/metadata.name"
ISTIOD_XDS_PORT = 15012
# Never "the internet": private (RFC 1918), carrier-grade NAT (RFC 6598, used for pods by
# some CNIs) and link-local (RFC 3927: cloud metadata endpoints) ranges.
NON_PUBLIC_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16")


HOST_MODELS = "host-models"
# Binds the host-folder volume only to its claim, never to dynamic provisioning.
HOST_MODELS_CLASS = "llm-platform-host-models"


class ModelNamespaceArgs(TypedDict):
    provider: k8s.Provider
    namespace: pulumi.Input[str]
    network_policies: bool
    # Mount the node's /mnt/models (GGUF files from the host) for the servers here.
    host_models: bool
    # Namespaces whose pods may open connections to the model servers...
    ingress_from: Sequence[str]
    # ...and the scraper, on its ports only (the mesh limits it to their metrics paths).
    metrics: Optional[MetricsAccess]
    istio_namespace: str
    # Whether any server here downloads weights (HTTPS out to the model hub).
    https_egress: bool
    # The cluster's own ranges (nodes, pods, Services, control plane); HTTPS egress excludes them.
    cluster_cidrs: NotRequired[Sequence[pulumi.Input[str]]]


def _from_namespaces(names: Sequence[str]) -> list[dict]:
    return [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: n}}} for n in names]


def metrics_ingress(access: MetricsAccess) -> dict:
    """The scraper's pods, on the metrics ports and the proxies' stats port, nothing else."""
    return {
        "from": [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: access.namespace}},
                  "podSelector": {"matchLabels": dict(access.pod_labels)}}],
        "ports": [{"protocol": "TCP", "port": p} for p in (*access.ports, ENVOY_STATS_PORT)],
    }


def outside_ranges(cluster_cidrs: Sequence[pulumi.Input[str]]) -> list[pulumi.Input[str]]:
    """What HTTPS egress must not reach: every non-public range, plus the cluster's own ranges
    that lie outside them (a VPC on public addresses, a public control-plane endpoint)."""
    fixed = [ipaddress.ip_network(r) for r in NON_PUBLIC_RANGES]
    out: list[pulumi.Input[str]] = list(NON_PUBLIC_RANGES)
    for cidr in cluster_cidrs:
        if isinstance(cidr, str):
            net = ipaddress.ip_network(cidr, strict=False)
            if any(net.subnet_of(f) for f in fixed) or cidr in out:
                continue
        out.append(cidr)
    return out


def policy_specs(args: ModelNamespaceArgs) -> dict[str, dict]:
    """Name -> NetworkPolicy spec; each selects every pod of the namespace."""
    every_pod: dict = {}
    specs = {
        "default-deny": {"podSelector": every_pod, "policyTypes": ["Ingress", "Egress"]},
        "allow-callers": {"podSelector": every_pod, "policyTypes": ["Ingress"],
                          "ingress": [{"from": _from_namespaces(args["ingress_from"])}]},
        "allow-dns": {"podSelector": every_pod, "policyTypes": ["Egress"], "egress": [{
            "to": [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }]},
        # Sidecars fetch their configuration and certificates from istiod.
        "allow-istiod": {"podSelector": every_pod, "policyTypes": ["Egress"], "egress": [{
            "to": _from_namespaces([args["istio_namespace"]]),
            "ports": [{"protocol": "TCP", "port": ISTIOD_XDS_PORT}],
        }]},
    }
    if args["metrics"]:
        specs["allow-metrics"] = {"podSelector": every_pod, "policyTypes": ["Ingress"],
                                  "ingress": [metrics_ingress(args["metrics"])]}
    if args["https_egress"]:
        specs["allow-https"] = {"podSelector": every_pod, "policyTypes": ["Egress"], "egress": [{
            # The model hub: not nodes, pods, Services or the metadata endpoint (private and
            # link-local ranges), nor the cluster's own public ranges where they are known (GKE's
            # endpoint). EKS's public API endpoint has no fixed address to leave out; model pods
            # carry no service-account token for it.
            "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": outside_ranges(args.get("cluster_cidrs", []))}}],
            "ports": [{"protocol": "TCP", "port": 443}],
        }]}
    return specs


class ModelNamespace(pulumi.ComponentResource):
    # The claim servers mount for /mnt/models, or None when no server reads the host folder.
    host_models_claim: Optional[pulumi.Output[str]]

    def __init__(self, name: str, args: ModelNamespaceArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:ModelNamespace", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args["provider"])
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
